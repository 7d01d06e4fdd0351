"""Where a run is: epoch and batch from its published progress (one definition for every reader).

The engine publishes `epoch` (epochs completed), `epoch_step` (optimizer steps done in the
epoch under way; older stores only have `batch`), `steps_per_epoch`, `epochs`, `step` and
`total_steps`. Shown to a person, an epoch is 1-based and a batch counts optimizer steps: the
moment an epoch ends the run is at `epoch 3/5 batch 94/94`, and the next step makes it
`epoch 4/5 batch 1/94`. A finished 5-epoch run reads `epoch 5/5 batch 94/94` in the dashboard
and in `dltui status` alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _int(v: Any) -> int | None:
    try:
        return None if v is None or isinstance(v, bool) else int(v)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Position:
    """A run's place: step of total, and (for dltui's own loop) epoch and batch within it."""

    step: int
    total_steps: int | None
    epoch: int  # 1-based: the epoch under way, or the one that just ended
    epochs: int | None
    batch: int  # optimizer steps done in that epoch
    batches: int | None  # optimizer steps per epoch; None when the loader has no length

    @property
    def epoch_text(self) -> str:
        return f"epoch {self.epoch}/{self.epochs or '?'}"

    @property
    def batch_text(self) -> str:
        return f"batch {self.batch}/{self.batches or '?'}"

    @property
    def step_text(self) -> str:
        return f"step {self.step}/{self.total_steps or '?'}"


def position(progress: dict[str, Any] | None) -> Position:
    """The run's Position from its progress dict (the store's meta or the engine's state reply)."""
    p = progress or {}
    done = max(0, _int(p.get("epoch")) or 0)
    in_epoch = _int(p.get("epoch_step"))
    if in_epoch is None:
        in_epoch = _int(p.get("batch")) or 0
    batches = _int(p.get("steps_per_epoch")) or None
    epochs = _int(p.get("epochs")) or None
    if done and in_epoch == 0:  # an epoch just ended (or the run did): it was whole
        epoch, batch = done, batches if batches is not None else 0
    else:
        epoch, batch = done + 1, in_epoch
    if epochs:
        epoch = min(epoch, epochs)
    return Position(
        step=_int(p.get("step")) or 0,
        total_steps=_int(p.get("total_steps")) or None,
        epoch=epoch,
        epochs=epochs,
        batch=batch,
        batches=batches,
    )
