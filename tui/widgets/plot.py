"""A line plot widget: downsampled series with EMA smoothing, log-y, step or time x, markers.

The widget never reads the store. Its pane hands it series already downsampled to the plot's
dot width (`plot_buckets`), so drawing costs the same for a 100-step and a 10M-step run. It
redraws only when given data or settings that differ from what it shows.

Readable without colour (NO_COLOR, --ascii): validation points are drawn as marks (● / o) on
their line, a raw curve under its smoothed one as loose dots, and the legend says which is
which. The y range ignores outliers (a few wild points do not flatten the curve; they are drawn
on the edge and counted in the legend), and a cursor reads the exact step and value at a column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.message import Message
from textual.widget import Widget

from .canvas import Canvas
from .format import fmt_duration, fmt_num, fmt_ticks, join_lines

MARKER_STYLE = "magenta"
CURSOR_STYLE = "reverse"
MARK_EVERY = 6  # cells between a compared run's glyphs along its line
OUTLIER_FENCE = 3.0  # points beyond Q3 + 3 IQR (or below Q1 - 3 IQR) leave the y range


@dataclass(frozen=True)
class Trace:
    """One line: bucket end steps, their wall times, bucket means, sample counts and each
    bucket's last value (the value recorded at its end step)."""

    label: str
    steps: tuple[int, ...]
    walls: tuple[float, ...]
    values: tuple[float | None, ...]
    counts: tuple[int, ...]
    color: str
    smooth: bool = True  # EMA applies (not to the LR: its curve is exact)
    lasts: tuple[float | None, ...] = ()
    points: bool = False  # drawn with a mark at each point (validation: one per epoch)
    mark: str = ""  # a compared run's glyph: along its line and in the legend (no colour needed)

    @property
    def last(self) -> tuple[int, float] | None:
        """(step, value) of the newest recorded point: what "current" means in a legend."""
        vals = self.lasts or self.values
        for i in range(len(vals) - 1, -1, -1):
            if vals[i] is not None:
                return self.steps[i], vals[i]
        return None

    def at(self, x: float, x_time: bool, t0: float) -> tuple[int, float] | None:
        """(step, exact value) of the newest point at or before x (a step, or elapsed seconds)."""
        xs = [w - t0 for w in self.walls] if x_time else self.steps
        vals = self.lasts or self.values
        best = None
        for i, xi in enumerate(xs):
            if xi > x:
                break
            if vals[i] is not None:
                best = (self.steps[i], vals[i])
        return best


def robust_range(values: Sequence[float]) -> tuple[float, float, int]:
    """(lo, hi, outliers): the range of `values` without the points beyond Tukey's far fences
    (OUTLIER_FENCE IQRs past the quartiles); with too few points, or no spread, the full range."""
    vals = sorted(values)
    lo, hi = vals[0], vals[-1]
    if len(vals) < 8:
        return lo, hi, 0
    q1, q3 = vals[len(vals) // 4], vals[(3 * len(vals)) // 4]
    iqr = q3 - q1
    if iqr <= 0:
        return lo, hi, 0
    f_lo, f_hi = q1 - OUTLIER_FENCE * iqr, q3 + OUTLIER_FENCE * iqr
    inside = [v for v in vals if f_lo <= v <= f_hi]
    return inside[0], inside[-1], len(vals) - len(inside)


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

    @dataclass
    class Clicked(Message):
        """The plot was clicked at this fraction of its x span (its pane moves the cursor)."""

        fraction: float

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
        self._outliers = 0  # points the last drawing left off the y range
        self.cursor: float | None = None  # where the cursor is, as a fraction of the x span
        self.marker_labels: dict[str, str] = {}  # marker message prefix -> short legend word
        self._geom: tuple[float, float, int, int] | None = None  # x_lo, x_hi, left, canvas cols

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

    def on_click(self, event: events.Click) -> None:
        if self._geom is None:
            return
        _, _, left, cols = self._geom
        col = event.x - left
        if 0 <= col < cols:
            self.post_message(self.Clicked(col / max(1, cols - 1)))

    def set_cursor(self, cursor: float | None) -> None:
        """Show the cursor at this fraction of the x span (None: hide it)."""
        if cursor != self.cursor:
            self.cursor = cursor
            self.refresh()

    def columns(self) -> int:
        """Cells across the drawing area (the cursor moves one at a time)."""
        return self._geom[3] if self._geom else max(1, self.size.width - 8)

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

    def _smoothed(self, t: Trace) -> bool:
        return bool(self.smoothing and t.smooth and len(t.values) > 2)

    def _lines(self) -> list[tuple[list, str, str]]:
        """(points, style, how) per line: how is 'line', 'dots' (a raw curve under its
        smoothed one: loose dots, so it differs without colour) or 'marks' (validation)."""
        lines = []
        for t in self.traces:
            if self._smoothed(t):
                lines.append((self._xy(t, t.values), f"{t.color} dim", "dots"))
                smooth = ema(t.values, t.counts, self.smoothing)
                lines.append((self._xy(t, smooth), f"bold {t.color}", "line"))
            else:
                lines.append((self._xy(t, t.values), t.color, "marks" if t.points else "line"))
        return lines

    def _glyph(self, t: Trace) -> str:
        if t.mark:
            return ("-" if self.ascii else "━") + t.mark + " "
        if t.points:
            return "-o " if self.ascii else "━● "
        return "-- " if self.ascii else "━ "

    def _legend(self) -> Text:
        """Each trace's glyph, label and last recorded value; the cursor's reading when shown."""
        text = Text(no_wrap=True, overflow="ellipsis")
        reading = self._reading()
        if reading is not None:
            return reading
        for t in self.traces:
            if text:
                text.append("  ")
            text.append(self._glyph(t), t.color)
            last = t.last
            text.append(f"{t.label} {fmt_num(last[1] if last else None)}")
            if self._smoothed(t):
                text.append(" ema  ", "dim")
                text.append(":" if self.ascii else "⠂", f"{t.color} dim")
                text.append(" raw", "dim")
        if self._outliers:
            text.append(f"  {self._outliers} off-scale", "dim")
        if self.markers and self.traces:
            text.append("  ")
            text.append("|" if self.ascii else "┊", MARKER_STYLE)
            text.append(" command", "dim")
        if not self.traces:
            text.append(self.empty_text, "dim")
        return text

    def cursor_x(self) -> float | None:
        """The cursor's x (a step, or elapsed seconds) on the last drawn axis."""
        if self.cursor is None or self._geom is None:
            return None
        x_lo, x_hi, _, _ = self._geom
        return x_lo + self.cursor * (x_hi - x_lo)

    def _reading(self) -> Text | None:
        """At the cursor: the step and each trace's exact value there, and the command marked
        at that column (markers can be read back)."""
        x = self.cursor_x()
        if x is None:
            return None
        text = Text(no_wrap=True, overflow="ellipsis")
        unit = fmt_duration(x) if self.x_time else f"step {int(round(x))}"
        text.append(f"@ {unit}", "bold")
        if self._geom is not None:
            x_lo, x_hi, _, cols = self._geom
            half = (x_hi - x_lo) / max(1, cols) / 2 * 1.5
            for step, wall, msg in self.markers:
                mx = (wall - self.t0) if self.x_time else step
                if abs(mx - x) <= half:
                    text.append("  ")
                    text.append("|" if self.ascii else "┊", MARKER_STYLE)
                    text.append(f" {msg}")
        for t in self.traces:
            hit = t.at(x, self.x_time, self.t0)
            text.append("  ")
            text.append(self._glyph(t), t.color)
            if hit is None:
                text.append(f"{t.label} -")
            else:
                text.append(f"{t.label} {fmt_num(hit[1])}")
                if not self.x_time and hit[0] != int(round(x)):
                    text.append(f" (step {hit[0]})", "dim")
        return text

    def render(self) -> Text:
        w, h = self.size.width, self.size.height
        lines = self._lines()
        pts = [p for pl, _, _ in lines for p in pl if p is not None]
        self._outliers = 0
        if h < 2 or w < 12 or not pts:
            self._geom = None
            return self._legend()
        axes = h >= 4
        x_lo, x_hi = min(p[0] for p in pts), max(p[0] for p in pts)
        if self.spans is not None:
            lo, hi = self.spans[1] if self.x_time else self.spans[0]
            if self.x_time:
                lo, hi = lo - self.t0, hi - self.t0
            x_lo, x_hi = min(x_lo, lo), max(x_hi, hi)
        # The y range leaves out outliers (a NaN-adjacent blow-up, the first steps' loss):
        # they are drawn on the edge and counted in the legend.
        y_lo, y_hi, self._outliers = robust_range(
            [p[1] for pl, _, how in lines if how != "dots" for p in pl if p is not None]
            or [p[1] for p in pts]
        )
        if y_hi - y_lo < 1e-12 * max(1.0, abs(y_hi)):
            y_lo, y_hi = y_lo - 0.5 * (abs(y_lo) or 1), y_hi + 0.5 * (abs(y_hi) or 1)
        if x_hi <= x_lo:
            x_hi = x_lo + 1
        ylab = self._ylabels(y_hi, y_lo) if axes else []
        lw = max((len(s) for s in ylab), default=0) + 1 if axes else 0
        ch = h - 1 - (1 if axes else 0)  # rows for the canvas: minus legend and x labels
        canvas = Canvas(w - lw, ch, self.ascii)
        sx, sy = canvas.dot_width - 1, canvas.dot_height - 1
        self._geom = (x_lo, x_hi, lw, canvas.width)

        def to_dot(p: tuple[float, float]) -> tuple[int, int]:
            x = round((p[0] - x_lo) / (x_hi - x_lo) * sx)
            y = round((y_hi - p[1]) / (y_hi - y_lo) * sy)
            return x, min(sy, max(0, y))  # an outlier sits on the edge

        for step, wall, _msg in self.markers:
            mx = (wall - self.t0) if self.x_time else step
            if x_lo <= mx <= x_hi:
                canvas.vline(to_dot((mx, y_lo))[0] // canvas.sx, MARKER_STYLE)
        for points, style, how in lines:
            prev = None
            for p in points:
                cur = to_dot(p) if p is not None else None
                if cur is not None and prev is not None and how != "dots":
                    canvas.line(*prev, *cur, style)
                elif cur is not None and (how != "dots" or cur[0] % 2 == 0):
                    canvas.dot(*cur, style)
                prev = cur
            if how == "marks":
                for p in points:
                    if p is not None:
                        x, y = to_dot(p)
                        canvas.mark(
                            x // canvas.sx, y // canvas.sy, "o" if self.ascii else "●", style
                        )
        for i, t in enumerate(self.traces):
            if t.mark:
                self._run_marks(canvas, t, i, to_dot)
        x = self.cursor_x()
        if x is not None:
            canvas.cursor(to_dot((x, y_lo))[0] // canvas.sx, CURSOR_STYLE)
        out = [self._legend()]
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

    def _run_marks(self, canvas: Canvas, t: Trace, i: int, to_dot) -> None:
        """A trace's glyph at each of its points (validation) or every MARK_EVERY cells along its
        line, each trace at its own phase, so two runs on one curve both show."""
        values = ema(t.values, t.counts, self.smoothing) if self._smoothed(t) else t.values
        every = 1 if t.points else MARK_EVERY
        last_col = None
        for p in self._xy(t, values):
            if p is None:
                continue
            x, y = to_dot(p)
            col = x // canvas.sx
            if col != last_col and (col + 2 * i) % every == 0:
                canvas.mark(col, y // canvas.sy, t.mark, t.color)
                last_col = col

    def _ylabels(self, y_hi: float, y_lo: float) -> list[str]:
        """Top, middle and bottom labels, with the digits it takes to tell them apart (an LR
        going 0.0501 -> 0.05 must not read 0.05 / 0.05 / 0.05)."""
        ys = [y_hi, (y_lo + y_hi) / 2, y_lo]
        return fmt_ticks([10**y if self.log_y else y for y in ys])

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
