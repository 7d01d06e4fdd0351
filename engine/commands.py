"""What each control command does: validate on the server thread, apply on the training thread."""

from __future__ import annotations

import math
from typing import Any

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
        "paused": g.paused,
        "mode": g.mode,
        "steps_left": g.steps_left(loop.step),
        "step": loop.step,
        "epoch": loop.epoch,
        "batch": loop.batch,
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


def check_lr(new: float, i: int) -> None:
    """Refuse a resulting learning rate that is not a positive float32-representable number."""
    if not (math.isfinite(new) and LR_MIN <= new <= LR_MAX):
        raise CommandError(
            f"that would set group {i}'s learning rate to {new:.4g}; it must be a positive finite "
            f"number between {LR_MIN:.2g} and {LR_MAX:.2g}. Nothing was changed."
        )


def apply_lr(
    loop: Any, spec: Any, group: int | None, optimizer: str | None = None
) -> dict[str, Any]:
    """Change the LR and every LR the scheduler keeps by the same factor, so the change sticks.

    Closed-form schedulers (LambdaLR, OneCycleLR, cosine restarts) recompute from base_lrs /
    initial_lr / max_lr / eta_min; chainable ones (StepLR, MultiStepLR) from the current lr.
    Scaling all of them keeps the scheduled curve's shape at the new height.
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
    for i in chosen:  # check every resulting rate before changing anything
        check_lr(before[i] * v if op == "mul" else v, i)
    sched = loop.schedulers.get(name)
    factors = set()
    for i in chosen:
        g = groups[i]
        old = float(g["lr"])
        factor = v if op == "mul" else (v / old if old > 0 else None)
        new = old * v if op == "mul" else v
        g["lr"] = new if not isinstance(g["lr"], torch.Tensor) else g["lr"].fill_(new)
        if factor is None:
            continue
        factors.add(factor)
        for key in ("initial_lr", "max_lr", "min_lr"):  # OneCycleLR / CyclicLR keep these per group
            if isinstance(g.get(key), (int, float)):
                g[key] = g[key] * factor
        for s in _schedulers(sched):
            for attr in ("base_lrs", "min_lrs", "_last_lr", "max_lrs"):
                lst = getattr(s, attr, None)
                if isinstance(lst, list) and i < len(lst) and isinstance(lst[i], (int, float)):
                    lst[i] = lst[i] * factor
    if len(chosen) == len(groups) and len(factors) == 1:  # eta_min is shared by all groups
        (v,) = factors
        for s in _schedulers(sched):
            if isinstance(getattr(s, "eta_min", None), (int, float)):
                s.eta_min *= v
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
