"""What each control command does: validate on the server thread, apply on the training thread."""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import torch

from dltui.run import wire

from .inspect_tensor import InspectError, inspect

MODES = ("train", "eval")


class CommandError(ValueError):
    """A command that is invalid; the message goes back to the client and nothing changes."""


def state(loop: Any) -> dict[str, Any]:
    """The run's steering state, as every reply carries it."""
    g = loop.gate
    return {
        "status": "stopping" if g.stop_reason else ("paused" if g.paused else wire.RUNNING),
        "pid": os.getpid(),  # which engine answered (a launcher checks it is the one it started)
        "paused": g.paused,
        "mode": g.mode,
        "steps_left": g.steps_left(loop.step),
        "step": loop.step,
        "epoch": loop.epoch,
        "batch": loop.batch,
        "epoch_step": getattr(loop, "epoch_step", loop.batch),  # run/progress.py's batch
        "epochs": loop.epochs,
        "steps_per_epoch": loop.steps_per_epoch,
        "total_steps": loop.total_steps,
        "lrs": loop.lrs(),
        "stop_reason": g.stop_reason,
        "optimizers": loop.all_lrs(),
    }


# -- learning rate ------------------------------------------------------------------------
def parse_lr(value: Any) -> tuple[str, float]:
    """wire.parse_lr, with its message as a CommandError."""
    try:
        return wire.parse_lr(value)
    except ValueError as e:
        raise CommandError(str(e)) from None


def _schedulers(sched: Any) -> list[Any]:
    """A scheduler and those it wraps (SequentialLR, ChainedScheduler)."""
    if sched is None:
        return []
    out = [sched]
    for child in getattr(sched, "_schedulers", None) or []:
        out += _schedulers(child)
    return out


# Above this an optimizer step overflows float32 parameters (inf), and below the smallest
# normal float32 the LR is noise; a change that would leave either is refused.
LR_MAX = 3.4e38
LR_MIN = 1.2e-38


def lr_bounds(dtypes: Any = ()) -> tuple[float, float]:
    """The LR range a step can use on parameters of these dtypes: float32's, narrowed by any
    smaller float (fp16 params overflow past 65504; their smallest step is a subnormal)."""
    lo, hi = LR_MIN, LR_MAX
    for dt in dtypes:
        if isinstance(dt, torch.dtype) and dt.is_floating_point:
            fi = torch.finfo(dt)
            hi = min(hi, fi.max)
            lo = max(lo, fi.smallest_normal * fi.eps)  # the smallest subnormal
    return lo, hi


def check_lr(new: float, i: int, bounds: tuple[float, float] = (LR_MIN, LR_MAX)) -> None:
    """Refuse a resulting learning rate that is not a positive number the parameters can use."""
    lo, hi = bounds
    if not (math.isfinite(new) and lo <= new <= hi):
        raise CommandError(
            f"that would set group {i}'s learning rate to {new:.4g}; it must be a positive finite "
            f"number between {lo:.2g} and {hi:.2g}. Nothing was changed."
        )


def _check_kept(what: str, new: float, bounds: tuple[float, float]) -> None:
    """A rate the scheduler keeps (base_lrs, max_lr, eta_min, ...) may be 0 (a floor), else it
    must be one the parameters can use: the scheduler will set it as the LR later."""
    lo, hi = bounds
    if not (math.isfinite(new) and (new == 0 or lo <= new <= hi)):
        raise CommandError(
            f"that would set the scheduler's {what} to {new:.4g}, outside {lo:.2g}..{hi:.2g}; "
            "the schedule would later overflow or vanish. Nothing was changed."
        )


class _Change(NamedTuple):
    """One number an LR change sets: target[key] (a group dict or a list) or target.key."""

    target: Any
    key: Any
    new: float
    what: str
    bounds: tuple[float, float] | None  # None: already checked as the LR itself


def _group_dtypes(group: dict) -> set[torch.dtype]:
    return {p.dtype for p in group["params"] if isinstance(p, torch.Tensor)}


def apply_lr(
    loop: Any, spec: Any, group: int | None, optimizer: str | None = None
) -> dict[str, Any]:
    """Change the LR and every LR the scheduler keeps by the same factor, so the change sticks.

    Closed-form schedulers (LambdaLR, OneCycleLR, cosine restarts) recompute from base_lrs /
    initial_lr / max_lr / eta_min; chainable ones (StepLR, MultiStepLR) from the current lr.
    Scaling all of them keeps the scheduled curve's shape at the new height. Every resulting
    value is computed and checked first; only if all are usable is anything changed (atomic).
    """
    op, v = parse_lr(spec)
    steer = getattr(loop, "steer_lr", None)
    if steer is not None:  # a script: the change is a factor applied around each step
        return steer(op, v, group, optimizer)
    opts = loop.optimizers  # by name, the run's own first
    if optimizer is not None and optimizer not in opts:
        raise CommandError(f"there is no optimizer {optimizer!r}; this run has {', '.join(opts)}.")
    name = optimizer if optimizer is not None else next(iter(opts))
    opt = opts[name]
    groups = opt.param_groups
    if group is not None and not (isinstance(group, int) and 0 <= group < len(groups)):
        raise CommandError(
            f"there is no param group {group!r}; this optimizer has groups 0..{len(groups) - 1}."
        )
    chosen = range(len(groups)) if group is None else [group]
    before = [float(g["lr"]) for g in groups]
    bounds = {i: lr_bounds(_group_dtypes(groups[i])) for i in range(len(groups))}
    for i in chosen:  # the new rates themselves first: the clearest message
        check_lr(before[i] * v if op == "mul" else v, i, bounds[i])
    sched = loop.schedulers.get(name)
    plan: list[_Change] = []  # every number that changes, checked before any is set
    factors = set()
    for i in chosen:
        g = groups[i]
        old = before[i]
        factor = v if op == "mul" else (v / old if old > 0 else None)
        plan.append(_Change(g, "lr", old * v if op == "mul" else v, f"group {i}'s lr", None))
        if factor is None:
            continue
        factors.add(factor)
        for key in ("initial_lr", "max_lr", "min_lr"):  # OneCycleLR / CyclicLR keep these per group
            if isinstance(g.get(key), (int, float)):
                plan.append(_Change(g, key, g[key] * factor, f"group {i}'s {key}", bounds[i]))
        for s in _schedulers(sched):
            for attr in ("base_lrs", "min_lrs", "_last_lr", "max_lrs"):
                lst = getattr(s, attr, None)
                if isinstance(lst, list) and i < len(lst) and isinstance(lst[i], (int, float)):
                    plan.append(_Change(lst, i, lst[i] * factor, f"{attr}[{i}]", bounds[i]))
    if len(chosen) == len(groups) and len(factors) == 1:  # eta_min is shared by all groups
        (f,) = factors
        lo = max(b[0] for b in bounds.values())
        hi = min(b[1] for b in bounds.values())
        for s in _schedulers(sched):
            if isinstance(getattr(s, "eta_min", None), (int, float)):
                plan.append(_Change(s, "eta_min", s.eta_min * f, "eta_min", (lo, hi)))
    for c in plan:
        if c.bounds is not None:
            _check_kept(c.what, c.new, c.bounds)
    for c in plan:  # all checked: now change them
        if isinstance(c.target, (dict, list)):
            old_value = c.target[c.key]
            is_t = isinstance(old_value, torch.Tensor)
            c.target[c.key] = old_value.fill_(c.new) if is_t else c.new
        else:
            setattr(c.target, c.key, c.new)
    after = [float(g["lr"]) for g in groups]
    which = ("all groups" if group is None else f"group {group}") + (
        f" of '{name}'" if len(opts) > 1 else ""
    )
    msg = f"lr {_fmt(before, chosen)} -> {_fmt(after, chosen)} ({which}) at step {loop.step}"
    return {"before": before, "after": after, "group": group, "optimizer": name, "message": msg}


def _fmt(lrs: list[float], chosen: Any) -> str:
    vals = [lrs[i] for i in chosen]
    return ", ".join(f"{x:.4g}" for x in vals)


# -- tensors ------------------------------------------------------------------------------
def named_tensors(loop: Any) -> dict[str, tuple[str, torch.Tensor]]:
    """Everything inspectable by name: (kind, tensor)."""
    out: dict[str, tuple[str, torch.Tensor]] = {}
    if loop.model is None:  # a script before its first optimizer step
        return out
    params = dict(loop.model.named_parameters())
    for n, p in params.items():
        out[n] = ("parameter", p)
        if p.grad is not None:
            out[n + ".grad"] = ("gradient", p.grad)
    for n, b in loop.model.named_buffers():
        if b is not None:
            out[n] = ("buffer", b)
    by_id = {id(p): n for n, p in params.items()}
    opts = loop.optimizers
    for oname, opt in opts.items():
        prefix = "optimizer" if len(opts) == 1 else f"optimizer.{oname}"
        for p, st in opt.state.items():
            pname = by_id.get(id(p))
            for k, v in st.items():
                if pname is not None and isinstance(v, torch.Tensor) and v.ndim > 0:
                    out[f"{prefix}.{pname}.{k}"] = ("optimizer state", v)
    for label, value in (("input", loop.last_input), ("output", loop.last_output)):
        if isinstance(value, torch.Tensor):
            out[label] = ("batch", value)
    return out


# (attribute of nn.Module, what the Model tab calls it)
MODULE_HOOKS = (
    ("_forward_pre_hooks", "forward pre"),
    ("_forward_hooks", "forward"),
    ("_backward_pre_hooks", "backward pre"),
    ("_backward_hooks", "backward"),
)


def describe_module(loop: Any, name: str) -> dict[str, Any]:
    """The `module` query (the dashboard's Model tab): one module's own parameters and buffers
    (shape, dtype, numel, requires_grad), its hooks and its training flag. Read-only and cheap:
    metadata only, no tensor data is read, so it is answered off the step boundary."""
    if loop.model is None:
        raise CommandError("no model yet: a script's model is found at its first optimizer step.")
    modules = dict(loop.model.named_modules())
    key = "" if name in ("", "(model)") else name
    if key not in modules:
        raise CommandError(f"no module named {name!r}; the Model tab lists them.")
    mod = modules[key]

    def rows(items: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": f"{key}.{n}" if key else n,
                "shape": list(t.shape),
                "dtype": str(t.dtype).replace("torch.", ""),
                "device": str(t.device),
                "numel": t.numel(),
                "requires_grad": bool(t.requires_grad),
            }
            for n, t in list(items)
            if t is not None
        ]

    hooks: dict[str, list[str]] = {}
    for attr, label in MODULE_HOOKS:
        fns = list((getattr(mod, attr, None) or {}).values())
        if fns:
            hooks[label] = [getattr(f, "__qualname__", type(f).__name__) for f in fns]
    return {
        "name": name,
        "type": type(mod).__name__,
        "training": bool(mod.training),
        "extra": mod.extra_repr(),
        "params": rows(mod.named_parameters(recurse=False)),
        "buffers": rows(mod.named_buffers(recurse=False)),
        "children": len(list(mod.children())),
        "hooks": hooks,
    }


def list_tensors(loop: Any) -> list[dict[str, Any]]:
    return [
        {"name": n, "kind": k, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
        for n, (k, t) in named_tensors(loop).items()
    ]


def inspect_named(loop: Any, name: str, expr: str | None) -> dict[str, Any]:
    tensors = named_tensors(loop)
    if name not in tensors:
        close = [n for n in tensors if name.split(".")[-1] in n][:5]
        hint = f" Did you mean {', '.join(close)}?" if close else " See `dltui ctl RUN tensors`."
        raise CommandError(f"no tensor named {name!r}.{hint}")
    kind, t = tensors[name]
    try:
        out = inspect(t, name, expr)
    except InspectError as e:
        raise CommandError(str(e)) from None
    out["kind"] = kind
    out["step"] = loop.step
    return out
