"""PaneHistogram: the latest histogram of a tensor's values (weight or gradient) as vertical bars."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from .format import fmt_num
from .pane_sparkline import bar_rows


def fold(counts: list[int], width: int) -> list[int]:
    """Bins resampled to `width` columns: summed when there are more bins than columns."""
    n = len(counts)
    if n == 0 or width <= 0:
        return []
    if n <= width:
        # Widen each bin to a whole number of columns so the bars stay evenly spaced.
        per = width // n
        return [c for c in counts for _ in range(per)]
    return [sum(counts[i * n // width : (i + 1) * n // width]) for i in range(width)]


class PaneHistogram(Widget):
    """Bars of {lo, hi, counts, step} from the store's histograms table, with the value range."""

    DEFAULT_CSS = """
    PaneHistogram { height: 1fr; min-height: 3; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, title: str, style: str = "green", **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title
        self.bar_style = style
        self.hist: dict | None = None

    def set_histogram(self, hist: dict | None) -> None:
        if hist != self.hist:
            self.hist = hist
            self.refresh()

    def render(self) -> Text:
        width, height = max(1, self.size.width), max(1, self.size.height)
        out = Text(self.title, style="bold")
        h = self.hist
        if not h or not h.get("counts"):
            out.append("  no histogram yet", style="dim")
            return out
        counts = list(h["counts"])
        out.append(f"  step {h.get('step')}  n={sum(counts):,}", style="dim")
        if height < 3:
            return out
        cols = fold(counts, width)
        top = max(cols) or 1
        for line in bar_rows(
            [c / top for c in cols], height - 2, getattr(self.app, "ascii_mode", False)
        ):
            out.append("\n" + line, style=self.bar_style)
        lo, hi = fmt_num(h.get("lo")), fmt_num(h.get("hi"))
        gap = max(1, len(cols) - len(lo) - len(hi))
        out.append("\n" + lo + " " * gap + hi, style="dim")
        return out
