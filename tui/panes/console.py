"""Console tab: the training script's stdout and stderr, live, following the tail unless the user
has scrolled up; stderr is red and prefixed, so it stands out without colour too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import RichLog, Static

from dltui.run.client import ControlClient

from ..widgets.pane_base import PollingPane

MAX_LINES = 5000  # kept in memory; older lines stay in the store
BATCH = 1000  # lines per query
MAX_BATCHES = 5  # per poll: a flood is shown over a few polls instead of freezing the UI once
STDERR_PREFIX = "! "
STDOUT_PREFIX = "  "


def console_text(stream: str, line: str) -> Text:
    """One console line: ANSI colours kept, progress-bar redraws (\\r) reduced to the last one."""
    if "\r" in line:
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
    body = Text.from_ansi(line)
    if stream == "stderr":
        body.stylize("red")
        return Text(STDERR_PREFIX, style="bold red") + body
    return Text(STDOUT_PREFIX) + body


class ConsolePane(PollingPane):
    """A RichLog of the run's console, bounded to MAX_LINES, and a one-line status."""

    POLL_S = 0.5
    BINDINGS = [
        Binding("end", "follow", "Follow tail", priority=True, id="console.follow"),
        Binding("home", "top", "Top", show=False, id="console.top"),
    ]
    DEFAULT_CSS = """
    ConsolePane { height: 1fr; }
    ConsolePane #console-log { height: 1fr; }
    ConsolePane #console-status { height: 1; color: $text-muted; text-wrap: nowrap; }
    """

    def __init__(self, run_dir: Path, client: ControlClient | None, **kwargs: Any) -> None:
        super().__init__(run_dir, client, **kwargs)
        self.last_id: int | None = None  # None until the first poll decides where to start
        self.count = {"stdout": 0, "stderr": 0}
        self.following = True  # changed only by scrolling: new lines must not end following

    def compose(self) -> ComposeResult:
        # min_width=1: short lines must not be padded to 78 columns (a needless horizontal bar).
        yield RichLog(
            id="console-log", max_lines=MAX_LINES, wrap=False, auto_scroll=False, min_width=1
        )
        yield Static("no output yet", id="console-status")

    def on_mount(self) -> None:
        if not self.app.is_running:  # mounted (deferred) as the app shuts down: no children
            return
        self.watch(self.query_one(RichLog), "scroll_y", self._scrolled, init=False)

    def _scrolled(self, y: float) -> None:
        # Whoever scrolled (keys, wheel, our own scroll_end, End's animation as it lands), the
        # view follows the tail exactly when it rests at the bottom.
        log = self.query_one(RichLog)
        following = y >= log.max_scroll_y
        if following != self.following:
            self.following = following
            self._status(following)

    def fetch(self) -> Any:
        r = self.reader()
        if r is None:
            return None
        after = self.last_id
        if after is None:
            # Start MAX_LINES from the end: a long run's history is not worth reading in full.
            top = r.db.execute("SELECT coalesce(max(id), 0) FROM console").fetchone()[0]
            after = max(0, top - MAX_LINES)
        rows: list[tuple] = []
        for _ in range(MAX_BATCHES):
            batch = r.console(after_id=after, limit=BATCH)
            rows += batch
            if len(batch) < BATCH:
                break
            after = batch[-1][0]
        # Advance the cursor here, not in show(): the next fetch may start before show() runs.
        self.last_id = after if not rows else rows[-1][0]
        return {"rows": rows}

    def show(self, data: dict[str, Any]) -> None:
        rows = data["rows"]
        log = self.query_one(RichLog)
        # Follow the tail only if the view is already there: reading back is not interrupted.
        follow = self.following
        if rows:
            for _, _, stream, line in rows:
                self.count[stream] = self.count.get(stream, 0) + 1
                log.write(console_text(stream, line), scroll_end=False)
            if follow:
                log.scroll_end(animate=False, immediate=False, x_axis=False)
        self._status(follow)

    def _status(self, following: bool) -> None:
        out = Text(f"{self.count.get('stdout', 0):,} stdout, ")
        out.append(f"{self.count.get('stderr', 0):,} stderr", style="red")
        out.append(" lines")
        if sum(self.count.values()) > MAX_LINES:
            out.append(f" (last {MAX_LINES:,} kept)")
        if not following:
            out.append("  · scrolled up: End follows the tail", style="bold")
        self.query_one("#console-status", Static).update(out)

    def on_resize(self) -> None:
        if self.following:  # a resize moves the tail; stay on it
            log = self.query_one(RichLog)
            self.call_after_refresh(log.scroll_end, animate=False)

    def action_follow(self) -> None:
        log = self.query_one(RichLog)
        log.scroll_end(animate=False)
        self.following = True
        self._status(True)

    def action_top(self) -> None:
        self.query_one(RichLog).scroll_home(animate=False)
