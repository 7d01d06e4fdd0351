"""The key footer: whole keys only, the most useful first, so a narrow terminal drops the least
useful ones (the plot keys) instead of cutting the steering keys or Help off at the right edge."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Footer

# Which keys stay when the footer is too narrow for all: Help (it lists every key), space,
# Quit, the other steering keys, then the tab's own keys. Shown in the order run, tab, quit, help.
KEEP_ORDER = {"help": 0, "pause": 1, "quit": 2, "steer": 3, "pane": 4}
SHOW_ORDER = {"pause": 0, "steer": 0, "pane": 1, "quit": 2, "help": 3}
STEERING_ACTIONS = ("pause_resume", "step", "set_lr", "scale_lr", "toggle_mode", "checkpoint")


def kind(action: str) -> str:
    """help, quit, pause, steer (another run key) or pane (the focused tab's own key)."""
    name = action.split("(")[0].rsplit(".", 1)[-1]
    if name in ("help", "pause_resume"):
        return "pause" if name == "pause_resume" else "help"
    if name in ("request_quit", "quit"):
        return "quit"
    return "steer" if name in STEERING_ACTIONS else "pane"


def key_width(key: Widget, compact: bool) -> int:
    """Cells a FooterKey takes: key, space, description, and the gap after it."""
    text = f"{getattr(key, 'key_display', '')} {getattr(key, 'description', '')}".strip()
    return len(text) + (1 if compact else 3)


def fit(keys: list[Widget], width: int, compact: bool) -> list[Widget]:
    """The keys that fit in `width` cells, chosen by KEEP_ORDER, drawn in SHOW_ORDER."""
    ranked = sorted(
        range(len(keys)), key=lambda i: (KEEP_ORDER[kind(getattr(keys[i], "action", ""))], i)
    )
    kept: set[int] = set()
    used = 0
    for i in ranked:
        w = key_width(keys[i], compact)
        if used + w <= width:
            kept.add(i)
            used += w
    return sorted(
        (keys[i] for i in kept),
        key=lambda k: (SHOW_ORDER[kind(getattr(k, "action", ""))], keys.index(k)),
    )


class RunFooter(Footer):
    """Textual's footer, with whole keys chosen to fit the width (recomposed on resize)."""

    PALETTE_W = 12  # `^p palette` and its separator, docked right

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._width = 0

    def compose(self) -> ComposeResult:
        widgets: Iterable[Widget] = list(super().compose())
        palette = [w for w in widgets if w.has_class("-command-palette")]
        keys = [w for w in widgets if hasattr(w, "action") and w not in palette]
        width = (self.app.size.width or 80) - (self.PALETTE_W if palette else 0)
        yield from fit(keys, width, self.compact)
        yield from palette

    def on_resize(self) -> None:
        width = self.app.size.width
        if width != self._width:
            self._width = width
            self.call_after_refresh(self.recompose)
