"""The compare view: several runs' curves on the same charts, and a table of how the runs differ.

`dltui attach A B [C ...]`, or runs marked on the Runs screen (space, then c). Tab 1 overlays
train loss, validation loss and one more scalar (m cycles) of every run, one colour and glyph
per run (the glyphs read under NO_COLOR and --ascii), by step or by time since each run's start
(x); below, a table of the runs' status, length, hparams (a '*' marks the ones that differ) and
each scalar's last and best value. Tab 2 is the metrics grid with every run on each chart.
A live run updates in place: its summary is re-read every second, its curves when it wrote.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.scrollbar import ScrollBar
from textual.widgets import Footer, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from dltui.run import wire
from dltui.run.catalog import read_row
from dltui.run.reader import RunReader

from ..app import AsciiScrollBarRender
from ..multirun import Readers, chart_title, first_wall, legend_labels, run_sources, run_trace
from ..panes.metrics import CompareMetricsPane
from ..panes.overview import chartable
from ..widgets.compare_table import ComparedRun, CompareTable, higher_is_better
from ..widgets.plot import Plot

POLL_S = 1.0  # each run's summary (status, step, hparams) re-read this often
FRAME_S = 0.5
TABLE_EVERY_S = 5.0  # the table's last/best values of every scalar: at most this often


@dataclass
class CompareSnapshot:
    """The compared runs' change counters, in the shape the metrics grid keys its reads on."""

    scalars_seen: tuple[int, ...]


class RunsPolled(Message, bubble=False):
    def __init__(self, runs: list[ComparedRun]) -> None:
        super().__init__()
        self.runs = runs


class CurvesFetched(Message, bubble=False):
    def __init__(self, data: dict[str, Any], key: tuple) -> None:
        super().__init__()
        self.data, self.key = data, key


def poll_run(readers: Readers, path: Path) -> ComparedRun:
    row = read_row(path)
    seen, resumed = 0, ()
    r = readers.get(path)
    if r is not None:
        seen = r.db.execute("SELECT coalesce(max(rowid), 0) FROM scalars").fetchone()[0]
        resumed = tuple(
            int(e["step"] or 0)
            for e in r.events(kind=wire.EV_RUN, limit=1000)
            if e["message"].startswith("resumed")
        )
    return ComparedRun(row, seen, resumed)


def scalar_summary(r: RunReader, key: tuple[str, str]) -> tuple[float | None, float | None]:
    """(last, best) of one scalar: best is its lowest, or highest for an accuracy-like name;
    one bucket over the whole run, read from the store's rollups."""
    last = r.last(*key)
    whole = r.series(key[0], key[1], buckets=1)
    values = whole.maxs if higher_is_better(key[0]) else whole.mins
    best = values[0] if values else None
    return (last[1] if last else None), best


class CompareScreen(Screen[None]):
    """Two or more runs side by side; Esc goes back (or quits, when it is the whole app)."""

    BINDINGS = [
        Binding(
            "x",
            "toggle_x",
            "X",
            tooltip="x axis: step or time since each run's start",
            id="compare.x_axis",
        ),
        Binding(
            "m",
            "next_metric",
            "Metric",
            tooltip="Next scalar on the third chart",
            id="compare.metric",
        ),
        Binding("1", "show_tab('curves')", "Curves", show=False, id="compare.curves"),
        Binding("2", "show_tab('grid')", "Metrics", show=False, id="compare.grid"),
        Binding("escape", "back", "Back", tooltip="Leave the comparison", id="compare.back"),
    ]
    DEFAULT_CSS = """
    CompareScreen #cmp-key { height: auto; max-height: 4; padding: 0 1; background: $boost; }
    CompareScreen #cmp-tabs { height: 1fr; }
    CompareScreen #cmp-plots, CompareScreen #cmp-loss { height: 1fr; }
    CompareScreen #cmp-table { height: 1fr; }
    """

    def __init__(self, paths: Sequence[Path], ascii: bool = False) -> None:
        super().__init__()
        self.paths = [Path(p) for p in paths]
        self.ascii = ascii
        self.sources = run_sources(self.paths, ascii)
        self.runs: list[ComparedRun] = []
        self.x_time = False
        self.metric_index = 0
        self.curves: dict[str, Any] | None = None
        self._curves_key: tuple | None = None
        self._fetching = False
        self._table_at = 0.0
        self._table_values: dict[tuple[str, str], list[tuple[float | None, float | None]]] = {}
        self._readers = Readers(self.paths)  # the curves' thread; the poller has its own
        self._lock = threading.Lock()
        self._closed = False
        self.plots = tuple(
            Plot(ascii=ascii, id=f"cmp-{n}", classes="panel") for n in ("loss", "val", "metric")
        )
        self.table = CompareTable(self.sources, id="cmp-table")
        self.grid = CompareMetricsPane(self.paths[0], None, self.sources, classes="pane")

    def compose(self) -> ComposeResult:
        yield Static(self._key_text(), id="cmp-key")
        with TabbedContent(id="cmp-tabs"):
            with TabPane("1 Curves", id="curves"):
                yield self.plots[0]  # the whole width: the runs' whole names fit its legend
                with Horizontal(id="cmp-plots"):
                    yield from self.plots[1:]
                yield self.table
            with TabPane("2 Metrics", id="grid"):
                yield self.grid
        yield Footer()

    def on_mount(self) -> None:
        for plot, title in zip(self.plots, ("loss", "loss (val)", "metric"), strict=True):
            plot.border_title = title
            plot.empty_text = "nothing recorded"
        self._poll()
        self.set_interval(FRAME_S, self._frame)

    def on_unmount(self) -> None:
        with self._lock:
            self._closed = True
            self._readers.close()

    def _key_text(self) -> Text:
        """Each run's glyph and whole name, in its colour: the charts' legend key."""
        text = Text()
        for src in self.sources:
            if text:
                text.append("   ")
            text.append(("-" if self.ascii else "━") + src.mark + " ", src.color)
            text.append(src.label)
        axis = "time since each run's start" if self.x_time else "step"
        text.append(f"   x: {axis}", "dim")
        return text

    # -- polling the runs --------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="compare-poll")
    def _poll(self) -> None:
        worker = get_current_worker()
        readers = Readers(self.paths)
        try:
            while not worker.is_cancelled:
                try:
                    runs = [poll_run(readers, p) for p in self.paths]
                except Exception as e:  # a store being written: keep what is shown, try again
                    self.log.warning(f"compare: {type(e).__name__}: {e}")
                    readers.close()
                else:
                    self.post_message(RunsPolled(runs))
                deadline = time.monotonic() + POLL_S
                while not worker.is_cancelled and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            readers.close()

    @on(RunsPolled)
    def _polled(self, message: RunsPolled) -> None:
        first = not self.runs
        self.runs = message.runs
        self.table.show(self.runs, self._table_values)
        if first:
            self._frame()

    def _frame(self) -> None:
        if not self.runs:
            return
        snap = CompareSnapshot(tuple(r.scalars_seen for r in self.runs))
        if self.grid.showing:
            self.grid.frame(snap)
        if not self.plots[0].display or not self.plots[0].is_attached:
            return
        table_due = time.monotonic() - self._table_at >= TABLE_EVERY_S
        key = (snap.scalars_seen, self.metric_index, *(p.plot_buckets() for p in self.plots))
        if (key != self._curves_key or table_due) and not self._fetching:
            self._fetching = True
            self._fetch(key, table_due or self._table_at == 0.0)

    # -- curves --------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="compare-curves")
    def _fetch(self, key: tuple, with_table: bool) -> None:
        out: dict[str, Any] = {}
        with self._lock:
            if self._closed:
                return
            try:
                out = self._read(key, with_table)
            except Exception as e:  # half-written or locked: the next frame tries again
                out = {"error": f"{type(e).__name__}: {e}"}
        if not get_current_worker().is_cancelled:
            self.post_message(CurvesFetched(out, key))

    def _read(self, key: tuple, with_table: bool) -> dict[str, Any]:
        _, metric_index, b_loss, b_val, b_metric = key
        names = self._readers.names()
        scalars = set(chartable(names))  # not the loss (two charts of its own), LRs, timings
        metrics = [(n, p) for n, p in names if n in scalars]
        metric = metrics[metric_index % len(metrics)] if metrics else None
        out: dict[str, Any] = {"metric": metric, "metrics": len(metrics), "t0s": []}
        wanted = {"loss": (("loss", wire.TRAIN), b_loss), "val": (("loss", wire.VAL), b_val)}
        if metric:
            wanted["curve"] = (metric, b_metric)
        for slot in wanted:
            out[slot] = []
        for p in self.paths:
            r = self._readers.get(p)
            out["t0s"].append(first_wall(r) if r else None)
            for slot, ((name, phase), buckets) in wanted.items():
                out[slot].append(r.series(name, phase, buckets) if r else None)
        if with_table:
            shown = [("loss", wire.TRAIN), ("loss", wire.VAL), *metrics]
            out["table"] = {
                k: [
                    scalar_summary(r, k) if r else (None, None)
                    for r in (self._readers.get(p) for p in self.paths)
                ]
                for k in shown
                if k in names
            }
        return out

    @on(CurvesFetched)
    def _curves_fetched(self, message: CurvesFetched) -> None:
        self._fetching = False
        if "error" in message.data:
            self.log.warning(f"compare: reading series failed: {message.data['error']}")
            return
        self.curves, self._curves_key = message.data, message.key
        if "table" in message.data:
            self._table_values, self._table_at = message.data["table"], time.monotonic()
            self.table.show(self.runs, self._table_values)
        self._draw()

    def _draw(self) -> None:
        data = self.curves
        if data is None:
            return
        loss, val, metric = self.plots
        m = data.get("metric")
        title = chart_title(*m) if m else "metric"
        if data.get("metrics", 0) > 1:
            title += f" {self.metric_index % data['metrics'] + 1}/{data['metrics']}"
        if metric.border_title != title:
            metric.border_title = title
        for plot, slot, phase in (
            (loss, "loss", wire.TRAIN),
            (val, "val", wire.VAL),
            (metric, "curve", m[1] if m else wire.TRAIN),
        ):
            labels = legend_labels(self.sources, plot.size.width)
            traces = [
                run_trace(s, src, phase, t0, label)
                for s, src, t0, label in zip(
                    data.get(slot, ()), self.sources, data["t0s"], labels, strict=False
                )
                if s is not None and len(s)
            ]
            plot.set_options(smoothing=0.0, log_y=False, x_time=self.x_time, t0=0.0, spans=None)
            plot.set_data(traces, [])

    # -- keys ----------------------------------------------------------------------------------
    def action_toggle_x(self) -> None:
        self.x_time = not self.x_time
        self.grid.x_time = self.x_time
        if self.grid.data is not None:
            self.grid.show(self.grid.data)
        self.query_one("#cmp-key", Static).update(self._key_text())
        self.notify(
            f"x axis: {'time since each run started' if self.x_time else 'step'}", timeout=2
        )
        self._draw()

    def action_next_metric(self) -> None:
        self.metric_index += 1
        self._frame()

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        if tab == "grid":
            self.grid.focus()
        else:
            self.table.focus()

    def action_back(self) -> None:
        if isinstance(self.app, CompareApp):
            self.app.exit()
        else:
            self.dismiss(None)


class CompareApp(App[None]):
    """`dltui attach A B ...`: the compare view on its own."""

    CSS_PATH = "../dltui.tcss"
    TITLE = "dltui compare"
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(self, paths: Sequence[Path], ascii: bool = False) -> None:
        super().__init__()
        self.paths, self.ascii = list(paths), ascii
        self.ascii_mode = ascii  # panes read app.ascii_mode
        if ascii:
            self.add_class("-ascii")

    def on_mount(self) -> None:
        if self.ascii:  # as the dashboard does: plain scrollbar thumbs, put back on unmount
            self._scrollbar_renderer, ScrollBar.renderer = ScrollBar.renderer, AsciiScrollBarRender
        self.push_screen(CompareScreen(self.paths, ascii=self.ascii))

    def on_unmount(self) -> None:
        if self.ascii:
            ScrollBar.renderer = self._scrollbar_renderer


def run_compare(paths: Sequence[Path], ascii: bool = False) -> int:
    CompareApp(paths, ascii).run()
    return 0
