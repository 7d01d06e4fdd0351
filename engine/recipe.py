"""Load and check a recipe file: every mistake becomes one RecipeError naming file, name and fix."""

from __future__ import annotations

import importlib.util
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
    "val_loader", "scheduler", "scheduler_interval", "epochs", "metrics", "device",
    "train_step", "eval_step", "hparams",
)  # fmt: skip
ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))


class RecipeError(Exception):
    """A problem with the user's recipe; str() is the whole message shown to the user."""


@dataclass
class Recipe:
    path: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    train_loader: Iterable
    val_loader: Iterable | None = None
    scheduler: Any = None
    scheduler_interval: str = "epoch"
    epochs: int = 1
    metrics: dict[str, Any] | None = None
    device: str | None = None
    train_step: Callable | None = None
    eval_step: Callable | None = None
    hparams: dict[str, Any] = field(default_factory=dict)


def user_traceback(exc: BaseException) -> str:
    """The traceback of an exception with dltui's own frames removed: what the user needs."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _internal(f.filename)]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip()


def _internal(filename: str) -> bool:
    return filename.startswith(ENGINE_DIR) or "importlib" in filename or filename.startswith("<frozen")


def _describe(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__} (not an instance of it)"
    if callable(value) and getattr(value, "__name__", None) and not isinstance(value, nn.Module):
        return f"a function ({value.__name__})"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Import the recipe file and check everything the loop will rely on."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise RecipeError(f"{name}: file not found (looked for {p.resolve()}). Check the path.")
    if p.is_dir() or p.suffix != ".py":
        raise RecipeError(f"{name}: not a Python file; a recipe is a .py file like examples/cnn.py.")
    ns = _import(p, name)
    if callable(ns.get("recipe")):
        try:
            made = ns["recipe"]()
        except Exception as e:
            raise RecipeError(f"{name}: recipe() raised an error:\n{user_traceback(e)}") from None
        if not isinstance(made, Mapping):
            raise RecipeError(
                f"{name}: recipe() returned {_describe(made)}; it must return a dict with "
                "the keys model, optimizer, loss_fn, train_loader (and optional ones)."
            )
        ns = dict(made)
    missing = [k for k in REQUIRED if k not in ns]
    if missing:
        names = ", ".join(f"`{k}`" for k in missing)
        raise RecipeError(
            f"{name}: the recipe defines no {names}. A recipe defines model, optimizer, loss_fn "
            "and train_loader at module level, or returns them from a function recipe()."
        )
    return _check(p, name, ns)


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
        raise RecipeError(f"{name}: the recipe called exit({e.code}) while being imported.") from None
    except BaseException as e:
        raise RecipeError(f"{name}: importing the recipe failed:\n{user_traceback(e)}") from None
    return vars(module)


def _check(p: Path, name: str, ns: dict[str, Any]) -> Recipe:
    def fail(key: str, problem: str) -> RecipeError:
        return RecipeError(f"{name}: `{key}` {problem}")

    model, opt, loss_fn = ns["model"], ns["optimizer"], ns["loss_fn"]
    if not isinstance(model, nn.Module):
        hint = f"; write model = {model.__name__}()" if isinstance(model, type) else ""
        raise fail("model", f"is {_describe(model)}, not a torch.nn.Module{hint}.")
    if not isinstance(opt, torch.optim.Optimizer):
        hint = (
            "; write optimizer = torch.optim.SGD(model.parameters(), lr=0.01)"
            if isinstance(opt, type) or callable(opt) else ""
        )  # fmt: skip
        raise fail("optimizer", f"is {_describe(opt)}, not a torch.optim.Optimizer{hint}.")
    model_params = {id(q) for q in model.parameters()}
    opt_params = [q for g in opt.param_groups for q in g["params"]]
    foreign = sum(id(q) not in model_params for q in opt_params)
    if not opt_params or foreign == len(opt_params):
        raise fail(
            "optimizer", "is not over the model's parameters (was it built from another model, "
            "or before `model` was replaced?). Build it from model.parameters().",
        )  # fmt: skip
    if foreign:
        raise fail("optimizer", f"holds {foreign} tensors that are not parameters of `model`.")
    if isinstance(loss_fn, type):
        raise fail("loss_fn", f"is the class {loss_fn.__name__}; write loss_fn = {loss_fn.__name__}().")
    if not callable(loss_fn):
        raise fail("loss_fn", f"is {_describe(loss_fn)}, not callable; use e.g. nn.CrossEntropyLoss().")

    for key in ("train_step", "eval_step"):
        if ns.get(key) is not None and not callable(ns[key]):
            raise fail(key, f"is {_describe(ns[key])}; it must be a function (model, batch) -> (loss, output, target).")
    r = Recipe(path=p, model=model, optimizer=opt, loss_fn=loss_fn, train_loader=ns["train_loader"])
    r.train_step = ns.get("train_step")
    r.eval_step = ns.get("eval_step") or r.train_step
    _check_loader(name, "train_loader", r.train_loader, r.train_step is not None)
    if ns.get("val_loader") is not None:
        r.val_loader = ns["val_loader"]
        _check_loader(name, "val_loader", r.val_loader, r.eval_step is not None)

    r.scheduler = ns.get("scheduler")
    if r.scheduler is not None and not callable(getattr(r.scheduler, "step", None)):
        raise fail("scheduler", f"is {_describe(r.scheduler)}, not a learning-rate scheduler (no .step()).")
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


def check_device(dev: str, where: str) -> str:
    """Validate a device string against what this machine has."""
    try:
        d = torch.device(dev)
    except (RuntimeError, ValueError):
        raise RecipeError(f"{where} is {dev!r}, not a device; use 'cpu', 'cuda' or 'cuda:1'.") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise RecipeError(f"{where} is {dev!r} but CUDA is not available on this machine; use 'cpu'.")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise RecipeError(f"{where} is {dev!r} but this machine has {torch.cuda.device_count()} GPU(s).")
    return str(d)


def _check_loader(name: str, key: str, loader: Any, custom_step: bool) -> None:
    try:
        it = iter(loader)
    except TypeError:
        raise RecipeError(
            f"{name}: `{key}` is {_describe(loader)}, which can't be iterated; use a "
            "torch.utils.data.DataLoader."
        ) from None
    if it is loader:
        raise RecipeError(
            f"{name}: `{key}` is a one-shot iterator (a generator?), so it would be empty after "
            "the first epoch; use a DataLoader or a list of batches."
        )
    try:
        batch = next(it)
    except StopIteration:
        raise RecipeError(f"{name}: `{key}` yields no batches (is its dataset empty?).") from None
    except Exception as e:
        raise RecipeError(f"{name}: reading the first batch of `{key}` failed:\n{user_traceback(e)}") from None
    finally:
        del it  # ends any DataLoader worker processes the peek started
    if custom_step:
        return
    if isinstance(batch, Mapping):
        raise RecipeError(
            f"{name}: `{key}` yields dicts (keys {sorted(map(str, batch))}); the default step needs "
            "(input, target) pairs. Yield (x, y), or define train_step(model, batch) -> "
            "(loss, output, target)."
        )
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = f"{type(batch).__name__} of {len(batch)} items" if isinstance(batch, (tuple, list)) else _describe(batch)
        raise RecipeError(
            f"{name}: `{key}` yields a {what}; the default step needs (input, target) pairs. "
            "Yield (x, y), or define train_step(model, batch) -> (loss, output, target)."
        )
    for part, label in zip(batch, ("input", "target"), strict=True):
        if not _has_tensor(part):
            raise RecipeError(
                f"{name}: `{key}` yields pairs whose {label} is {_describe(part)}, not a tensor; "
                "wrap the data in a TensorDataset or return tensors from the Dataset."
            )


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
    if isinstance(metrics, Mapping) and metrics and all(isinstance(m, Metric) for m in metrics.values()):
        return {str(k): m for k, m in metrics.items()}
    raise RecipeError(
        f"{name}: `metrics` is {_describe(metrics)}; use a torchmetrics Metric, a MetricCollection "
        "or a dict of name -> Metric (e.g. {'acc': MulticlassAccuracy(10)})."
    )


def _metric_name(m: Any) -> str:
    """MulticlassAccuracy -> acc, MeanAbsoluteError -> mae, others -> lower-case class name."""
    known = {"Accuracy": "acc", "MeanAbsoluteError": "mae", "MeanSquaredError": "mse", "F1Score": "f1"}
    cls = type(m).__name__
    for suffix, short in known.items():
        if cls.endswith(suffix):
            return short
    return cls.lower()
