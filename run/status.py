"""RunStatus: the one vocabulary for a run's state, with its display (word, style, help text).

Built on the stored words of run/wire.py (meta['status']: running, finished, failed, stopped;
crashed is derived by the reader) plus the live states a running engine reports in its
progress (paused, eval) and starting (no store yet). The poller, the header, the dialogs and the
CLI all name a state through this enum; none keeps its own list of words.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from . import wire


class RunStatus(StrEnum):
    """A run's state. The value is the stored/CLI word; `label` is what the dashboard shows."""

    STARTING = wire.STARTING
    RUNNING = wire.RUNNING
    PAUSED = "paused"
    EVAL = "eval"
    FINISHED = wire.FINISHED
    FAILED = wire.FAILED
    STOPPED = wire.STOPPED
    CRASHED = wire.CRASHED

    @classmethod
    def of(cls, status: str | None, progress: dict[str, Any] | None = None) -> RunStatus:
        """The state of a run from its stored (or reader-derived) status word and its progress.

        A running engine's progress says whether it is paused or in eval mode; words this
        version does not know (a newer engine's) read as running while the engine is alive.
        """
        progress = progress or {}
        word = (status or wire.STARTING).lower()
        if word in (wire.RUNNING, "paused", "eval", "stopping", "live"):
            if progress.get("mode") == "eval" or word == "eval":
                return cls.EVAL
            if word == "paused" or progress.get("paused"):
                return cls.PAUSED
            return cls.RUNNING
        try:
            return cls(word)
        except ValueError:
            return cls.RUNNING

    @property
    def label(self) -> str:
        """The word drawn in the header (colour only repeats it: NO_COLOR terminals see this)."""
        return self.value.upper()

    @property
    def style(self) -> str:
        return _STYLES[self]

    @property
    def help(self) -> str:
        """One line on what the state means, for the help screen."""
        return _HELP[self]

    @property
    def live(self) -> bool:
        """An engine is there to steer."""
        return self in (RunStatus.STARTING, RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.EVAL)

    @property
    def held(self) -> bool:
        """Training is not advancing (paused, or held while eval passes run)."""
        return self in (RunStatus.PAUSED, RunStatus.EVAL)


_STYLES = {
    RunStatus.RUNNING: "bold black on green",
    RunStatus.PAUSED: "bold black on yellow",
    RunStatus.EVAL: "bold white on blue",
    RunStatus.STARTING: "bold black on white",
    RunStatus.FINISHED: "bold black on cyan",
    RunStatus.STOPPED: "bold black on white",
    RunStatus.FAILED: "bold white on red",
    RunStatus.CRASHED: "bold white on red",
}
_HELP = {
    RunStatus.STARTING: "the engine is loading torch and the recipe or script",
    RunStatus.RUNNING: "training",
    RunStatus.PAUSED: "held at a step boundary (space resumes, n steps once)",
    RunStatus.EVAL: "training held, validation passes run (e switches back)",
    RunStatus.FINISHED: "ended normally",
    RunStatus.FAILED: "the recipe or script raised; its traceback is in the events",
    RunStatus.STOPPED: "stopped by request (with a checkpoint)",
    RunStatus.CRASHED: "the engine vanished (killed, lost host); all data recorded so far is shown",
}
