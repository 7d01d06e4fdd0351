"""PaneSparkline: a small multi-row sparkline of one series (a layer's gradient-norm history)."""

from __future__ import annotations

import math

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from .format import fmt_num

# Eighth blocks give 8 levels per row; ascii mode has 3 ("." low, ":" half, "#" full).
BLOCKS = " ▁▂▃▄▅▆▇█"
ASCII_BLOCKS = " ..::::##"


def bar_rows(heights: list[float], rows: int, ascii_mode: bool = False) -> list[str]:
    """Columns of heights in [0, 1] drawn as `rows` lines of text, top line first."""
    chars = ASCII_BLOCKS if ascii_mode else BLOCKS
    out = []
    for r in range(rows - 1, -1, -1):
        line = []
        for h in heights:
            eighths = round(max(0.0, min(1.0, h)) * rows * 8) - r * 8
            if 0 < h and r == 0 and eighths <= 0:
                eighths = 1  # a non-zero value always shows, however small
            line.append(chars[max(0, min(8, eighths))])
        out.append("".join(line))
    return out


class PaneSparkline(Widget):
    """A labelled sparkline that fits its series to its width (max per column, so spikes show)."""

    DEFAULT_CSS = """
    PaneSparkline { height: 5; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    values: reactive[tuple[float, ...]] = reactive((), layout=False)

    def __init__(self, title: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title

    def set_values(self, values: list[float | None]) -> None:
        clean = tuple(v for v in values if v is not None and math.isfinite(v))
        if clean != self.values:
            self.values = clean

    def render(self) -> Text:
        width, height = max(1, self.size.width), max(2, self.size.height)
        vals = list(self.values)
        head = Text(self.title, style="bold")
        if not vals:
            head.append("  no data yet", style="dim")
            return head
        head.append(f" {fmt_num(vals[-1])}", style="bold")
        # the details that fit, whole: a number is never cut at the edge
        for extra in (
            f"  max {fmt_num(max(vals))}  {len(vals)} pts",
            f"  max {fmt_num(max(vals))}",
        ):
            if head.cell_len + len(extra) <= width:
                head.append(extra, style="dim")
                break
        # Newest at the right; a long history folds into columns by max so a spike survives.
        if len(vals) > width:
            per = len(vals) / width
            vals = [
                max(vals[int(i * per) : max(int(i * per) + 1, int((i + 1) * per))])
                for i in range(width)
            ]
        lo, hi = min(0.0, min(vals)), max(vals)
        span = hi - lo or 1.0
        heights = [(v - lo) / span for v in vals]
        out = Text()
        out.append_text(head)
        for line in bar_rows(heights, height - 1, getattr(self.app, "ascii_mode", False)):
            out.append("\n" + line, style="cyan")
        return out
