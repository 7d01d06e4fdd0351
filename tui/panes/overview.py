"""The Overview tab: loss, metric and LR plots with command markers, the system panel, events.

Data flow (one data path): the app's frame clock (2 Hz) calls frame(snapshot), which applies
the newest snapshot and the newest series and, when the snapshot's scalar counter moved or a
plot changed size, starts one thread worker that reads every plot's series downsampled to that
plot's width. Its result waits for the next tick, so the plots, the header
and the panels repaint together in one frame, at most twice a second, and only what changed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widget import Widget
from textual.worker import get_current_worker

from dltui.run import wire
from dltui.run.client import ControlClient
from dltui.run.reader import RunReader, Series

from ..messages import SeriesFetched
from ..poller import RunSnapshot
from ..widgets.events import EventList
from ..widgets.format import fmt_count
from ..widgets.learner import SIDE_BY_SIDE, RunPanel
from ..widgets.plot import Plot, Trace
from ..widgets.system import SystemPanel

SMOOTHING_STEPS = (0.0, 0.6, 0.9, 0.99)
NOT_METRICS = {"loss", *wire.TIMING_SCALARS}
TRAIN_COLOR, VAL_COLOR, LR_COLORS = "cyan", "yellow", ("green", "bright_blue", "bright_magenta")


WINDOWS = (100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000)  # `w` cycles: all, last N steps


def _trace(s: Series, label: str, color: str, smooth: bool = True, points: bool = False) -> Trace:
    return Trace(
        label,
        tuple(s.steps),
        tuple(s.walls),
        tuple(s.means),
        tuple(s.counts),
        color,
        smooth,
        lasts=tuple(s.lasts),
        points=points,
    )


def chartable(names: list[tuple[str, str]]) -> list[str]:
    """Every scalar the metric plot can show, in the order first recorded: metrics, dltui.log
    values, other optimizers' losses (`loss/<name>`), validation-only results; not the loss (it
    has its own plot), the LRs (theirs) or the timings."""
    out: list[str] = []
    for phase in (wire.TRAIN, wire.VAL):
        for n, ph in names:
            if ph == phase and n not in NOT_METRICS and not n.startswith("lr/") and n not in out:
                out.append(n)
    return out


def lr_key(name: str) -> tuple[str, int] | None:
    """'lr/0' -> ('', 0), the run's own optimizer; 'lr/optG/1' -> ('optG', 1); else None."""
    parts = name.split("/")
    if parts[0] != "lr" or len(parts) not in (2, 3) or not parts[-1].isdigit():
        return None
    return ("" if len(parts) == 2 else parts[1]), int(parts[-1])


def lr_labels(keys: list[str], main: str | None) -> dict[str, str]:
    """Legend labels of the LR plot: 'lr' alone; 'group 1' for one optimizer's groups; the
    optimizer's name (and '/group') when the run has several optimizers."""
    parsed = {k: lr_key(k) for k in keys}
    opts = {o for o, _ in parsed.values() if o is not None}
    groups = {(o, g) for o, g in (v for v in parsed.values() if v is not None)}
    out = {}
    for k, v in parsed.items():
        if v is None:
            continue
        opt, g = v
        many_groups = sum(1 for o, _ in groups if o == opt) > 1
        if len(opts) == 1:
            out[k] = f"group {g}" if many_groups else "lr"
        else:
            name = opt or main or "main"
            out[k] = f"{name}/{g}" if many_groups else name
    return out


def read_plot_series(
    r: RunReader, metric_index: int, b_loss: int, b_metric: int, b_lr: int, start: int | None = None
) -> dict[str, Any]:
    """Every overview series, each downsampled to its plot's width in dots.

    A handful of queries on the store's rollups: the cost is set by the buckets asked for, not
    by the run's length (benchmarks/tui.py compares a 1M-step store with a 100-step one).
    `start`: only steps from there on (the window of the last N steps).
    """
    names = r.series_names()
    metrics = chartable(names)
    metric = metrics[metric_index % len(metrics)] if metrics else None
    out: dict[str, Any] = {"metric": metric, "metrics": metrics}
    out["metric_pos"] = metrics.index(metric) if metric else 0
    for phase in (wire.TRAIN, wire.VAL):
        out[f"loss/{phase}"] = r.series("loss", phase, b_loss, start=start)
        if metric:
            out[f"metric/{phase}"] = r.series(metric, phase, b_metric, start=start)
    for n, ph in names:
        if lr_key(n) is not None and ph == wire.TRAIN:
            out[n] = r.series(n, ph, b_lr, start=start)
    return out


def _spans(series: Any) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The step and wall range over all plotted series: every plot's x axis shows the same span."""
    shown = [s for s in series if isinstance(s, Series) and len(s)]
    if not shown:
        return None
    steps = (min(s.steps[0] for s in shown), max(s.steps[-1] for s in shown))
    walls = (min(s.walls[0] for s in shown), max(s.walls[-1] for s in shown))
    return steps, walls


class OverviewPane(Widget, can_focus=True):
    """Plots, system panel and events of one run; plot keys act on all three plots."""

    BINDINGS = [
        Binding(
            "s",
            "cycle_smoothing",
            "Smooth",
            tooltip="EMA smoothing: off, 0.6, 0.9, 0.99",
            id="overview.smoothing",
        ),
        Binding(
            "g", "toggle_log", "Log", tooltip="Logarithmic y axis on the plots", id="overview.log_y"
        ),
        Binding("x", "toggle_x", "X", tooltip="x axis: step or elapsed time", id="overview.x_axis"),
        Binding(
            "m",
            "next_metric",
            "Metric",
            tooltip="Next scalar on the metric plot (each metric, dltui.log value...)",
            id="overview.metric",
        ),
        Binding(
            "w",
            "cycle_window",
            "Window",
            tooltip="Plot the whole run or only its last N steps (100, 1k, 10k...)",
            id="overview.window",
        ),
        Binding(
            "left",
            "cursor(-1)",
            "Cursor",
            key_display="left",  # words, not arrows: --ascii terminals draw the help too
            show=False,
            tooltip="Cursor left: read the exact step and values (and the command marked there)",
            id="overview.cursor_left",
        ),
        Binding(
            "right",
            "cursor(1)",
            "Cursor",
            key_display="right",
            show=False,
            tooltip="Cursor right",
            id="overview.cursor_right",
        ),
        Binding(
            "escape",
            "cursor(0)",
            "No cursor",
            show=False,
            tooltip="Hide the plot cursor",
            id="overview.cursor_off",
        ),
        Binding(
            "f",
            "filter_events",
            "Events",
            tooltip="Events shown: all, without routine checkpoints, warnings and errors only",
            id="overview.events_filter",
        ),
        Binding(
            "i",
            "toggle_run_panel",
            "Run",
            tooltip="Under 140 columns: the Run panel (samples, batches, optimizer, loss) or events",
            id="overview.run_panel",
        ),
        Binding(
            "left_square_bracket",
            "scroll_events(1)",
            "Older",
            key_display="[",
            show=False,
            tooltip="Scroll the events list back (older events)",
            id="overview.events_older",
        ),
        Binding(
            "right_square_bracket",
            "scroll_events(-1)",
            "Newer",
            key_display="]",
            show=False,
            tooltip="Scroll the events list forward (newer events)",
            id="overview.events_newer",
        ),
    ]

    def __init__(
        self,
        run_dir: Path,
        client: ControlClient | None = None,
        *,
        ascii: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_dir = Path(run_dir)
        self.client = client
        self.ascii = ascii
        self.smoothing = 0.0
        self.log_y = False
        self.x_time = False
        self.metric_index = 0
        self.metric_name: str | None = None
        self.metric_count = 0  # how many scalars `m` cycles through
        self.metric_pos = 0  # which of them is shown
        self.window: int | None = None  # plot only the last N steps; None: the whole run
        self.cursor: float | None = None  # the plots' cursor, a fraction of the x span
        self._snap: RunSnapshot | None = None
        self._snap_new = False
        self._series: dict[str, Series] | None = None
        self._series_new = False
        self._fetched_key: tuple | None = None
        self._fetching = False
        self._reader: RunReader | None = None
        # The reader's connection is used by the series thread and closed on unmount: never both
        # at once (closing a SQLite connection mid-query crashes the process).
        self._reader_lock = threading.Lock()
        self._closed = False
        # Kept, not queried: the clock may tick while the app is tearing the tree down.
        self.plots = tuple(
            Plot(ascii=ascii, id=f"plot-{n}", classes="panel") for n in ("loss", "metric", "lr")
        )
        self.system = SystemPanel(ascii=ascii, id="system", classes="panel")
        self.events = EventList(id="events", classes="panel")
        self.run_panel = RunPanel(id="run-panel", classes="panel")  # what the run computes

    def compose(self) -> ComposeResult:
        loss, metric, lr = self.plots
        with Horizontal(id="ov-row1"):
            yield loss
            yield metric
        with Horizontal(id="ov-row2"):
            yield lr
            yield self.system
        with Horizontal(id="ov-row3"):
            yield self.events
            yield self.run_panel

    def on_mount(self) -> None:
        titles = ("loss", "metric", "learning rate", "system", "events")
        for widget, title in zip((*self.plots, self.system, self.events), titles, strict=True):
            widget.border_title = title

    def on_resize(self) -> None:
        # Too narrow for both whole: the events and the Run panel take turns (i).
        turns = self.size.width < SIDE_BY_SIDE
        self.query_one("#ov-row3").set_class(turns, "-turns")
        self.events.border_title = "events  i: run" if turns else "events"

    def on_show(self) -> None:
        self.frame(getattr(self.app, "snapshot", None))  # back from another tab: catch up now

    def on_unmount(self) -> None:
        with self._reader_lock:
            self._closed = True
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # -- incoming ------------------------------------------------------------------------------
    def frame(self, snap: RunSnapshot | None) -> None:
        """The app's frame clock: take the newest snapshot, draw what changed, fetch if needed."""
        if snap is not None and snap is not self._snap:
            self._snap, self._snap_new = snap, True
        self.tick()

    @on(SeriesFetched)
    def _series_fetched(self, message: SeriesFetched) -> None:
        self._fetching = False
        if "error" in message.series:
            self.log.warning(f"overview: reading series failed: {message.series['error']}")
            return
        first = self._series is None
        self._series, self._fetched_key = message.series, message.request
        self.metric_name = message.series.get("metric")
        self.metric_count = len(message.series.get("metrics") or ())
        self.metric_pos = message.series.get("metric_pos", 0)
        self._series_new = True
        if first:
            self.tick()  # first paint: don't wait for the clock

    # -- the clock -----------------------------------------------------------------------------
    def tick(self) -> None:
        """Apply what arrived since the last frame; start a series read if the store moved."""
        snap = self._snap
        if snap is None or not self.is_attached or not self.parent or not self.parent.display:
            return  # another tab is showing (or the app is closing): nothing to draw or read
        if self._snap_new or self._series_new:
            if self._snap_new:
                self.system.show(snap)
                self.events.show(snap)
                self.run_panel.show(snap)
            self._snap_new = self._series_new = False
            self._draw()  # each plot repaints only if its data or settings differ
        key = self._fetch_key(snap)
        if key != self._fetched_key and not self._fetching and snap.scalars_seen:
            self._fetching = True
            self._fetch(key)

    def _fetch_key(self, snap: RunSnapshot) -> tuple:
        start = max(0, snap.step - self.window) if self.window else None
        buckets = (p.plot_buckets() for p in self.plots)
        return (snap.scalars_seen, self.metric_index, *buckets, start)

    @work(thread=True, exclusive=True, group="overview-series")
    def _fetch(self, key: tuple) -> None:
        """Read every plot's series at its width, on a thread (SQLite never blocks the UI)."""
        out: dict[str, Any] = {}
        with self._reader_lock:
            if self._closed:
                return  # the pane is gone
            try:
                if self._reader is None:
                    self._reader = RunReader(self.run_dir)
                out = read_plot_series(self._reader, *key[1:])
            except Exception as e:  # not created yet, locked, half-written: the next tick retries
                out = {"error": f"{type(e).__name__}: {e}"}
        if not get_current_worker().is_cancelled:
            self.post_message(SeriesFetched(out, key))

    # -- drawing -------------------------------------------------------------------------------
    def _draw(self) -> None:
        snap, series = self._snap, self._series
        if snap is None:
            return
        loss, metric, lr = self.plots
        options = dict(
            smoothing=self.smoothing, log_y=self.log_y, x_time=self.x_time, t0=snap.started or 0.0
        )
        window = f"last {fmt_count(self.window)} steps" if self.window else ""
        shown = ("log" if self.log_y else "", "time" if self.x_time else "", window)
        ema = f"ema {self.smoothing:g}" if self.smoothing else ""
        for plot, smoothed in (
            (loss, True),
            (metric, True),
            (lr, False),
        ):  # the LR is never smoothed
            subtitle = "  ".join(w for w in (ema if smoothed else "", *shown) if w)
            if plot.border_subtitle != subtitle:
                plot.border_subtitle = subtitle
        title = self.metric_name or "metric"
        if self.metric_count > 1:  # there is more behind `m`: say where in the cycle this is
            title += f" {self.metric_pos + 1}/{self.metric_count}"
        if metric.border_title != title:
            metric.border_title = title
        if series is None:
            return
        spans = _spans(series.values())
        for plot in (loss, metric, lr):
            plot.set_options(**options, spans=spans)
        markers = snap.markers
        loss.set_data(self._pair(series, "loss"), markers)
        metric.set_data(self._pair(series, "metric"), markers)
        lrs = sorted((k for k in series if lr_key(k) is not None), key=lr_key)
        main = snap.optimizers[0]["name"] if snap.optimizers else None
        labels = lr_labels(lrs, main)
        lr.set_data(
            [
                _trace(series[k], labels[k], LR_COLORS[i % len(LR_COLORS)], False)
                for i, k in enumerate(lrs)
                if len(series[k])
            ],
            markers,
        )

    def _pair(self, series: dict[str, Series], key: str) -> list[Trace]:
        out = []
        for phase, color in ((wire.TRAIN, TRAIN_COLOR), (wire.VAL, VAL_COLOR)):
            s = series.get(f"{key}/{phase}")
            if s is not None and len(s):
                # val points are already means over the whole val set, one per epoch: an EMA over
                # a handful of them only drags the curve behind; train is what needs smoothing
                # and their marks (● / o) tell them from train without colour
                val = phase == wire.VAL
                out.append(_trace(s, phase, color, smooth=not val, points=val))
        return out

    # -- plot controls -------------------------------------------------------------------------
    def action_cycle_window(self) -> None:
        """All steps, then the last 100, 1k, 10k... steps (only windows shorter than the run)."""
        step = self._snap.step if self._snap else 0
        choices: list[int | None] = [None, *(n for n in WINDOWS if n < step)]
        i = choices.index(self.window) if self.window in choices else 0
        self.window = choices[(i + 1) % len(choices)]
        what = f"the last {fmt_count(self.window)} steps" if self.window else "the whole run"
        if len(choices) == 1:
            what += f" (it has {step} steps: no shorter window)"
        self.notify(f"plots show {what}", timeout=2)
        self._draw()
        self.tick()

    def action_cursor(self, move: int) -> None:
        """Move the plots' cursor a column (-1 / 1), or hide it (0)."""
        if move == 0:
            self.cursor = None
        else:
            cols = max(1, self.plots[0].columns() - 1)
            at = self.cursor if self.cursor is not None else (1.0 if move < 0 else 0.0)
            self.cursor = min(1.0, max(0.0, at + move / cols)) if self.cursor is not None else at
        for plot in self.plots:
            plot.set_cursor(self.cursor)

    def on_plot_clicked(self, message: Plot.Clicked) -> None:
        """A click on a plot puts the cursor there (on every plot: they share the x axis)."""
        self.cursor = message.fraction
        for plot in self.plots:
            plot.set_cursor(self.cursor)

    def action_filter_events(self) -> None:
        what = self.events.cycle_filter()
        self.notify(f"events: {what}", timeout=2)

    def action_toggle_run_panel(self) -> None:
        self.run_panel.toggle()

    def action_scroll_events(self, lines: int) -> None:
        self.events.scroll_by_lines(lines)

    def action_cycle_smoothing(self) -> None:
        i = SMOOTHING_STEPS.index(self.smoothing) if self.smoothing in SMOOTHING_STEPS else 0
        self.smoothing = SMOOTHING_STEPS[(i + 1) % len(SMOOTHING_STEPS)]
        self.notify(
            f"smoothing {'off' if not self.smoothing else f'EMA {self.smoothing:g}'}", timeout=2
        )
        self._draw()

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self.notify(f"y axis {'logarithmic' if self.log_y else 'linear'}", timeout=2)
        self._draw()

    def action_toggle_x(self) -> None:
        self.x_time = not self.x_time
        self.notify(f"x axis: {'elapsed time' if self.x_time else 'step'}", timeout=2)
        self._draw()

    def action_next_metric(self) -> None:
        if self.metric_count == 1:
            self.notify(
                f"{self.metric_name} is the only scalar to show here (besides loss and LR)",
                timeout=2,
            )
        elif not self.metric_count:
            self.notify(
                "no metric recorded yet (a script can log some: dltui.log(acc=...))", timeout=3
            )
        self.metric_index += 1
        self.tick()
