"""Finding a script's models and optimizers by name in its frames (once, not per step)."""

from __future__ import annotations

import gc
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

ENGINE_DIR = str(Path(__file__).resolve().parent)
TORCH_DIR = str(Path(torch.__file__).resolve().parent)


def _user_frames(frame: FrameType | None) -> list[FrameType]:
    """The script's frames on the stack, innermost first (not dltui's, not torch's)."""
    out = []
    while frame is not None:
        fn = frame.f_code.co_filename
        if not (
            fn.startswith(ENGINE_DIR)
            or fn.startswith(TORCH_DIR)
            or fn.startswith("<frozen")
            or "runpy" in fn
        ):
            out.append(frame)
        frame = frame.f_back
    return out


def named_objects(frame: FrameType | None) -> list[tuple[str, Any]]:
    """(name, object) bound in the script's frames, innermost first; attributes of `self`-like
    objects one level down (a Trainer's self.model). Run once per discovery, not per step."""
    out: list[tuple[str, Any]] = []
    for f in _user_frames(frame):
        scope = f.f_locals
        for name, obj in list(scope.items()):
            if name.startswith("__"):
                continue
            out.append((name, obj))
        for obj in list(scope.values()):
            d = getattr(obj, "__dict__", None)
            if isinstance(d, dict) and not isinstance(obj, (nn.Module, type)) and not callable(obj):
                out += [
                    (k, v)
                    for k, v in list(d.items())
                    if isinstance(v, (nn.Module, torch.optim.Optimizer))
                ]
    return out


def unwrap(m: nn.Module) -> nn.Module:
    """The user's module inside torch.compile / DistributedDataParallel wrappers."""
    for _ in range(4):
        inner = getattr(m, "_orig_mod", None) or (
            getattr(m, "module", None) if "DataParallel" in type(m).__name__ else None
        )
        if not isinstance(inner, nn.Module):
            return m
        m = inner
    return m


def find_models(opt: torch.optim.Optimizer, objs: list) -> list[tuple[str, nn.Module]]:
    """The smallest set of top-level modules that own this optimizer's parameters."""
    want = {id(p) for g in opt.param_groups for p in g["params"]}
    cands: list[tuple[str, nn.Module]] = [
        (n, unwrap(o)) for n, o in objs if isinstance(o, nn.Module)
    ]
    covered = _cover(want, cands)
    if not covered or sum(c for _, _, c in covered) < len(
        want
    ):  # not all in the frames: look wider
        mods = [o for o in gc.get_objects() if isinstance(o, nn.Module)]
        cands += [(type(m).__name__.lower(), unwrap(m)) for m in mods]
        covered = _cover(want, cands)
    return [(n, m) for n, m, _ in covered]


def _cover(want: set[int], cands: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module, int]]:
    scored = []
    seen: set[int] = set()
    for n, m in cands:
        if id(m) in seen:
            continue
        seen.add(id(m))
        ids = {id(p) for p in m.parameters()}
        hit = len(ids & want)
        if hit:
            scored.append((hit, -len(ids), n, m, ids))
    scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
    left, out = set(want), []
    for _, _, n, m, ids in scored:
        if ids & left:
            out.append((n, m, len(ids & left)))
            left -= ids
        if not left:
            break
    return out


class ParamView:
    """A named-parameter view that LayerStats and the tensor inspector accept like a module."""

    def __init__(self, named: list[tuple[str, nn.Parameter]]) -> None:
        self._named = named

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self._named)

    def named_buffers(self) -> list[tuple[str, torch.Tensor]]:
        return []


class ModelSet(ParamView):
    """Several models seen as one for the Layers, Tensors and Model tabs (names prefixed)."""

    def __init__(self, models: dict[str, nn.Module], named: list[tuple[str, nn.Parameter]]) -> None:
        super().__init__(named)
        self.models = models

    def named_buffers(self) -> list[tuple[str, torch.Tensor]]:
        return [(f"{mn}.{bn}", b) for mn, m in self.models.items() for bn, b in m.named_buffers()]

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self._named]

    def named_modules(self) -> list[tuple[str, nn.Module]]:
        return [
            (f"{mn}.{n}" if n else mn, sub)
            for mn, m in self.models.items()
            for n, sub in m.named_modules()
        ]

    def state_dict(self) -> dict[str, Any]:
        return {f"{mn}.{k}": v for mn, m in self.models.items() for k, v in m.state_dict().items()}
