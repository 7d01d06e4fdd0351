"""The latest events and alerts, newest first: commands, checkpoints, alerts, errors, status."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from dltui.run import wire

from ..poller import RunSnapshot
from .format import fmt_duration, join_lines

KIND_STYLES = {
    wire.EV_COMMAND: "magenta",
    wire.EV_CHECKPOINT: "cyan",
    wire.EV_ALERT: "bold yellow",
    wire.EV_ERROR: "bold red",
    wire.EV_STATUS: "bold",
    wire.EV_RUN: "bold",
    wire.EV_INFO: "dim",
}
LEVEL_STYLES = {"warning": "yellow", "error": "red"}


class EventList(Widget):
    """As many of the newest events as fit; times are since the run started (no wall clock)."""

    DEFAULT_CSS = """
    EventList { width: 1fr; height: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.snap: RunSnapshot | None = None
        self._last_id: int | None = None

    def show(self, snap: RunSnapshot) -> None:
        self.snap = snap
        last = snap.events[-1]["id"] if snap.events else 0
        if last != self._last_id:
            self._last_id = last
            self.refresh()

    def render(self) -> Text:
        s = self.snap
        if s is None or not s.events:
            return Text("no events yet", "dim")
        h = max(1, self.size.height)
        t0 = s.started or s.events[0]["wall"]
        lines = []
        for ev in reversed(s.events[-h:]):
            text = Text(no_wrap=True, overflow="ellipsis")
            step = "" if ev["step"] is None else str(ev["step"])
            text.append(f"{step:>7} ", "dim")
            text.append(f"{'+' + fmt_duration(ev['wall'] - t0):>8} ", "dim")
            kind = ev["kind"]
            text.append(f"{kind:<10} ", KIND_STYLES.get(kind, ""))
            text.append(
                ev["message"].splitlines()[0] if ev["message"] else "",
                LEVEL_STYLES.get(ev["level"], ""),
            )
            lines.append(text)
        return join_lines(lines)
