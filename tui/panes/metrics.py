"""The Metrics tab: every recorded scalar as a small chart, paged, filtered by name, any one full size.

It shows one run (the dashboard's tab: train and validation colours as on the Overview) or
several (the compare view's tab: each chart overlays the runs, one colour and glyph per run).
Like the other panes it fetches only when the store's scalar counter moved, on a thread, and
only the charts of the page on screen, each downsampled to its own width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import events, on
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.widgets import Input, Static

from dltui.run.client import ControlClient
from dltui.run.reader import Series

from ..multirun import Readers, RunSource, chart_title, first_wall, legend_labels, run_trace
from ..widgets.pane_base import PollingPane
from ..widgets.plot import Plot

CHART_W, CHART_H = 38, 8  # the smallest chart that still reads: legend, 5 rows, x labels


@dataclass
class GridData:
    """One fetch: the names the filter kept, the page shown, and each chart's series per run."""

    total: int  # scalars recorded
    keys: list[tuple[str, str]]  # the filter's matches
    asked: int  # the page asked for
    page: int  # the page shown: the one asked for, or the last one if there are fewer now
    shown: list[tuple[str, str]]
    series: dict[tuple[str, str], list[Series | None]]  # per source, in order
    t0s: list[float | None]


def matches(key: tuple[str, str], text: str) -> bool:
    hay = chart_title(*key).lower()
    return all(w in hay for w in text.lower().split())


class MetricsPane(PollingPane, can_focus=True):
    """A grid of small charts, one per recorded scalar; Enter or a click opens one full size."""

    BINDINGS = [
        Binding("pagedown", "page(1)", "Next page", id="metrics.next_page"),
        Binding("pageup", "page(-1)", "Prev page", id="metrics.prev_page"),
        # priority: handled as the key arrives, so the box has the focus before the keys typed
        # right after it ('/unit_05' in one burst must not switch to tab 5)
        Binding(
            "slash",
            "filter",
            "Filter",
            tooltip="Filter the charts by name",
            id="metrics.filter",
            priority=True,
        ),
        Binding(
            "enter",
            "open",
            "Open",
            key_display="enter",  # a word, not a glyph: --ascii terminals draw the footer too
            tooltip="The selected chart full size",
            id="metrics.open",
        ),
        Binding(
            "escape",
            "back",
            "Back",
            tooltip="Close the full-size chart, or clear the filter",
            id="metrics.back",
        ),
        Binding("x", "toggle_x", "X", tooltip="x axis: step or elapsed time", id="metrics.x_axis"),
        *(
            Binding(
                key,
                f"select({dx}, {dy})",
                "Select",
                show=False,
                tooltip=f"Select {where}",
                id=f"metrics.select_{key}",
            )
            for key, dx, dy, where in (
                ("left", -1, 0, "the chart on the left"),
                ("right", 1, 0, "the chart on the right"),
                ("up", 0, -1, "the chart above"),
                ("down", 0, 1, "the chart below"),
            )
        ),
    ]
    SCOPED_CSS = False  # every rule names MetricsPane; the --ascii one starts at App.-ascii
    DEFAULT_CSS = """
    MetricsPane { layout: vertical; }
    MetricsPane #metrics-status { height: 1; color: $text-muted; text-wrap: nowrap; }
    MetricsPane #metrics-filter { height: 3; display: none; }
    MetricsPane #metrics-filter.shown { display: block; }
    MetricsPane #metrics-grid { height: 1fr; grid-gutter: 0; }
    MetricsPane #metrics-grid Plot { height: 1fr; }
    MetricsPane #metrics-zoom { display: none; height: 1fr; }
    MetricsPane.-zoomed #metrics-grid { display: none; }
    MetricsPane.-zoomed #metrics-zoom { display: block; }
    MetricsPane Plot.-selected { border: heavy $accent; }
    App.-ascii MetricsPane Plot.-selected { border: ascii $accent; }
    """

    def __init__(
        self,
        run_dir: Path,
        client: ControlClient | None,
        sources: Sequence[RunSource] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(run_dir, client, **kwargs)
        self.sources = list(sources or [RunSource(Path(run_dir))])
        self.readers = Readers([s.path for s in self.sources])
        self.filter_text = ""
        self.page = 0
        self.cols, self.rows = 1, 1
        self.selected = 0  # index on the page
        self.zoomed: tuple[str, str] | None = None
        self.x_time = False
        self.data: GridData | None = None
        # Kept, not queried: the clock may tick while the app is tearing the tree down.
        self.status = Static(id="metrics-status")
        self.box = Input(placeholder="filter: words in the scalar's name", id="metrics-filter")
        self.grid = Grid(id="metrics-grid")
        self.zoom = Plot(ascii=self.ascii_mode, id="metrics-zoom", classes="panel")

    @property
    def page_size(self) -> int:
        return self.cols * self.rows

    def compose(self) -> ComposeResult:
        yield self.status
        yield self.box
        yield self.grid
        yield self.zoom

    def on_resize(self) -> None:
        cols = max(1, self.size.width // CHART_W)
        rows = max(1, (self.size.height - 1) // CHART_H)
        if (cols, rows) != (self.cols, self.rows) or not self.plots():
            first = self.page * self.page_size  # keep the first chart shown on the page
            self.cols, self.rows = cols, rows
            self.page = first // self.page_size
            self._layout_grid()
            self.refetch()

    def _layout_grid(self) -> None:
        grid = self.grid
        grid.styles.grid_size_columns, grid.styles.grid_size_rows = self.cols, self.rows
        plots = self.plots()
        if len(plots) > self.page_size:
            for p in plots[self.page_size :]:
                p.remove()
        elif len(plots) < self.page_size:
            grid.mount_all(
                Plot(ascii=self.ascii_mode, classes="panel")
                for _ in range(self.page_size - len(plots))
            )
        self.selected = min(self.selected, self.page_size - 1)

    def plots(self) -> list[Plot]:
        return [p for p in self.grid.children if isinstance(p, Plot)]

    def refetch(self) -> None:
        """Read now (a key changed what is shown), or at the next frame if a read is running."""
        self._fetched_at = 0.0
        if self.snapshot is not None:
            self.frame(self.snapshot)

    # -- the data path ---------------------------------------------------------------------
    def data_key(self, snap: Any) -> object:
        plots = self.plots()
        buckets = (self.zoom if self.zoomed or not plots else plots[0]).plot_buckets()
        return (
            snap.scalars_seen,
            self.filter_text,
            self.page,
            self.page_size,
            self.zoomed,
            buckets,
        )

    def fetch(self) -> GridData:
        # the key frame() took for this fetch, on the UI thread (no widget is read from here)
        _, text, page, size, zoomed, buckets = self._key
        names = self.readers.names()
        keys = [k for k in names if matches(k, text)]
        pages = max(1, -(-len(keys) // size))
        asked, page = page, min(page, pages - 1)
        shown = [zoomed] if zoomed else keys[page * size : (page + 1) * size]
        series: dict[tuple[str, str], list[Series | None]] = {}
        t0s = []
        for src in self.sources:
            r = self.readers.get(src.path)
            t0s.append(first_wall(r) if r else None)
        for k in shown:
            series[k] = []
            for src in self.sources:
                r = self.readers.get(src.path)
                series[k].append(r.series(k[0], k[1], buckets) if r else None)
        return GridData(len(names), keys, asked, page, shown, series, t0s)

    def on_unmount(self) -> None:
        if self._busy.acquire(timeout=1.0):
            try:
                self.readers.close()
            finally:
                self._busy.release()

    def show(self, data: GridData) -> None:
        self.data = data
        if data.asked == self.page:  # a page key pressed while this was read is not undone
            self.page = data.page
        if self.zoomed:
            self._draw(self.zoom, self.zoomed)
        else:
            for i, plot in enumerate(self.plots()):
                key = data.shown[i] if i < len(data.shown) else None
                plot.set_class(i == self.selected and key is not None, "-selected")
                plot.styles.visibility = "visible" if key else "hidden"  # the last page's rest
                self._draw(plot, key)
        self._status()

    def _draw(self, plot: Plot, key: tuple[str, str] | None) -> None:
        data = self.data
        if key is None or data is None:
            plot.border_title = ""
            plot.empty_text = ""
            plot.set_data([], [])
            return
        labels = legend_labels(self.sources, plot.size.width)
        traces = [
            run_trace(s, src, key[1], t0, label)
            for s, src, t0, label in zip(
                data.series.get(key, ()), self.sources, data.t0s, labels, strict=False
            )
            if s is not None and len(s)
        ]
        title = chart_title(*key)
        if plot.has_class("-selected"):  # said in words too: a border colour needs colour
            title = ("> " if self.ascii_mode else "▶ ") + title
        if plot.border_title != title:
            plot.border_title = title
        plot.empty_text = "nothing recorded"
        plot.set_options(smoothing=0.0, log_y=False, x_time=self.x_time, t0=0.0)
        plot.set_data(traces, [])

    def _status(self) -> None:
        data = self.data
        if data is None:
            return
        n = len(data.keys)
        pages = max(1, -(-n // self.page_size))
        filt = f"  filter: {self.filter_text!r}" if self.filter_text else ""
        if self.zoomed:
            text = f"{chart_title(*self.zoomed)}  (Esc: back to the grid){filt}"
        elif not n:
            text = f"no scalar matches {self.filter_text!r} (Esc clears)" if filt else "no scalars"
        else:
            first = data.page * self.page_size
            text = (
                f"scalars {first + 1}-{min(n, first + self.page_size)} of {n}"
                + (f" (of {data.total})" if n != data.total else "")
                + f"  page {data.page + 1}/{pages}  pgup/pgdn  / filter  enter open{filt}"
            )
        self.status.update(text)

    # -- keys ------------------------------------------------------------------------------
    def action_page(self, move: int) -> None:
        n = len(self.data.keys) if self.data else 0
        pages = max(1, -(-n // self.page_size))
        new = min(pages - 1, max(0, self.page + move))
        if new != self.page and not self.zoomed:
            self.page = new
            self.refetch()

    def action_select(self, dx: int, dy: int) -> None:
        if self.zoomed or self.data is None or not self.data.shown:
            return
        i = self.selected + dx + dy * self.cols
        self.selected = min(len(self.data.shown) - 1, max(0, i))
        self.show(self.data)

    def action_open(self, index: int | None = None) -> None:
        if self.zoomed or self.data is None:
            return
        i = self.selected if index is None else index
        if i < len(self.data.shown):
            self.selected = i
            self.zoomed = self.data.shown[i]
            self.add_class("-zoomed")
            self._status()
            self.call_after_refresh(self.refetch)  # the full-size plot's width, once laid out

    def action_back(self) -> None:
        box = self.box
        if self.zoomed:
            self.zoomed = None
            self.remove_class("-zoomed")
            self.refetch()
        elif box.has_class("shown") or self.filter_text:
            box.value = ""
            box.remove_class("shown")
            self.focus()
        else:
            raise SkipAction()  # nothing to close here: Esc is the screen's (the compare view's back)

    def action_filter(self) -> None:
        if self.screen.focused is self.box:
            raise SkipAction()  # a '/' typed in the box is part of the name (unit_00/mean)
        self.box.add_class("shown")
        self.screen.set_focus(self.box)  # now, not after the keys already queued

    @on(Input.Changed, "#metrics-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.value != self.filter_text:
            self.filter_text, self.page, self.selected = event.value, 0, 0
            self.refetch()

    @on(Input.Submitted, "#metrics-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.focus()

    def action_toggle_x(self) -> None:
        self.x_time = not self.x_time
        self.notify(f"x axis: {'elapsed time' if self.x_time else 'step'}", timeout=2)
        if self.data is not None:
            self.show(self.data)

    def on_click(self, event: events.Click) -> None:
        """A click on a small chart opens it full size."""
        plots = self.plots()
        node = event.widget
        while node is not None and node is not self:
            if node in plots:
                self.action_open(plots.index(node))
                return
            node = node.parent


class CompareMetricsPane(MetricsPane):
    """The compare view's grid: no run to steer there, so n and p page too."""

    BINDINGS = [
        Binding("n", "page(1)", "Next page", show=False, id="compare.next_page"),
        Binding("p", "page(-1)", "Prev page", show=False, id="compare.prev_page"),
    ]

    def action_toggle_x(self) -> None:
        self.screen.action_toggle_x()  # the compare view's x: its curves and this grid together
