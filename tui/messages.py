"""App-level messages (dataclasses named for what happened) and the words a control reply becomes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from .poller import RunSnapshot


@dataclass
class RunUpdated(Message, bubble=False):
    """The poller saw the run change (progress, status, events or a system sample).

    Posted by the poller's thread to the app, which keeps the snapshot and hands it to the panes
    on its frame clock (no pane receives this message). `snapshot` is the whole current
    picture, not a delta, so a newer one can replace an unhandled older one without loss.
    """

    snapshot: RunSnapshot

    @property
    def state(self) -> str:
        """The run's RunStatus."""
        return self.snapshot.state

    @property
    def step(self) -> int:
        return self.snapshot.step

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunUpdated)


@dataclass
class SeriesFetched(Message, bubble=False):
    """A pane's series worker read the plot series (already downsampled to the plots' widths)."""

    series: dict[str, Any]
    request: tuple

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SeriesFetched)


@dataclass
class CommandReplied(Message):
    """The engine answered a control request (or could not be reached)."""

    cmd: str
    ok: bool
    message: str
    state: dict[str, Any] | None = None
    data: Any = None
    then: str | None = None  # what the app does after the reply ("exit" after a stop)


def acknowledgement(
    cmd: str, ok: bool, error: str | None, state: dict | None, data: object, script: bool = False
) -> str:
    """What a reply means, in words for a notification."""
    if not ok:
        error = error or "failed"
        return error if error.startswith((f"{cmd}:", "eval:")) else f"{cmd}: {error}"
    step = (state or {}).get("step", "?")
    if cmd == "mode" and script:  # a script's eval is one pass; training goes on by itself
        return f"eval pass at step {step}: its results are plotted as val; training goes on"
    if cmd == "lr" and isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    if cmd == "checkpoint" and isinstance(data, dict):
        return f"checkpoint saved at step {step}: {data.get('path')}"
    return {
        "pause": f"paused at step {step}",
        "resume": f"resumed at step {step}",
        "step": f"stepping once from step {step}",
        "mode": f"{(state or {}).get('mode', '?')} mode at step {step}",
        "stop": f"stop requested at step {step}: the run ends after this step, with a checkpoint",
    }.get(cmd, f"{cmd}: ok")
