"""The Runs screen: every run in the runs dir, to pick one to open or several to compare.

Rows come from run/catalog.py (finished runs read once and cached, live ones re-read every
second in a worker thread, so the table updates in place without blocking keys).
Keys: Enter opens the run under the cursor; where runs can be compared, space marks runs and
`c` returns the marked ones; `/` filters by text (id, status, script, hparams); `s` cycles the sort column, `S` reverses it.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.widgets.data_table import CellDoesNotExist

from dltui.run.catalog import Catalog, RunRow
from dltui.run.status import RunStatus

from ..widgets.format import fmt_count, fmt_duration, fmt_num

REFRESH_S = 1.0
COLUMNS = ("", "run", "status", "progress", "best", "started", "duration", "hparams")
# (no script column: a run id ends with its script's name; the filter still searches the path)
WIDTHS = {  # every cell's text fits its column (hparams take the rest of the width)
    "": 1,
    "run": 28,
    "status": 10,
    "progress": 14,
    "best": 12,
    "started": 11,
    "duration": 8,
}
SORTS = {  # column name -> key (None sorts last)
    "started": lambda r: r.started or 0.0,
    "status": lambda r: r.status,
    "best": lambda r: r.best_value[1] if r.best_value else float("inf"),
    "duration": lambda r: r.duration or 0.0,
    "run": lambda r: r.id,
    "progress": lambda r: (r.step / r.total_steps) if r.total_steps else 0.0,
}


def progress_text(r: RunRow) -> str:
    if r.total_steps:
        return (
            f"{fmt_count(r.step)}/{fmt_count(r.total_steps)} {100 * r.step / r.total_steps:3.0f}%"
        )
    return fmt_count(r.step)


def best_text(r: RunRow) -> str:
    b = r.best_value
    return f"{b[0].removeprefix('val_')} {fmt_num(b[1])}" if b else "-"


def started_text(r: RunRow) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(r.started)) if r.started else "-"


def hparams_text(r: RunRow, limit: int = 40) -> str:
    s = " ".join(f"{k}={fmt_num(v) if isinstance(v, float) else v}" for k, v in r.hparams.items())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def status_cell(r: RunRow) -> Text:
    try:
        st = RunStatus.of(r.status)
    except ValueError:
        return Text(r.status)
    if r.status.startswith("unreadable"):
        return Text("UNREADABLE", style="bold white on red")
    return Text(st.label, style=st.style)


class RunsScreen(Screen[list[Path] | None]):
    """Dismisses with the runs to open: one (Enter), several (compare), or None (Esc)."""

    BINDINGS = [
        Binding("enter", "open", "Open", priority=True),  # shown: the table's own enter is not
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare marked"),
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("S", "reverse", "Reverse", show=False),
        Binding("escape", "back", "Back"),
    ]
    DEFAULT_CSS = """
    RunsScreen #runs-title { height: 1; padding: 0 1; background: $boost; }
    RunsScreen #runs-filter { height: 3; display: none; }
    RunsScreen #runs-filter.shown { display: block; }
    RunsScreen DataTable { height: 1fr; }
    """

    def __init__(self, runs_dir: Path, current: Path | None = None, compare: bool = False) -> None:
        """`compare`: runs may be marked and returned together (for a comparison view)."""
        super().__init__()
        self.compare = compare
        self.runs_dir = Path(runs_dir)
        self.catalog = Catalog(self.runs_dir)
        self.current = Path(current).resolve() if current else None
        self.rows: list[RunRow] = []
        self.marked: set[str] = set()
        self.filter_text = ""
        self.sort_by, self.descending = "started", True
        self._order: list[str] = []  # the run ids drawn, in order, and their cells
        self._cells: dict[str, tuple] = {}
        self._hp_width = 40

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(id="runs-title")
            yield Input(
                placeholder="filter: words in id, status, script, hparams", id="runs-filter"
            )
            yield DataTable(cursor_type="row", zebra_stripes=True, id="runs-table")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        # Fixed widths: a measured (auto) width costs a render of every cell of 1,000 runs.
        for name in COLUMNS:
            table.add_column(name, key=name, width=WIDTHS.get(name, 12))
        self.reload()
        self.set_interval(REFRESH_S, self.reload)
        table.focus()

    @work(thread=True, exclusive=True, group="runs-refresh")
    def reload(self) -> None:
        """Read new, changed and live runs off the UI thread, then redraw."""
        rows = self.catalog.refresh()
        self.app.call_from_thread(self.show_rows, rows)

    # -- drawing ---------------------------------------------------------------------------
    def visible(self) -> list[RunRow]:
        rows = [r for r in self.rows if r.matches(self.filter_text)]
        return sorted(rows, key=SORTS[self.sort_by], reverse=self.descending)

    def cells(self, r: RunRow) -> tuple[Text, ...]:
        """The row's cells as Text (a plain str would be parsed for markup when measured)."""
        mark = "✓" if r.id in self.marked else ("▶" if self._is_current(r) else "")
        words = (
            progress_text(r),
            best_text(r),
            started_text(r),
            fmt_duration(r.duration),
            hparams_text(r, self._hp_width),
        )
        return (Text(mark), Text(r.id), status_cell(r), *(Text(w) for w in words))

    def show_rows(self, rows: list[RunRow]) -> None:
        """Redraw: cells that changed are updated in place (a live run's progress); the table is
        rebuilt only when the runs shown or their order change."""
        self.rows = rows
        table = self.query_one(DataTable)
        shown = self.visible()
        rebuild = [r.id for r in shown] != self._order
        if rebuild:
            self._fit_columns(max((len(r.id) for r in shown), default=10))
        drawn = {r.id: self.cells(r) for r in shown}
        if not rebuild:
            for run_id, cells in drawn.items():
                old = self._cells.get(run_id)
                for col, (new, was) in enumerate(zip(cells, old or (), strict=False)):
                    if str(new) != str(was) or getattr(new, "style", None) != getattr(
                        was, "style", None
                    ):
                        table.update_cell(run_id, COLUMNS[col], new)
        else:
            keep = self.cursor_run()
            table.clear()
            for run_id, cells in drawn.items():
                table.add_row(*cells, key=run_id)
            if keep in drawn:
                table.move_cursor(row=table.get_row_index(keep))
        self._order, self._cells = list(drawn), drawn
        live = sum(r.live for r in rows)
        order = "↓" if self.descending else "↑"
        filt = f"  filter: {self.filter_text!r}" if self.filter_text else ""
        self.query_one("#runs-title", Static).update(
            f"Runs in {self.runs_dir}/  {len(shown)} of {len(rows)} shown, {live} live  "
            f"sorted by {self.sort_by} {order}  marked {len(self.marked)}{filt}"
        )

    def _fit_columns(self, id_width: int) -> None:
        """Run ids whole (however long the script's name); hparams take what width is left."""
        table = self.query_one(DataTable)
        cols = {str(k.value): c for k, c in table.columns.items()}
        cols["run"].width = id_width
        fixed = sum(c.width for k, c in cols.items() if k != "hparams")
        cols["hparams"].width = self._hp_width = max(
            12, self.size.width - fixed - 2 * len(cols) - 2
        )
        table.refresh()

    def _is_current(self, r: RunRow) -> bool:
        return self.current is not None and Path(r.path).resolve() == self.current

    def cursor_run(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        try:
            return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        except CellDoesNotExist:  # a just-cleared table has no cursor row
            return None

    def _path(self, run_id: str) -> Path:
        return next(Path(r.path) for r in self.rows if r.id == run_id)

    # -- actions ---------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("mark", "compare") and not self.compare:
            return False  # nothing here would show several runs at once
        return True

    def action_open(self) -> None:
        run_id = self.cursor_run()
        if run_id is not None:
            self.dismiss([self._path(run_id)])

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.dismiss([self._path(str(event.row_key.value))])

    def action_mark(self) -> None:
        run_id = self.cursor_run()
        if run_id is None:
            return
        self.marked ^= {run_id}
        self.show_rows(self.rows)
        table = self.query_one(DataTable)
        table.move_cursor(row=min(table.cursor_row + 1, table.row_count - 1))

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.notify("Mark two or more runs with space, then press c to compare them.")
            return
        ids = [r.id for r in sorted(self.rows, key=lambda r: r.started or 0) if r.id in self.marked]
        self.dismiss([self._path(i) for i in ids])

    def action_filter(self) -> None:
        box = self.query_one("#runs-filter", Input)
        box.add_class("shown")
        box.focus()

    @on(Input.Changed, "#runs-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.show_rows(self.rows)

    @on(Input.Submitted, "#runs-filter")
    def _filter_done(self, _event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def action_sort(self) -> None:
        names = list(SORTS)
        self.sort_by = names[(names.index(self.sort_by) + 1) % len(names)]
        self.show_rows(self.rows)

    def action_reverse(self) -> None:
        self.descending = not self.descending
        self.show_rows(self.rows)

    def action_back(self) -> None:
        box = self.query_one("#runs-filter", Input)
        if box.has_focus:  # Esc leaves the filter box first, keeping the filter
            if not self.filter_text:
                box.remove_class("shown")
            self.query_one(DataTable).focus()
            return
        self.dismiss(None)
