"""What a learner wants to see of a run, recorded once at its start into meta['learner']: the
train loader's arithmetic, the optimizers, loss and schedulers with their hyperparameters, and
which modules eval() switches. Pure functions of the run's objects; nothing here runs per step.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

MAX_NAMES = 12  # module names kept per kind of eval-sensitive module (the counts are whole)
# Optimizer group keys that choose an implementation, not the maths: left out.
IMPLEMENTATION = {"foreach", "fused", "capturable", "differentiable", "params"}
# Constructor arguments that say nothing about the schedule itself.
NOT_HPARAMS = {"self", "optimizer", "last_epoch", "verbose"}


def plain(value: Any) -> Any:
    """A JSON-safe rendering of a hyperparameter: numbers, words, lists; a tensor by its shape,
    a function by its name."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return plain(value.item())
        return f"tensor{list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    name = getattr(value, "__name__", None)
    return name if isinstance(name, str) else type(value).__name__


def _len(x: Any) -> int | None:
    """len(x), or None when it has none (a stream) or its __len__ fails: describing the run
    must never stop it."""
    try:
        return len(x)
    except Exception:
        return None


def never_fails(describe: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """The run goes on whatever a description trips over (a user's odd loader or module):
    the panel then says what failed instead of the numbers."""

    @functools.wraps(describe)
    def guarded(*args: Any) -> dict[str, Any]:
        try:
            return describe(*args)
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"}

    return guarded


def loader_arithmetic(
    loader: Any, accumulate: int = 1, steps_per_epoch: int | None = None
) -> dict[str, Any]:
    """samples / batch = batches (last batch r), and the optimizer steps that makes per epoch.

    `samples` is what one epoch draws (the sampler's length; the dataset's when the sampler has
    none); a loader without a length (a stream) leaves what it cannot know as None.
    """
    out: dict[str, Any] = {"kind": type(loader).__name__, "batches": _len(loader)}
    if isinstance(loader, DataLoader):
        dataset_len = _len(loader.dataset)
        sampler = loader.sampler if loader.batch_size is not None else None
        samples = _len(sampler) if sampler is not None else None
        b, drop = loader.batch_size, bool(loader.drop_last)
        out.update(dataset=dataset_len, samples=samples if samples is not None else dataset_len)
        out.update(batch_size=b, drop_last=drop)
        n = out["samples"]
        if b and n is not None:
            rest = n % b
            # drop_last: the partial batch is skipped; else the last batch is short (or whole).
            out["last_batch"] = b if drop else (rest or b)
            out["dropped"] = rest if drop else 0
    out["accumulate"] = accumulate
    out["steps"] = steps_per_epoch
    return out


def optimizer_description(name: str, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's class and its hyperparameters as its param groups hold them at start
    (only the optimizer's own: a scheduler's initial_lr or max_lr in the groups are the
    scheduler's); later groups only list what differs from the first."""
    own = [k for k in opt.defaults if k not in IMPLEMENTATION]
    groups = [{k: plain(g[k]) for k in own if k in g} for g in opt.param_groups]
    first = groups[0] if groups else {}
    return {
        "name": name,
        "type": type(opt).__name__,
        "params": sum(p.numel() for g in opt.param_groups for p in g["params"]),
        "hparams": first,
        "groups": [{k: v for k, v in g.items() if first.get(k) != v} for g in groups[1:]],
    }


def _arguments(obj: Any, skip: set[str], defaults: bool) -> dict[str, Any]:
    """The values of obj's constructor arguments, read back from what the object keeps under
    the same name (or `_name`, or a per-group list `names`); with defaults=False only those
    that differ from the default."""
    try:
        params = inspect.signature(type(obj).__init__).parameters.values()
    except (TypeError, ValueError):
        return {}
    kept = {**getattr(obj, "__dict__", {}), **getattr(obj, "_buffers", {})}
    out: dict[str, Any] = {}
    for p in params:
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        for attr in (p.name, "_" + p.name, p.name + "s"):
            if attr not in kept:
                continue
            value = kept[attr]
            if attr == p.name + "s" and isinstance(value, list) and value:
                value = value[0] if all(_same(v, value[0]) for v in value) else value
            if defaults or p.default is p.empty or not _same(value, p.default):
                out[p.name] = plain(value)
            break
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    try:
        return bool(a == b)
    except Exception:
        return False


def loss_description(loss_fn: Any) -> dict[str, Any] | None:
    """A loss module by class and the arguments it was given (`reduction` always: it says how
    a batch's losses become one number); a plain function by its qualified name."""
    if loss_fn is None:
        return None
    if isinstance(loss_fn, nn.Module):
        args = _arguments(loss_fn, {"self", "size_average", "reduce"}, defaults=False)
        if hasattr(loss_fn, "reduction"):
            args = {"reduction": loss_fn.reduction, **args}
        return {"type": type(loss_fn).__name__, "args": args}
    module = getattr(loss_fn, "__module__", "") or ""
    name = getattr(loss_fn, "__qualname__", None) or type(loss_fn).__name__
    return {"type": f"{module}.{name}" if module.startswith("torch") else name, "args": {}}


def scheduler_description(sched: Any, interval: str | None) -> dict[str, Any]:
    """An LR scheduler's class, its constructor arguments as it keeps them (or as its
    optimizer's groups do: OneCycleLR's max_lr), and when it is stepped."""
    args = _arguments(sched, NOT_HPARAMS, defaults=True)
    opt = getattr(sched, "optimizer", None)
    try:
        params = inspect.signature(type(sched).__init__).parameters
    except (TypeError, ValueError):
        params = {}
    if opt is not None and opt.param_groups:
        for key in params:
            if key not in args and key in opt.param_groups[0]:
                args[key] = plain(opt.param_groups[0][key])
    inner = getattr(sched, "_schedulers", None)  # SequentialLR, ChainedScheduler
    out: dict[str, Any] = {"type": type(sched).__name__, "args": args, "interval": interval}
    if isinstance(inner, list):
        out["args"].pop("schedulers", None)
        out["chain"] = [scheduler_description(s, None) for s in inner]
    return out


def eval_changes(models: Iterable[nn.Module]) -> dict[str, Any]:
    """The modules whose forward changes under eval(): dropout (off), norms with running stats
    (batch statistics replaced by the running ones), RNN / attention with internal dropout."""
    kinds: dict[str, list[str]] = {"dropout": [], "norm": [], "other": []}
    for top in models:
        for name, m in top.named_modules():
            label = f"{name or '(model)'} {type(m).__name__}"
            if isinstance(m, nn.modules.dropout._DropoutNd):
                kinds["dropout"].append(f"{label}(p={m.p:g})")
            elif isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                kinds["norm"].append(label)
            elif isinstance(m, (nn.RNNBase, nn.MultiheadAttention)) and m.dropout:
                kinds["other"].append(f"{label}(dropout={m.dropout:g})")
    return {k: {"count": len(v), "names": v[:MAX_NAMES]} for k, v in kinds.items()}


@never_fails
def recipe_learner(loop: Any) -> dict[str, Any]:
    """meta['learner'] for dltui's own loop over a recipe."""
    r = loop.r
    interval = r.scheduler_interval
    out = {
        "source": "recipe",
        "train": loader_arithmetic(r.train_loader, r.accumulate, loop.steps_per_epoch),
        "val": loader_arithmetic(r.val_loader) if r.val_loader is not None else None,
        "steps_cap": r.steps_per_epoch,
        "optimizers": [optimizer_description(n, o) for n, o in loop.optimizers.items()],
        "loss": loss_description(r.loss_fn),
        "schedulers": [
            {"optimizer": n, **scheduler_description(s, interval)}
            for n, s in loop.schedulers.items()
            if s is not None
        ],
        "eval": {"grad": False, **eval_changes([loop.model])},
    }
    return out


@never_fails
def script_learner(driver: Any, objs: list[tuple[str, Any]]) -> dict[str, Any]:
    """meta['learner'] for a script, from what its frames hold at its first optimizer step: the
    train loader when one can be told apart (named *train*, or the only DataLoader), a loss
    module, the schedulers of its optimizers. What cannot be found stays None: unknown."""
    loaders: dict[str, Any] = {}
    losses: dict[str, Any] = {}
    scheds: dict[str, Any] = {}
    opts = list(driver.optimizers.values())
    for name, o in objs:
        if isinstance(o, DataLoader):
            loaders.setdefault(name, o)
        elif isinstance(o, nn.modules.loss._Loss):
            losses.setdefault(name, o)
        elif hasattr(o, "optimizer") and any(o.optimizer is x for x in opts):
            if hasattr(o, "step") and all(o is not s for s in scheds.values()):
                scheds.setdefault(name, o)
    named_train = [n for n in loaders if "train" in n.lower()]
    pick = named_train[0] if named_train else (next(iter(loaders)) if len(loaders) == 1 else None)
    train = None
    if pick is not None:
        train = {"found_as": pick, **loader_arithmetic(loaders[pick])}
    loss_name = next(iter(losses), None)
    loss = loss_description(losses[loss_name]) if loss_name else None
    if loss is not None:
        loss["found_as"] = loss_name
    return {
        "source": "script",
        "train": train,
        "val": None,
        "steps_cap": None,
        "optimizers": [optimizer_description(n, o) for n, o in driver.optimizers.items()],
        "loss": loss,
        "schedulers": [
            {"found_as": n, **scheduler_description(s, None)} for n, s in scheds.items()
        ],
        "eval": {"grad": False, **eval_changes(driver.models.values())},
    }
