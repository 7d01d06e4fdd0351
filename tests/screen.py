"""What a test sees of the dashboard, through Textual's public API only.

screen_text(app): the screen as the terminal shows it, rebuilt from `App.export_screenshot()`
(an SVG whose text elements carry their cell position). notes(app): the messages of every
notification since the last `clear_notifications()`, recorded around the public `App.notify`.
"""

from __future__ import annotations

import html
import re

from rich.cells import cell_len
from textual.app import App

CELL_W = 12.2  # Textual's SVG export draws one terminal cell 12.2 units wide
_TEXT = re.compile(
    r'<text class="[^"]*" x="([0-9.]+)" y="[0-9.]+" textLength="[0-9.]+" '
    r'clip-path="url\(#[^)]*-line-(\d+)\)">([^<]*)</text>'
)


def screen_text(app: App) -> str:
    """The current screen (dialogs over the screens below them) as plain text, one row a line."""
    width, height = app.size
    rows = [[" "] * width for _ in range(height)]
    for x, line, content in _TEXT.findall(app.export_screenshot(simplify=True)):
        row = int(line)
        if row >= height:
            continue
        col = round(float(x) / CELL_W)
        for ch in html.unescape(content).replace("\xa0", " "):
            w = cell_len(ch)
            if 0 <= col < width:
                rows[row][col] = ch
                for k in range(1, w):  # a wide character fills the next cell too
                    if col + k < width:
                        rows[row][col + k] = ""
            col += max(1, w)
    return "\n".join("".join(r).rstrip() for r in rows)


_orig_notify = App.notify
_orig_clear = App.clear_notifications


def _recording_notify(self: App, message: str, *args: object, **kwargs: object) -> None:
    self.__dict__.setdefault("_notes_seen", []).append(str(message))
    return _orig_notify(self, message, *args, **kwargs)


def _recording_clear(self: App) -> None:
    self.__dict__["_notes_seen"] = []
    return _orig_clear(self)


App.notify = _recording_notify  # type: ignore[method-assign]
App.clear_notifications = _recording_clear  # type: ignore[method-assign]


def notes(app: App) -> list[str]:
    """Every notification message since the app started or its last clear_notifications()."""
    return list(app.__dict__.get("_notes_seen", []))
