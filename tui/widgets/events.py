"""The run's events, newest first: commands, checkpoints, alerts, errors, status.

Routine checkpoints (each epoch's 'last', a new 'best') collapse into one line per tag, so a
user's LR change or pause stays in view after many epochs. The list scrolls (mouse wheel, or
the Overview's [ and ]) and filters: all, without routine checkpoints, warnings and errors.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widget import Widget

from dltui.run import wire

from ..poller import RunSnapshot, routine_checkpoint
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
# (name, what it shows): `f` cycles through these.
FILTERS = (
    ("all", "all events"),
    ("steering", "all but routine checkpoints and info"),
    ("problems", "warnings and errors only"),
)


def visible(events: tuple[dict, ...], mode: str) -> list[tuple[dict, int]]:
    """(event, how many it stands for) newest first, filtered; routine checkpoints collapse
    into their newest one per tag."""
    out: list[tuple[dict, int]] = []
    seen: dict[str, int] = {}  # checkpoint tag -> index in out of its newest event
    for ev in reversed(events):
        if mode == "problems" and ev["level"] not in ("warning", "error"):
            continue
        if mode == "steering" and (routine_checkpoint(ev) or ev["kind"] == wire.EV_INFO):
            continue
        count = int(ev.get("repeats", 1))  # the poller folds them as they arrive
        if routine_checkpoint(ev):
            tag = str((ev.get("data") or {}).get("tag", ""))
            if tag in seen:
                i = seen[tag]
                out[i] = (out[i][0], out[i][1] + count)
                continue
            seen[tag] = len(out)
        out.append((ev, count))
    return out


class EventList(Widget):
    """As many of the newest events as fit; times are since the run started (no wall clock)."""

    DEFAULT_CSS = """
    EventList { width: 1fr; height: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.snap: RunSnapshot | None = None
        self._last_id: int | None = None
        self.mode = FILTERS[0][0]
        self.back = 0  # lines scrolled back from the newest

    def show(self, snap: RunSnapshot) -> None:
        self.snap = snap
        last = snap.events[-1]["id"] if snap.events else 0
        if last != self._last_id:
            self._last_id = last
            self.refresh()

    def cycle_filter(self) -> str:
        names = [name for name, _ in FILTERS]
        self.mode = names[(names.index(self.mode) + 1) % len(names)]
        self.back = 0
        self.refresh()
        return dict(FILTERS)[self.mode]

    def scroll_by_lines(self, lines: int) -> None:
        """Positive: back to older events; negative: forward to newer ones."""
        shown = len(visible(self.snap.events, self.mode)) if self.snap else 0
        most = max(0, shown - max(1, self.size.height))
        offset = min(most, max(0, self.back + lines))
        if offset != self.back:
            self.back = offset
            self.refresh()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.scroll_by_lines(-1)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.scroll_by_lines(1)

    def subtitle(self) -> str:
        """What the border says: the filter when not 'all', and how far back it is scrolled."""
        words = [] if self.mode == "all" else [self.mode]
        if self.back:
            words.append(f"{self.back} newer above ([ ] scroll)")
        return "  ".join(words)

    def render(self) -> Text:
        s = self.snap
        sub = self.subtitle()
        if self.border_subtitle != sub:
            self.border_subtitle = sub
        if s is None or not s.events:
            return Text("no events yet", "dim")
        rows = visible(s.events, self.mode)
        if not rows:
            return Text(f"no events to show ({dict(FILTERS)[self.mode]}; f: next filter)", "dim")
        h = max(1, self.size.height)
        t0 = s.started or s.events[0]["wall"]
        lines = []
        for ev, count in rows[self.back : self.back + h]:
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
            if count > 1:
                text.append(f"  (+{count - 1} earlier)", "dim")
            lines.append(text)
        return join_lines(lines)
