"""Load and check a recipe file: every mistake becomes one RecipeError naming file, name and fix."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

REQUIRED = ("model", "optimizer", "loss_fn", "train_loader")
OPTIONAL = (
    "val_loader",
    "scheduler",
    "scheduler_interval",
    "epochs",
    "metrics",
    "device",
    "train_step",
    "eval_step",
    "hparams",
    "grad_clip",
    "accumulate",
    "amp",
    "steps_per_epoch",
    "on_epoch_start",
    "on_epoch_end",
)
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}
MAIN = "main"  # the name of a recipe's only optimizer
STEP_FORMS = (
    "train_step(batch, ctx) (the second parameter named ctx) or the original "
    "train_step(model, batch) -> (loss, output, target)"
)
ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))


class RecipeError(Exception):
    """A problem with the user's recipe; str() is the whole message shown to the user."""


@dataclass
class Recipe:
    path: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer  # the run's main optimizer (the first of `optimizers`)
    loss_fn: Callable
    train_loader: Iterable
    val_loader: Iterable | None = None
    scheduler: Any = None  # the main optimizer's
    scheduler_interval: str = "epoch"
    epochs: int = 1
    metrics: dict[str, Any] | None = None
    device: str | None = None
    train_step: Callable | None = None
    eval_step: Callable | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)  # main first
    schedulers: dict[str, Any] = field(default_factory=dict)  # by optimizer name
    train_form: str = "model"  # how steps are called: "model" (model, batch), "ctx" (batch, ctx)
    eval_form: str = "model"
    grad_clip: float | None = None  # max total gradient norm, per optimizer
    accumulate: int = 1  # micro-batches per optimizer step
    amp: str | None = None  # "bf16" | "fp16" autocast
    steps_per_epoch: int | None = None  # bounds an epoch of a loader without an end
    on_epoch_start: Callable | None = None
    on_epoch_end: Callable | None = None
    context: Any = None  # the dltui.Context the recipe was loaded with

    def __post_init__(self) -> None:
        if not self.optimizers:
            self.optimizers = {MAIN: self.optimizer}
        if self.scheduler is not None and not self.schedulers:
            self.schedulers = {next(iter(self.optimizers)): self.scheduler}


def user_traceback(exc: BaseException) -> str:
    """The traceback of an exception with dltui's own frames removed: what the user needs."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _internal(f.filename)]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip()


def _internal(filename: str) -> bool:
    return (
        filename.startswith(ENGINE_DIR) or "importlib" in filename or filename.startswith("<frozen")
    )


def _describe(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__} (not an instance of it)"
    if callable(value) and getattr(value, "__name__", None) and not isinstance(value, nn.Module):
        return f"a function ({value.__name__})"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def load_recipe(path: str | os.PathLike, ctx: Any = None) -> Recipe:
    """Import the recipe file and check everything the loop will rely on.

    `ctx` is the run's dltui.Context (epochs, max_steps, device, seed, args); `def recipe(ctx)`
    gets it, and module-level code reads it with `dltui.context()`. Its `epochs` is None when
    `--epochs` was not given, so a recipe writes `epochs = ctx.epochs or 10`.
    """
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise RecipeError(f"{name}: file not found (looked for {p.resolve()}). Check the path.")
    if p.is_dir() or p.suffix != ".py":
        raise RecipeError(
            f"{name}: not a Python file; a recipe is a .py file like examples/cnn.py."
        )
    import dltui

    ctx = ctx if ctx is not None else dltui.Context(script=name)
    installed = dltui._session is None  # a bare load (tests, tools): dltui.context() still works
    if installed:
        dltui._session = _LoadSession(ctx)
    try:
        ns = _import(p, name)
        if callable(ns.get("recipe")):
            ns = _call_recipe(ns["recipe"], ctx, name)
    finally:
        if installed:
            dltui._session = None
    missing = [k for k in REQUIRED if k not in ns]
    if missing:
        names = ", ".join(f"`{k}`" for k in missing)
        raise RecipeError(
            f"{name}: the recipe defines no {names}. A recipe defines model, optimizer, loss_fn "
            "and train_loader at module level, or returns them from a function recipe()."
        )
    r = _check(p, name, ns, ctx)
    r.context = ctx
    return r


class _LoadSession:
    """dltui._session while a recipe loads outside an engine: context() answers, log() is a no-op."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def log(self, phase: str, scalars: dict) -> None: ...
    def on_eval(self, fn: Callable) -> None: ...


def _call_recipe(fn: Callable, ctx: Any, name: str) -> dict[str, Any]:
    """recipe(ctx) when its first parameter has no default (or is named ctx), else recipe()."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    first = params[0] if params else None
    wants_ctx = (
        first is not None
        and first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD)
        and (first.default is first.empty or first.name in ("ctx", "context"))
    )
    try:
        made = fn(ctx) if wants_ctx else fn()
    except Exception as e:
        raise RecipeError(f"{name}: recipe() raised an error:\n{user_traceback(e)}") from None
    if not isinstance(made, Mapping):
        raise RecipeError(
            f"{name}: recipe() returned {_describe(made)}; it must return a dict with "
            "the keys model, optimizer, loss_fn, train_loader (and optional ones)."
        )
    return dict(made)


def _import(p: Path, name: str) -> dict[str, Any]:
    # Run it as its own module so DataLoader workers can pickle classes defined in it, and with
    # its folder on sys.path so it can import its neighbours, as `python example.py` would.
    folder = str(p.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("dltui_recipe", p.resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules["dltui_recipe"] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        where = f"{name}, line {e.lineno}" if e.lineno else name
        text = (e.text or "").rstrip("\n")
        caret = ""
        if text and e.offset:
            stripped = text.lstrip()
            caret = "\n    " + " " * max(0, e.offset - 1 - (len(text) - len(stripped))) + "^"
            text = stripped
        shown = f"\n    {text}{caret}" if text else ""
        raise RecipeError(f"{where}: syntax error: {e.msg}{shown}") from None
    except SystemExit as e:
        raise RecipeError(
            f"{name}: the recipe called exit({e.code}) while being imported."
        ) from None
    except BaseException as e:
        raise RecipeError(f"{name}: importing the recipe failed:\n{user_traceback(e)}") from None
    return vars(module)


def _check(p: Path, name: str, ns: dict[str, Any], ctx: Any) -> Recipe:
    def fail(key: str, problem: str) -> RecipeError:
        return RecipeError(f"{name}: `{key}` {problem}")

    model, loss_fn = ns["model"], ns["loss_fn"]
    if not isinstance(model, nn.Module):
        hint = f"; write model = {model.__name__}()" if isinstance(model, type) else ""
        raise fail("model", f"is {_describe(model)}, not a torch.nn.Module{hint}.")
    optimizers = _check_optimizers(name, model, ns["optimizer"])
    if isinstance(loss_fn, type):
        raise fail(
            "loss_fn", f"is the class {loss_fn.__name__}; write loss_fn = {loss_fn.__name__}()."
        )
    if not callable(loss_fn):
        raise fail(
            "loss_fn", f"is {_describe(loss_fn)}, not callable; use e.g. nn.CrossEntropyLoss()."
        )

    main = next(iter(optimizers.values()))
    r = Recipe(
        path=p, model=model, optimizer=main, loss_fn=loss_fn, train_loader=ns["train_loader"]
    )
    r.optimizers = optimizers
    _check_steps(name, ns, r)
    _check_training(name, ns, r)
    r.train_loader = _check_loader(
        name,
        "train_loader",
        r.train_loader,
        r.train_step is not None,
        bounded=r.steps_per_epoch is not None or ctx.max_steps is not None,
    )
    if ns.get("val_loader") is not None:
        r.val_loader = ns["val_loader"]
        _check_loader(name, "val_loader", r.val_loader, r.eval_step is not None)

    r.schedulers = _check_schedulers(name, ns.get("scheduler"), optimizers)
    r.scheduler = r.schedulers.get(next(iter(optimizers)))
    r.scheduler_interval = ns.get("scheduler_interval", "epoch")
    if r.scheduler_interval not in ("epoch", "step"):
        raise fail("scheduler_interval", f'is {r.scheduler_interval!r}; use "epoch" or "step".')
    epochs = ns.get("epochs", 1)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise fail("epochs", f"is {epochs!r}; it must be a whole number of epochs, 1 or more.")
    r.epochs = epochs
    r.metrics = _check_metrics(name, ns.get("metrics"))
    dev = ns.get("device")
    if dev is not None:
        r.device = check_device(str(dev), f"{name}: `device`")
    hp = ns.get("hparams") or {}
    if not isinstance(hp, Mapping):
        raise fail("hparams", f"is {_describe(hp)}; it must be a dict of names to values.")
    r.hparams = dict(hp)
    return r


_NEEDS_CLOSURE: dict[Any, bool] = {}


def needs_closure(opt: torch.optim.Optimizer) -> bool:
    """True for optimizers whose step() must be given a closure (LBFGS).

    Asked at every step: inspect.signature costs tens of microseconds, so the answer is kept per
    step function (the class's, which torch wraps once per class).
    """
    fn = getattr(opt.step, "__func__", opt.step)
    try:
        return _NEEDS_CLOSURE[fn]
    except (KeyError, TypeError):  # TypeError: an unhashable callable, never cached
        pass
    try:
        closure = inspect.signature(opt.step).parameters.get("closure")
    except (TypeError, ValueError):
        closure = None
    needs = closure is not None and closure.default is closure.empty
    try:
        _NEEDS_CLOSURE[fn] = needs
    except TypeError:
        pass
    return needs


def _check_optimizers(name: str, model: nn.Module, opt: Any) -> dict[str, torch.optim.Optimizer]:
    """`optimizer`: one Optimizer (named "main") or a dict of named ones, the run's main first."""
    if (
        isinstance(opt, Mapping)
        and opt
        and all(isinstance(o, torch.optim.Optimizer) for o in opt.values())
    ):
        named = {}
        for k, o in opt.items():
            if not isinstance(k, str) or not k or "/" in k or k == "*":
                raise RecipeError(
                    f"{name}: `optimizer` has the key {k!r}; name each optimizer with a short "
                    'string without "/", e.g. {"g": opt_g, "d": opt_d}.'
                )
            named[k] = o
    elif isinstance(opt, torch.optim.Optimizer):
        named = {MAIN: opt}
    else:
        hint = (
            "; write optimizer = torch.optim.SGD(model.parameters(), lr=0.01)"
            if isinstance(opt, type) or callable(opt)
            else ' (a dict of optimizers is fine: {"g": opt_g, "d": opt_d})'
            if isinstance(opt, Mapping)
            else ""
        )
        raise RecipeError(
            f"{name}: `optimizer` is {_describe(opt)}, not a torch.optim.Optimizer{hint}."
        )
    model_params = {id(q) for q in model.parameters()}
    for k, o in named.items():
        key = (
            "optimizer"
            if len(named) == 1 and k == MAIN and not isinstance(opt, Mapping)
            else f"optimizer['{k}']"
        )
        opt_params = [q for g in o.param_groups for q in g["params"]]
        foreign = sum(id(q) not in model_params for q in opt_params)
        if not opt_params or foreign == len(opt_params):
            raise RecipeError(
                f"{name}: `{key}` is not over the model's parameters (was it built from another "
                "model, or before `model` was replaced?). Build it from model.parameters()"
                + (
                    "; with several optimizers, `model` must hold every part (e.g. an "
                    "nn.ModuleDict of the generator and the discriminator)."
                    if len(named) > 1
                    else "."
                )
            )
        if foreign:
            raise RecipeError(
                f"{name}: `{key}` holds {foreign} tensors that are not parameters of `model`."
            )
    return named


def _check_schedulers(name: str, sched: Any, optimizers: dict[str, Any]) -> dict[str, Any]:
    """`scheduler`: one (for the optimizer it was built on) or a dict by optimizer name."""
    if sched is None:
        return {}
    if isinstance(sched, Mapping):
        items = dict(sched)
        unknown = [k for k in items if k not in optimizers]
        if unknown:
            raise RecipeError(
                f"{name}: `scheduler` has the key(s) {', '.join(map(repr, unknown))}, which name no "
                f"optimizer; the optimizers are {', '.join(map(repr, optimizers))}."
            )
    else:
        own = getattr(sched, "optimizer", None)
        found = [k for k, o in optimizers.items() if o is own]
        items = {found[0] if found else next(iter(optimizers)): sched}
    for k, s in items.items():
        if s is not None and not callable(getattr(s, "step", None)):
            key = "scheduler" if not isinstance(sched, Mapping) else f"scheduler['{k}']"
            raise RecipeError(
                f"{name}: `{key}` is {_describe(s)}, not a learning-rate scheduler (no .step())."
            )
    return {k: s for k, s in items.items() if s is not None}


def step_form(fn: Callable) -> str | None:
    """ "ctx" for fn(batch, ctx), "model" for the original fn(model, batch); None if neither."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return "model"
    if any(q.kind == q.VAR_POSITIONAL for q in params):
        return "model"
    pos = [q for q in params if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    required = [q for q in pos if q.default is q.empty]
    if len(pos) >= 2 and pos[1].name in ("ctx", "context") and len(required) <= 2:
        return "ctx"
    if len(pos) >= 2 and len(required) <= 2:
        return "model"
    return None


def updates_itself(fn: Callable) -> bool:
    """Does the function's code call .step() or .backward() (its own optimizer updates)?"""
    code = getattr(fn, "__code__", None)
    todo = [code] if code is not None else []
    while todo:
        c = todo.pop()
        if {"step", "backward"} & set(c.co_names):
            return True
        todo += [k for k in c.co_consts if inspect.iscode(k)]
    return False


def _check_steps(name: str, ns: dict[str, Any], r: Recipe) -> None:
    for key in ("train_step", "eval_step"):
        fn = ns.get(key)
        if fn is None:
            continue
        if not callable(fn):
            raise RecipeError(
                f"{name}: `{key}` is {_describe(fn)}; it must be a function: {STEP_FORMS}."
            )
        form = step_form(fn)
        if form is None:
            sig = inspect.signature(fn)
            raise RecipeError(
                f"{name}: `{key}` takes {sig}; write {STEP_FORMS.replace('train_step', key)}."
            )
        setattr(r, key, fn)
        setattr(r, "train_form" if key == "train_step" else "eval_form", form)
    if ns.get("eval_step") is None and r.train_step is not None:
        if updates_itself(r.train_step):
            raise RecipeError(
                f"{name}: `train_step` steps the optimizers itself, so it can't also evaluate: "
                "evaluation would train. Define eval_step(batch, ctx) that only computes the loss "
                "(return the loss, a dict of scalars, or (loss, output, target))."
            )
        r.eval_step, r.eval_form = r.train_step, r.train_form


def _check_training(name: str, ns: dict[str, Any], r: Recipe) -> None:
    """grad_clip, accumulate, amp, steps_per_epoch and the epoch hooks."""
    clip = ns.get("grad_clip")
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
            raise RecipeError(
                f"{name}: `grad_clip` is {clip!r}; give the maximum gradient norm, e.g. 1.0."
            )
        r.grad_clip = float(clip)
    for key in ("accumulate", "steps_per_epoch"):
        v = ns.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise RecipeError(f"{name}: `{key}` is {v!r}; it must be a whole number, 1 or more.")
        setattr(r, key, v)
    amp = ns.get("amp")
    if amp is not None and amp not in AMP:
        raise RecipeError(f'{name}: `amp` is {amp!r}; use "bf16" or "fp16" (or leave it out).')
    r.amp = amp
    closure = [k for k, o in r.optimizers.items() if needs_closure(o)]
    if closure and r.train_form != "ctx":
        what = f"`optimizer` ({type(r.optimizers[closure[0]]).__name__})"
        if r.amp == "fp16":
            raise RecipeError(
                f"{name}: {what} needs a closure, which fp16's GradScaler can't step; use amp = \"bf16\"."
            )
        if r.accumulate > 1:
            raise RecipeError(
                f"{name}: {what} needs a closure and re-evaluates the loss itself; drop `accumulate`."
            )
        if len(r.optimizers) > 1:
            raise RecipeError(
                f"{name}: {what} needs a closure; with several optimizers, step them in "
                "train_step(batch, ctx) with ctx.step(name, closure=...)."
            )
    for key in ("on_epoch_start", "on_epoch_end"):
        fn = ns.get(key)
        if fn is not None and not callable(fn):
            raise RecipeError(
                f"{name}: `{key}` is {_describe(fn)}; it must be a function {key}(ctx)."
            )
        setattr(r, key, fn)


def check_device(dev: str, where: str) -> str:
    """Validate a device string against what this machine has."""
    try:
        d = torch.device(dev)
    except (RuntimeError, ValueError):
        raise RecipeError(
            f"{where} is {dev!r}, not a device; use 'cpu', 'cuda' or 'cuda:1'."
        ) from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError(
                f"{where} is {dev!r} but CUDA is not available on this machine; use 'cpu'."
            )
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise RecipeError(
                f"{where} is {dev!r} but this machine has {torch.cuda.device_count()} GPU(s)."
            )
    return str(d)


def _check_loader(
    name: str, key: str, loader: Any, custom_step: bool, bounded: bool = False
) -> Any:
    """Check the loader on its first batch; returns what the loop iterates (the loader itself,
    or for a one-shot iterator the peeked batch chained back in front of the rest)."""
    try:
        it = iter(loader)
    except TypeError:
        raise RecipeError(
            f"{name}: `{key}` is {_describe(loader)}, which can't be iterated; use a "
            "torch.utils.data.DataLoader."
        ) from None
    one_shot = it is loader
    if one_shot and not bounded:
        raise RecipeError(
            f"{name}: `{key}` is a one-shot iterator (a generator?), so it would be empty after "
            "the first epoch; use a DataLoader or a list of batches, or set `steps_per_epoch` "
            "(or run with --max-steps) to train from it as one endless stream."
        )
    try:
        batch = next(it)
    except StopIteration:
        raise RecipeError(f"{name}: `{key}` yields no batches (is its dataset empty?).") from None
    except Exception as e:
        raise RecipeError(
            f"{name}: reading the first batch of `{key}` failed:\n{user_traceback(e)}"
        ) from None
    finally:
        if not one_shot:
            del it  # ends any DataLoader worker processes the peek started
    if one_shot:
        loader = itertools.chain([batch], it)  # nothing the stream yielded is lost
    if custom_step:
        return loader
    if isinstance(batch, Mapping):
        raise RecipeError(
            f"{name}: `{key}` yields dicts (keys {sorted(map(str, batch))}); the default step needs "
            "(input, target) pairs. Yield (x, y), or define train_step(model, batch) -> "
            "(loss, output, target)."
        )
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = (
            f"a {type(batch).__name__} of {len(batch)} items"
            if isinstance(batch, (tuple, list))
            else _describe(batch)
        )
        raise RecipeError(
            f"{name}: `{key}` yields {what}; the default step needs (input, target) pairs. "
            "Yield (x, y), or define train_step(model, batch) -> (loss, output, target)."
        )
    for part, label in zip(batch, ("input", "target"), strict=True):
        if not _has_tensor(part):
            raise RecipeError(
                f"{name}: `{key}` yields pairs whose {label} is {_describe(part)}, not a tensor; "
                "wrap the data in a TensorDataset or return tensors from the Dataset."
            )
    return loader


def _has_tensor(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (tuple, list)):
        return bool(x) and all(_has_tensor(v) for v in x)
    if isinstance(x, Mapping):
        return bool(x) and all(_has_tensor(v) for v in x.values())
    return False


def _check_metrics(name: str, metrics: Any) -> dict[str, Any] | None:
    if metrics is None:
        return None
    from torchmetrics import Metric, MetricCollection

    if isinstance(metrics, MetricCollection):
        return dict(metrics.items())
    if isinstance(metrics, Metric):
        return {_metric_name(metrics): metrics}
    if (
        isinstance(metrics, Mapping)
        and metrics
        and all(isinstance(m, Metric) for m in metrics.values())
    ):
        return {str(k): m for k, m in metrics.items()}
    raise RecipeError(
        f"{name}: `metrics` is {_describe(metrics)}; use a torchmetrics Metric, a MetricCollection "
        "or a dict of name -> Metric (e.g. {'acc': MulticlassAccuracy(10)})."
    )


def _metric_name(m: Any) -> str:
    """MulticlassAccuracy -> acc, MeanAbsoluteError -> mae, others -> lower-case class name."""
    known = {
        "Accuracy": "acc",
        "MeanAbsoluteError": "mae",
        "MeanSquaredError": "mse",
        "F1Score": "f1",
    }
    cls = type(m).__name__
    for suffix, short in known.items():
        if cls.endswith(suffix):
            return short
    return cls.lower()
