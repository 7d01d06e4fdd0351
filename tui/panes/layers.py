"""Layers tab: a sortable table of per-parameter statistics with anomalies flagged, and the selected
parameter's gradient-norm history and weight/gradient histograms beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from dltui.run import wire
from dltui.run.client import ControlClient

from ..widgets.columns import fit_columns, keep_end, measure
from ..widgets.format import fmt_count, fmt_num
from ..widgets.pane_base import PollingPane
from ..widgets.pane_histogram import PaneHistogram
from ..widgets.pane_sparkline import PaneSparkline
from .layer_steps import LayerSteps

# (column key, header); the key is also the sort key into a row's values.
COLUMNS = (
    ("flag", "!"),
    ("name", "name"),
    ("shape", "shape"),
    ("numel", "params"),
    ("w_norm", "w norm"),
    ("g_norm", "grad norm"),
    ("gw", "grad/w"),
    ("update_ratio", "upd ratio"),
    ("zero_frac", "grad=0 %"),
    ("nonfinite", "non-fin"),
)
SORTABLE = [key for key, _ in COLUMNS]
# When the table is too narrow for every column, these go first (numbers are never cut).
DROP_ORDER = ("shape", "gw", "nonfinite", "numel", "zero_frac", "w_norm")
NAME_MIN = 12  # below this the name column keeps the end of a long name: …layer3.0.conv1.weight
# The update/weight ratio is healthy around 1e-3 (Karpathy's rule of thumb); flag two decades off.
RATIO_HIGH, RATIO_LOW = 1e-1, 1e-5
HISTORY = 200  # points of gradient-norm history for the sparkline

# Marker characters make anomalies visible without colour; ascii mode has its own set.
MARKS = {"nonfinite": ("✖", "X"), "spike": ("↯", "!"), "high": ("▲", "^"), "low": ("▼", "v")}
SEVERITY = {"nonfinite": "bold red", "spike": "bold red", "high": "yellow", "low": "yellow"}


def anomalies(row: dict[str, Any]) -> list[str]:
    """The anomaly kinds of one row: nonfinite, spike, high / low update ratio."""
    out = []
    if (row.get("nonfinite") or 0) > 0:
        out.append("nonfinite")
    if row.get("spike"):
        out.append("spike")
    ur = row.get("update_ratio")
    if ur is not None and row.get("trainable", True):
        if ur > RATIO_HIGH:
            out.append("high")
        elif ur < RATIO_LOW:
            out.append("low")
    return out


class LayersPane(PollingPane):
    """Per-parameter statistics table (left) and the selected parameter's history (right)."""

    BINDINGS = [
        Binding("s", "sort_next", "Sort by next", id="layers.sort"),
        Binding("S", "sort_reverse", "Reverse sort", id="layers.reverse"),
        # Scrubbing through the recorded stats steps, out of the footer (the step line above
        # the table names them). home/end are priority bindings: the focused table would take
        # them for horizontal scrolling.
        *(
            Binding(
                key, f"scrub({n})", what, False, key_display=shown, tooltip=tip, id=f"layers.{i}"
            )
            for key, n, what, shown, tip, i in (
                ("comma", -1, "Step back", ",", "Stats one recorded step earlier", "back"),
                ("full_stop", 1, "Step on", ".", "Stats one recorded step later", "on"),
                ("less_than_sign", -10, "Back 10", "<", "Ten recorded steps earlier", "back10"),
                ("greater_than_sign", 10, "On 10", ">", "Ten recorded steps later", "on10"),
            )
        ),
        Binding(
            "home",
            "scrub_to('first')",
            "First",
            show=False,
            tooltip="Stats of the first recorded step",
            priority=True,
            id="layers.first",
        ),
        Binding(
            "end",
            "scrub_to('latest')",
            "Latest",
            show=False,
            tooltip="Stats of the latest step, following a live run again",
            priority=True,
            id="layers.latest",
        ),
    ]
    DEFAULT_CSS = """
    LayersPane { height: 1fr; }
    LayersPane #layers-body { height: 1fr; }
    LayersPane #layers-table { width: 1fr; height: 1fr; }
    LayersPane #layers-step { height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    LayersPane #layers-side { width: 30; height: 1fr; padding: 0 0 0 1; }
    LayersPane #layers-title { height: auto; max-height: 2; text-style: bold; }
    LayersPane #layers-legend { height: 1; color: $text-muted; text-wrap: nowrap; }
    LayersPane.-narrow #layers-side { display: none; }
    """

    class Detail(Message):
        """The selected parameter's history and histograms, read in a worker thread."""

        bubble = False

        def __init__(self, data: dict[str, Any]) -> None:
            super().__init__()
            self.data = data

    def __init__(self, run_dir: Path, client: ControlClient | None, **kwargs: Any) -> None:
        super().__init__(run_dir, client, **kwargs)
        self.rows: dict[str, dict[str, Any]] = {}  # param name -> values, in model order
        self.step: int | None = None  # the stats step shown
        self.last_step: int | None = None  # the newest recorded one
        self.steps = LayerSteps()  # the shown step: the newest, or where , . < > Home moved
        self.spikes: set[str] = set()
        self._spikes_at: dict[int, set[str]] = {}  # stats step -> layers the engine's alerts name
        self._alert_id = 0  # the engine's alert events read so far
        self._columns: tuple[str, ...] = tuple(k for k, _ in COLUMNS)
        self._layout: tuple[tuple[str, int], ...] = ()
        self.sort_col: str | None = None  # None: model order
        self.sort_rev = False
        self.selected: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="layers-step")
        with Horizontal(id="layers-body"):
            table: DataTable = DataTable(id="layers-table", cursor_type="row", zebra_stripes=True)
            yield table
            with Vertical(id="layers-side"):
                yield Static("", id="layers-title")
                yield PaneSparkline("grad norm", id="layers-spark")
                yield PaneHistogram("weight", style="green", id="layers-hist-w")
                yield PaneHistogram("grad", style="magenta", id="layers-hist-g")
        yield Static(self._legend(), id="layers-legend")

    def _legend(self, width: int = 200) -> Text:
        """The marks, what `grad=0 %` counts, and the keys; shorter wordings when narrow."""
        a = int(self.ascii_mode)
        for words in (
            (
                "non-finite",
                "grad spike (engine alert)",
                f"update ratio >{RATIO_HIGH:g} / <{RATIO_LOW:g}",
                "grad=0 %: share of gradient entries exactly 0",
                "s/S sort",
            ),
            (
                "non-finite",
                "grad spike",
                f"upd ratio >{RATIO_HIGH:g}/<{RATIO_LOW:g}",
                "grad=0 %: zero grad entries",
                "s/S sort",
            ),
            ("non-finite", "spike", "upd ratio", "s/S sort"),
        ):
            out = Text(no_wrap=True)
            for kind, why in zip(("nonfinite", "spike", "high"), words, strict=False):
                marks = MARKS[kind][a] + (MARKS["low"][a] if kind == "high" else "")
                out.append(marks, style=SEVERITY[kind])
                out.append(f" {why}  ")
            out.append("  ".join(words[3:]))
            if out.cell_len <= width:
                return out
        return out

    def on_resize(self) -> None:
        self.query_one("#layers-legend", Static).update(self._legend(self.size.width))
        self.query_one("#layers-step", Static).update(self._step_line())
        if self.rows:
            self._rebuild(self.query_one(DataTable))

    # -- data (worker thread) ------------------------------------------------------------------
    def data_key(self, snap: Any) -> object:
        """New layer stats, or a new event (the engine's spike alerts come as events)."""
        return (snap.layer_step, snap.event_id)

    def fetch(self) -> Any:
        r = self.reader()
        if r is None:
            return None
        params = r.params()
        first, last = r.layer_stat_bounds()
        step = self.steps.resolve(r, first, last)
        stats = {} if step is None else r.layer_stats_at(step)
        # A spike is what the engine's probe says it is (one definition): its gradient-norm
        # alerts name the layer and the stats step. Read each alert once, as it arrives.
        while True:
            alerts = r.events(after_id=self._alert_id, kind=wire.EV_ALERT, limit=500)
            for ev in alerts:
                data = ev["data"] if isinstance(ev["data"], dict) else {}
                if data.get("layer") and "g_norm" in data and ev["step"] is not None:
                    self._spikes_at.setdefault(int(ev["step"]), set()).add(str(data["layer"]))
            if alerts:
                self._alert_id = alerts[-1]["id"]
            if len(alerts) < 500:
                break
        spikes = self._spikes_at.get(step, set()) if step is not None else set()
        detail = self._detail(r, self.selected, step) if self.selected else None
        return {
            "params": params,
            "step": step,
            "last": last,
            "stats": stats,
            "spikes": spikes,
            "detail": detail,
        }

    @staticmethod
    def _detail(r: Any, name: str, step: int | None) -> dict[str, Any]:
        """The parameter's gradient-norm history up to the shown step, and its histograms
        as of that step (recorded at a lower rate: the newest at or before it)."""
        return {
            "name": name,
            "step": step,
            "history": r.layer_stat_history(name, "g_norm", HISTORY, until=step),
            "weight": r.histogram_at(name, "weight", step),
            "grad": r.histogram_at(name, "grad", step),
        }

    @work(thread=True, exclusive=True, group="detail")
    def fetch_detail(self, name: str) -> None:
        r = self.reader()
        if r is not None:
            self.post_message(self.Detail(self._detail(r, name, self.step)))

    # -- scrubbing (UI thread asks, the fetch worker resolves) -----------------------------------
    def action_scrub(self, records: int) -> None:
        self.steps.move(records)
        self._scrub_fetch()

    def action_scrub_to(self, where: str) -> None:
        self.steps.jump(where)
        self._scrub_fetch()

    @property
    def pinned(self) -> int | None:
        """The step the user moved to; None while following the newest."""
        return self.steps.pinned

    @work(thread=True, group="scrub")
    def _scrub_fetch(self) -> None:
        """A fetch now, even on a finished run whose data key never moves; after the running
        one, if any (one reader, one fetch at a time)."""
        if not self._busy.acquire(timeout=5.0):
            return
        try:
            data = self.fetch()
        except Exception as e:  # a locked store: the poller's next frame tries again
            data = e
        finally:
            self._busy.release()
        if data is not None:
            self.post_message(self.Fetched(data))

    def _step_line(self) -> Text:
        return self.steps.line(self.step, self.last_step, self.size.width or 200)

    # -- table (UI thread) ---------------------------------------------------------------------
    def show(self, data: dict[str, Any]) -> None:
        self.step, self.last_step, self.spikes = data["step"], data["last"], data["spikes"]
        self.query_one("#layers-step", Static).update(self._step_line())
        rows: dict[str, dict[str, Any]] = {}
        for order, p in enumerate(data["params"]):
            s = data["stats"].get(p["name"], {})
            w, g = s.get("w_norm"), s.get("g_norm")
            rows[p["name"]] = {
                **s,
                "order": order,
                "name": p["name"],
                "shape": p["shape"],
                "numel": p["numel"],
                "trainable": p["trainable"],
                "gw": g / w if g is not None and w else None,
                "spike": p["name"] in self.spikes,
            }
        same_rows = list(rows) == list(self.rows)
        self.rows = rows
        table = self.query_one(DataTable)
        if same_rows and table.row_count:
            self._update_cells(table)
        else:
            self._rebuild(table)
        if self.selected is None and rows:
            self.selected = self._ordered()[0]
            self.fetch_detail(self.selected)
        if data.get("detail"):
            self._show_detail(data["detail"])

    def _cells(self, row: dict[str, Any]) -> dict[str, Text]:
        kinds = anomalies(row)
        a = int(self.ascii_mode)
        flag = Text()
        for kind in kinds:
            flag.append(MARKS[kind][a], style=SEVERITY[kind])
        worst = SEVERITY[kinds[0]] if kinds else ""

        def num(text: str, bad: bool = False) -> Text:
            return Text(text, style=worst if bad else "", justify="right")

        ur = row.get("update_ratio")
        zf = row.get("zero_frac")
        cells = [
            flag,
            Text(self._name_shown(row["name"]), style=worst),
            Text("×".join(map(str, row["shape"])) if not a else "x".join(map(str, row["shape"]))),
            num(fmt_count(row["numel"])),
            num(fmt_num(row.get("w_norm"))),
            num(fmt_num(row.get("g_norm")), "spike" in kinds),
            num(fmt_num(row.get("gw"))),
            num(fmt_num(ur), "high" in kinds or "low" in kinds),
            num("-" if zf is None else f"{100 * zf:.1f}"),
            num(fmt_count(row.get("nonfinite")), "nonfinite" in kinds),
        ]
        return {key: cell for (key, _), cell in zip(COLUMNS, cells, strict=True)}

    def _name_shown(self, name: str) -> str:
        """The name, or its end after a '…' when the name column had to shrink."""
        return keep_end(name, getattr(self, "_name_width", None), self.ascii_mode)

    def _fit(self, table: DataTable) -> tuple[str, ...]:
        """The columns that fit the table's width whole, dropping by DROP_ORDER; the name
        column shrinks (keeping the end of each name) only when nothing else can go."""
        headers = {key: len(label) + 2 for key, label in COLUMNS}  # room for the sort arrow
        cells = ({**self._cells(row), "name": row["name"]} for row in self.rows.values())
        # Explicit widths: DataTable's own auto widths could stay at a header's width when rows
        # arrived while the tab was hidden, cutting names and numbers.
        fit = fit_columns(
            measure(headers, cells),
            table.size.width,
            DROP_ORDER,
            shrink="name",
            shrink_min=NAME_MIN,
        )
        self._name_width = fit.shrunk
        return fit.widths

    def _sort_key(self, name: str) -> tuple:
        row = self.rows[name]
        col = self.sort_col or "order"
        if col == "flag":
            value: Any = len(anomalies(row))
        elif col == "shape":
            value = tuple(row["shape"])
        else:
            value = row.get(col)
        # Missing values sort last whichever way the sort goes.
        missing = value is None
        return (missing != self.sort_rev, value if not missing else 0)

    def _ordered(self) -> list[str]:
        return sorted(self.rows, key=self._sort_key, reverse=self.sort_rev)

    def _header(self, key: str, label: str) -> Text:
        if key == self.sort_col:
            a = int(self.ascii_mode)
            return Text(
                label + " " + (("▼", "v") if self.sort_rev else ("▲", "^"))[a], style="bold"
            )
        return Text(label + "  ")  # same width as with an arrow: columns don't jump when sorting

    def _rebuild(self, table: DataTable) -> None:
        """Columns (with the sort arrow) and rows from scratch; keeps the cursor on its row."""
        table.clear(columns=True)
        self._layout = self._fit(table)
        self._columns = tuple(k for k, _ in self._layout)
        labels = dict(COLUMNS)
        for key, w in self._layout:
            table.add_column(self._header(key, labels[key]), key=key, width=w)
        for name in self._ordered():
            cells = self._cells(self.rows[name])
            table.add_row(*(cells[k] for k in self._columns), key=name)
        self._restore_cursor(table)

    def _update_cells(self, table: DataTable) -> None:
        if self._fit(table) != self._layout:  # new values need other widths: columns change
            self._rebuild(table)
            return
        for name, row in self.rows.items():
            cells = self._cells(row)
            for key in self._columns:
                if table.get_cell(name, key) != cells[key]:
                    table.update_cell(name, key, cells[key])
        if self.sort_col is not None:
            # New values may change the order; the cursor follows its row (below).
            rank = {name: i for i, name in enumerate(self._ordered())}
            shown = {self._name_shown(name): name for name in self.rows}
            table.sort("name", key=lambda cell: rank[shown[cell.plain]])
        self._restore_cursor(table)

    def _restore_cursor(self, table: DataTable) -> None:
        if self.selected in self.rows:
            index = table.get_row_index(self.selected)
            if table.cursor_row != index:
                table.move_cursor(row=index, animate=False)

    # -- sorting (UI thread) -------------------------------------------------------------------
    def sort_by(self, column: str | None, reverse: bool | None = None) -> None:
        """Sort by `column` (None: model order); numbers sort largest first by default."""
        if reverse is None:
            reverse = column not in (None, "name", "shape")
        self.sort_col, self.sort_rev = column, reverse
        if self.rows:
            self._rebuild(self.query_one(DataTable))

    @on(DataTable.HeaderSelected, "#layers-table")
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        col = event.column_key.value
        if col == self.sort_col:
            self.sort_by(col, not self.sort_rev)  # clicking the sorted column flips it
        else:
            self.sort_by(col)

    def action_sort_next(self) -> None:
        cycle = [None, *SORTABLE]
        self.sort_by(cycle[(cycle.index(self.sort_col) + 1) % len(cycle)])

    def action_sort_reverse(self) -> None:
        self.sort_by(self.sort_col, not self.sort_rev)

    # -- selected parameter (UI thread) --------------------------------------------------------
    @on(DataTable.RowHighlighted, "#layers-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        name = event.row_key.value
        if name and name != self.selected:
            self.selected = name
            self.fetch_detail(name)

    def on_layers_pane_detail(self, message: Detail) -> None:
        message.stop()
        self._show_detail(message.data)

    def _show_detail(self, d: dict[str, Any]) -> None:
        if d["name"] != self.selected or d["step"] != self.step:
            return  # read for another row or another step: a newer read is on its way
        row = self.rows.get(d["name"], {})
        title = Text(d["name"], style="bold")
        if self.step is not None:
            title.append(f"  step {self.step}", style="dim")
        for kind in anomalies(row):
            title.append(" " + MARKS[kind][int(self.ascii_mode)], style=SEVERITY[kind])
        self.query_one("#layers-title", Static).update(title)
        self.query_one(PaneSparkline).set_values([v for _, v in d["history"]])
        self.query_one("#layers-hist-w", PaneHistogram).set_histogram(d["weight"])
        self.query_one("#layers-hist-g", PaneHistogram).set_histogram(d["grad"])
