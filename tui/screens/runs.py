"""The Runs screen: every run in the runs dir, to pick one to open or several to compare.

Rows come from run/catalog.py (finished runs read once and cached, live ones re-read every
second in a worker thread, so the table updates in place without blocking keys).
Keys: Enter opens the run under the cursor; where runs can be compared, space marks runs and
`c` returns the marked ones; `/` filters by text (id, status, script, hparams); `s` cycles the sort column, `S` reverses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.widgets.data_table import CellDoesNotExist

from dltui.run.catalog import Catalog, RunRow
from dltui.run.status import RunStatus

from ..widgets.columns import Fit, fit_columns, keep_end, measure
from ..widgets.format import fmt_count, fmt_duration, fmt_num

REFRESH_S = 1.0
COLUMNS = ("", "run", "status", "progress", "best", "started", "duration", "hparams")
# (no script column: a run id ends with its script's name; the filter still searches the path)
# Too narrow for all (80 columns): these go first, whole; a run id already says when it started.
DROP_ORDER = ("started", "duration", "hparams", "best", "progress")
HPARAMS_MIN = 12  # hparams take the width left, at least this much, else the column goes
RUN_MIN = 16  # a run id shrinks (keeping its end, the script's name) only when nothing can go
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


def hparams_text(r: RunRow, limit: int | None = 40) -> str:
    """`lr=0.01 width=64`: as many whole name=value pairs as fit in `limit`, then `…` (a value
    is never cut in the middle)."""
    pairs = [f"{k}={fmt_num(v) if isinstance(v, float) else v}" for k, v in r.hparams.items()]
    s = " ".join(pairs)
    if limit is None or len(s) <= limit:
        return s
    out = ""
    for pair in pairs:
        if len(out) + len(pair) + 2 > limit:  # room for the pair, a space and the '…'
            break
        out += pair + " "
    return out + "…"


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
        # priority: handled as the key arrives, so the box has the focus before the keys typed
        # right after it ('/q…' in one burst must not reach the dashboard's quit below)
        Binding("slash", "filter", "Filter", priority=True),
        Binding("s", "sort", "Sort"),
        Binding("S", "reverse", "Reverse", show=False),
        Binding("escape", "back", "Back"),
    ]
    DEFAULT_CSS = """
    RunsScreen #runs-title { height: auto; padding: 0 1; background: $boost; }
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
        self._cells: dict[str, dict[str, Text]] = {}
        self._fit = Fit(())  # the columns shown and their widths
        self._fit_width = 0  # the width they were fitted to

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(id="runs-title")
            yield Input(
                placeholder="filter: words in id, status, script, hparams", id="runs-filter"
            )
            yield DataTable(cursor_type="row", zebra_stripes=True, id="runs-table")
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        self.set_interval(REFRESH_S, self.reload)
        self.query_one(DataTable).focus()

    def on_resize(self) -> None:
        if self.is_mounted and self._width() != self._fit_width:
            self.show_rows(self.rows)  # columns dropped or brought back to fit the new width

    @work(thread=True, exclusive=True, group="runs-refresh")
    def reload(self) -> None:
        """Read new, changed and live runs off the UI thread, then redraw."""
        rows = self.catalog.refresh()
        self.app.call_from_thread(self.show_rows, rows)

    # -- drawing ---------------------------------------------------------------------------
    def visible(self) -> list[RunRow]:
        rows = [r for r in self.rows if r.matches(self.filter_text)]
        return sorted(rows, key=SORTS[self.sort_by], reverse=self.descending)

    def cells(self, r: RunRow) -> dict[str, Text]:
        """The row's cells by column, whole, as Text (a plain str would be parsed for markup
        when measured)."""
        mark = "✓" if r.id in self.marked else ("▶" if self._is_current(r) else "")
        words = (
            progress_text(r),
            best_text(r),
            started_text(r),
            fmt_duration(r.duration),
            hparams_text(r, None),
        )
        cells = (Text(mark), Text(r.id), status_cell(r), *map(Text, words))
        return dict(zip(COLUMNS, cells, strict=True))

    def fitted(self, r: RunRow, cells: dict[str, Text], fit: Fit) -> dict[str, Text]:
        """The cells as shown in `fit`'s widths: hparams as many as fit, a shrunk run id's end."""
        room = dict(fit.widths).get("hparams")
        if room is not None and cells["hparams"].cell_len > room:
            cells = {**cells, "hparams": Text(hparams_text(r, room))}
        if fit.shrunk is not None:
            cells = {**cells, "run": Text(keep_end(r.id, fit.shrunk))}
        return cells

    def fit(self, whole: Iterable[dict[str, Text]]) -> Fit:
        """The columns that fit the screen's width whole (tui/widgets/columns.py)."""
        width = self._fit_width = self._width()
        natural = measure({c: max(1, len(c)) for c in COLUMNS}, whole)
        return fit_columns(
            natural,
            width,
            DROP_ORDER,
            shrink="run",
            shrink_min=RUN_MIN,
            flex="hparams",
            flex_min=HPARAMS_MIN,
        )

    def _width(self) -> int:
        return self.query_one(DataTable).size.width or self.size.width

    def show_rows(self, rows: list[RunRow]) -> None:
        """Redraw: cells that changed are updated in place (a live run's progress); the table is
        rebuilt only when the runs shown, their order or the columns that fit change."""
        self.rows = rows
        table = self.query_one(DataTable)
        shown = self.visible()
        whole = [self.cells(r) for r in shown]
        fit = self.fit(whole)
        drawn = {r.id: self.fitted(r, c, fit) for r, c in zip(shown, whole, strict=True)}
        keep = self.cursor_run()
        if fit != self._fit:
            self._fit = fit
            table.clear(columns=True)
            for key, width in fit.widths:
                table.add_column(key, key=key, width=width)
            self._order = []  # rows again, below
        if [r.id for r in shown] == self._order:
            for run_id, cells in drawn.items():
                old = self._cells.get(run_id, {})
                for key in fit.keys:
                    new, was = cells[key], old.get(key)
                    if was is None or new.plain != was.plain or new.style != was.style:
                        table.update_cell(run_id, key, new)
        else:
            table.clear()
            for run_id, cells in drawn.items():
                table.add_row(*(cells[k] for k in fit.keys), key=run_id)
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
        if self.focused is box:
            raise SkipAction()  # a '/' typed in the box is part of the text (a script's path)
        box.add_class("shown")
        self.set_focus(box)  # now, not after the keys already queued

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
