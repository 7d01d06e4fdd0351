"""dltui's public API for training code: `dltui.log`, `dltui.context`, `dltui.on_eval`.

Everything here is a no-op (or a plain default) when the file runs outside dltui, so a script can
keep these calls: `log()` then costs one function call and one global read (well under 1 us).
Torch-free: `import dltui` must stay cheap for the dashboard side too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Context", "context", "log", "on_eval"]


@dataclass
class Context:
    """What will run: the effective settings after dltui's flags are applied.

    `args` is the file's own argv (everything after its path on the dltui command line).
    `epochs`/`max_steps` are None when not known (a script decides its own epochs).
    """

    epochs: int | None = None
    max_steps: int | None = None
    device: str | None = None
    seed: int | None = None
    args: list[str] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1
    script: str | None = None
    mode: str = "recipe"  # "recipe" or "script"


# The engine sets this to its session object (log / context / on_eval) while a run is live.
_session: Any = None


def log(phase: str = "train", **scalars: Any) -> None:
    """Record extra scalars (floats, ints or 0-d tensors) at the current optimizer step.

    `dltui.log(acc=0.91, tokens_per_s=5e4)`; `phase="val"` for validation values. Tensors are read
    back later without a host sync. Outside dltui this does nothing.
    """
    s = _session
    if s is not None:
        s.log(phase, scalars)


def context() -> Context:
    """The run's Context inside dltui; outside it, defaults with this process's own argv."""
    s = _session
    if s is not None:
        return s.context
    return Context(args=list(sys.argv[1:]), script=sys.argv[0] if sys.argv else None)


def on_eval(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Register the script's evaluation: `e` in the dashboard (or `dltui ctl RUN mode eval`) then
    runs `fn()` at an optimizer-step boundary under model.eval() and torch.no_grad(), records the
    dict it returns as val scalars, and returns to training. Usable as a decorator."""
    s = _session
    if s is not None:
        s.on_eval(fn)
    return fn
