"""A line plot widget: downsampled series with EMA smoothing, log-y, step or time x, markers.

The widget never reads the store. Its pane hands it series already downsampled to the plot's
dot width (`plot_buckets`), so drawing costs the same for a 100-step and a 10M-step run. It
redraws only when given data or settings that differ from what it shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

from .canvas import Canvas
from .format import fmt_duration, fmt_num, join_lines

MARKER_STYLE = "magenta"


@dataclass(frozen=True)
class Trace:
    """One line: bucket end steps, their wall times, bucket means and sample counts."""

    label: str
    steps: tuple[int, ...]
    walls: tuple[float, ...]
    values: tuple[float | None, ...]
    counts: tuple[int, ...]
    color: str
    smooth: bool = True  # EMA applies (not to the LR: its curve is exact)


def ema(values: Sequence[float | None], counts: Sequence[int], weight: float) -> list[float | None]:
    """Exponential moving average over bucket means, each bucket weighing as its sample count.

    A bucket of n steps decays the average by weight**n, so the curve looks the same whatever
    the downsampling: smoothing 0.9 means the same on a 100-step and a 1M-step run.
    """
    out: list[float | None] = []
    acc: float | None = None
    for v, n in zip(values, counts, strict=False):
        if v is None or not math.isfinite(v):
            out.append(None)
            continue
        if acc is None:
            acc = v
        else:
            a = weight ** max(n, 1)
            acc = a * acc + (1 - a) * v
        out.append(acc)
    return out


class Plot(Widget):
    """Draws traces with a legend row, y labels on the left and x labels below."""

    DEFAULT_CSS = """
    Plot { width: 1fr; height: 1fr; min-height: 2; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, *, ascii: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ascii = ascii
        self.traces: tuple[Trace, ...] = ()
        self.markers: tuple[tuple[int, float, str], ...] = ()
        self.smoothing = 0.0
        self.log_y = False
        self.x_time = False
        self.t0 = 0.0  # the run's start: time axis labels are elapsed time
        self.spans: tuple[tuple[float, float], tuple[float, float]] | None = None  # step, time
        self.empty_text = "no data yet"

    # -- geometry the pane asks before fetching --------------------------------------------
    def plot_buckets(self) -> int:
        """How many buckets to ask the store for: one per dot column of the drawing area."""
        width = max(1, self.size.width - 8)
        return width * (1 if self.ascii else 2)

    # -- updates -----------------------------------------------------------------------------
    def set_data(self, traces: Sequence[Trace], markers: Sequence[tuple[int, float, str]]) -> None:
        traces, markers = tuple(traces), tuple(markers)
        if traces != self.traces or markers != self.markers:
            self.traces, self.markers = traces, markers
            self.refresh()

    def set_options(
        self,
        *,
        smoothing: float,
        log_y: bool,
        x_time: bool,
        t0: float,
        spans: tuple[tuple[float, float], tuple[float, float]] | None = None,
    ) -> None:
        """Plot settings; `spans` (step range, wall range) lines up the x axes of sibling plots."""
        new = (smoothing, log_y, x_time, t0, spans)
        if new != (self.smoothing, self.log_y, self.x_time, self.t0, self.spans):
            self.smoothing, self.log_y, self.x_time, self.t0, self.spans = new
            self.refresh()

    # -- drawing -------------------------------------------------------------------------------
    def _xy(self, trace: Trace, values: Sequence[float | None]) -> list[tuple[float, float] | None]:
        xs = [w - self.t0 for w in trace.walls] if self.x_time else trace.steps
        out: list[tuple[float, float] | None] = []
        for x, v in zip(xs, values, strict=False):
            if v is None or not math.isfinite(v) or (self.log_y and v <= 0):
                out.append(None)
            else:
                out.append((float(x), math.log10(v) if self.log_y else v))
        return out

    def _lines(self) -> list[tuple[list, str]]:
        """(points, style) per line to draw, raw under smoothed where smoothing is on."""
        lines = []
        for t in self.traces:
            if self.smoothing and t.smooth and len(t.values) > 2:
                lines.append((self._xy(t, t.values), f"{t.color} dim"))
                lines.append(
                    (self._xy(t, ema(t.values, t.counts, self.smoothing)), f"bold {t.color}")
                )
            else:
                lines.append((self._xy(t, t.values), t.color))
        return lines

    def _legend(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        for t in self.traces:
            last = next((v for v in reversed(t.values) if v is not None), None)
            if text:
                text.append("  ")
            text.append("-- " if self.ascii else "━ ", t.color)
            text.append(f"{t.label} {fmt_num(last)}")
        if not self.traces:
            text.append(self.empty_text, "dim")
        return text

    def render(self) -> Text:
        w, h = self.size.width, self.size.height
        legend = self._legend()
        lines = self._lines()
        pts = [p for pl, _ in lines for p in pl if p is not None]
        if h < 2 or w < 12 or not pts:
            return legend
        axes = h >= 4
        x_lo, x_hi = min(p[0] for p in pts), max(p[0] for p in pts)
        if self.spans is not None:
            lo, hi = self.spans[1] if self.x_time else self.spans[0]
            if self.x_time:
                lo, hi = lo - self.t0, hi - self.t0
            x_lo, x_hi = min(x_lo, lo), max(x_hi, hi)
        y_lo, y_hi = min(p[1] for p in pts), max(p[1] for p in pts)
        if y_hi - y_lo < 1e-12 * max(1.0, abs(y_hi)):
            y_lo, y_hi = y_lo - 0.5 * (abs(y_lo) or 1), y_hi + 0.5 * (abs(y_hi) or 1)
        if x_hi <= x_lo:
            x_hi = x_lo + 1
        ylab = [self._ylabel(y) for y in (y_hi, (y_lo + y_hi) / 2, y_lo)] if axes else []
        lw = max((len(s) for s in ylab), default=0) + 1 if axes else 0
        ch = h - 1 - (1 if axes else 0)  # rows for the canvas: minus legend and x labels
        canvas = Canvas(w - lw, ch, self.ascii)
        sx, sy = canvas.dot_width - 1, canvas.dot_height - 1

        def to_dot(p: tuple[float, float]) -> tuple[int, int]:
            x = round((p[0] - x_lo) / (x_hi - x_lo) * sx)
            y = round((y_hi - p[1]) / (y_hi - y_lo) * sy)
            return x, y

        for step, wall, _msg in self.markers:
            mx = (wall - self.t0) if self.x_time else step
            if x_lo <= mx <= x_hi:
                canvas.vline(to_dot((mx, y_lo))[0] // canvas.sx, MARKER_STYLE)
        for points, style in lines:
            prev = None
            for p in points:
                cur = to_dot(p) if p is not None else None
                if cur is not None and prev is not None:
                    canvas.line(*prev, *cur, style)
                elif cur is not None:
                    canvas.dot(*cur, style)
                prev = cur
        out = [legend]
        for i, row in enumerate(canvas.rows()):
            if axes:
                at = {0: ylab[0], ch // 2: ylab[1], ch - 1: ylab[2]}  # top, middle, bottom rows
                label = at.get(i, "")
                out.append(Text.assemble((label.rjust(lw - 1) + " ", "dim"), row))
            else:
                out.append(row)
        if axes:
            out.append(self._xaxis(x_lo, x_hi, lw, w))
        return join_lines(out)

    def _ylabel(self, y: float) -> str:
        return fmt_num(10**y if self.log_y else y)

    def _xaxis(self, lo: float, hi: float, lw: int, w: int) -> Text:
        fmt = fmt_duration if self.x_time else (lambda v: fmt_num(v, integer=True))
        left, mid, right = fmt(lo), fmt((lo + hi) / 2), fmt(hi)
        width = w - lw
        line = [" "] * width
        labels = [(0, left), (width - len(right), right)]
        if mid not in (left, right):  # a short range would print the same number three times
            labels.insert(1, ((width - len(mid)) // 2, mid))
        for pos, s in labels:
            if pos >= 0 and all(c == " " for c in line[max(0, pos - 1) : pos + len(s) + 1]):
                line[pos : pos + len(s)] = s
        unit = "time" if self.x_time else "step"
        return Text(unit.rjust(lw - 1)[: lw - 1] + " " + "".join(line)[:width], "dim")
