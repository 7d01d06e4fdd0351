"""Which device a recipe's run trains on, resolved once and made current (CUDA index included)."""

from __future__ import annotations

import torch
from torch import nn


def run_device(requested: str | None, recipe_device: str | None, model: nn.Module) -> torch.device:
    """--device, else the recipe's `device`, else where the recipe already put its model (a
    model built on cuda:1 stays there), else CUDA when present, else the CPU.

    A CUDA device comes back with its index ('cuda' -> 'cuda:0', numbered after
    CUDA_VISIBLE_DEVICES) and is made the current device, so what the run creates with
    device='cuda' (the probe's events, a script's tensors) lands on it, and a run on GPU 1 does
    not also open a context (hundreds of MB) on GPU 0. The run's meta records this device.
    """
    dev = requested or recipe_device
    if dev is None:
        p = next(model.parameters(), None)
        if p is not None and p.device.type not in ("cpu", "meta"):
            dev = str(p.device)
        else:
            dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    if device.type == "cuda":
        if not torch.cuda.is_available():  # recipe.check_device says so earlier, with the file
            raise RuntimeError(f"device {dev!r} asked for, but this machine has no usable CUDA")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device
