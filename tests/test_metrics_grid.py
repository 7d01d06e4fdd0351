"""The Metrics tab (issue 12, item 7): every recorded scalar as a small chart, paged, filtered by
name, one opened full size. The run is a real engine run of tests/scripts/many_scalars.py, a
script logging 32 scalars a step through dltui.log (one engine for the module); the compare
grid's second run is a store written with the engine's RunStore."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import run_cli
from screen import screen_text
from test_panes import PaneApp, sync, until
from textual import events
from textual.widgets import Input, TabbedContent

from dltui.engine.store import RunStore
from dltui.run import wire
from dltui.run.reader import RunReader
from dltui.tui.app import make_app
from dltui.tui.multirun import chart_title, run_sources
from dltui.tui.panes.metrics import MetricsPane
from dltui.tui.screens.compare import CompareApp, CompareScreen
from dltui.tui.screens.dialogs import HelpScreen
from dltui.tui.widgets.plot import Plot

SCRIPT = Path(__file__).resolve().parent / "scripts" / "many_scalars.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """A finished script run (30 steps, 40+ scalars) by a real engine, and a second run of 20
    steps with some of the same names, written with the engine's RunStore (one torch start)."""
    root = tmp_path_factory.mktemp("metrics")
    done = run_cli("train", "--headless", "--runs-dir", root / "runs", SCRIPT, "30", cwd=root)
    assert done.returncode == 0, done.stderr
    (first,) = (root / "runs").iterdir()
    other = root / "runs" / "20990101-000000-other"
    other.mkdir()
    st = RunStore(other / "run.sqlite")
    st.start()
    for step in range(1, 21):
        values = {"loss": 3.0 / step, "unit_00/mean": 0.01 * step, "extra/1": float(step)}
        st.scalars(step, 0, wire.TRAIN, 1000.0 + step, values)
    st.set_meta(started=1000.0, progress={"step": 20})
    st.close(wire.FINISHED)
    return [first, other]


def scalars_of(run_dir: Path) -> list[tuple[str, str]]:
    with RunReader(run_dir) as r:
        return r.series_names()


def grid_titles(pane: MetricsPane) -> list[str]:
    return [p.border_title for p in pane.plots() if p.styles.visibility != "hidden"]


class SlowMetricsPane(MetricsPane):
    """A pane whose reads take 0.5 s (a slow disk, a loaded machine)."""

    def fetch(self):
        time.sleep(0.5)
        return super().fetch()


@sync
async def test_a_page_key_pressed_during_a_read_is_kept(runs):
    """Page keys pressed while a read is under way are not undone when it lands (CI lost a
    pagedown this way on a loaded machine): the pane goes on to the page asked for last."""
    names = scalars_of(runs[0])
    app = PaneApp(lambda: SlowMetricsPane(runs[0], None, classes="pane"))
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(MetricsPane)
        await until(pilot, lambda: pane.data is not None and grid_titles(pane), what="charts")
        assert len(names) > 2 * pane.page_size  # three pages at least
        await pilot.press("pagedown")  # a read of page 2 starts
        await pilot.pause(0.1)
        assert pane._busy.locked()
        await pilot.press("pagedown")  # page 3, asked for while page 2 is read
        await until(pilot, lambda: pane.data.page == 2, what="page 3")
        await pilot.pause(0.7)  # no later read takes it back
        assert pane.page == pane.data.page == 2
        assert "page 3/" in screen_text(app).splitlines()[0]


@sync
async def test_pages_filters_and_opens_one_full_size(runs):
    names = scalars_of(runs[0])
    assert len(names) >= 30  # the script logs dozens: the grid must page them
    app = PaneApp(lambda: MetricsPane(runs[0], None, classes="pane"))
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(MetricsPane)
        await until(pilot, lambda: pane.data is not None and grid_titles(pane), what="charts")
        per_page = pane.page_size
        assert per_page == 3 * 4  # 120 columns / 38, 39 rows / 8
        assert grid_titles(pane)[0].endswith(chart_title(*names[0]))  # the selected one: ▶
        assert [t.removeprefix("▶ ") for t in grid_titles(pane)] == [
            chart_title(*k) for k in names[:per_page]
        ]
        status = screen_text(app).splitlines()[0]
        assert f"scalars 1-{per_page} of {len(names)}" in status and "page 1/" in status
        # every chart of the page has its run's curve
        assert all(p.traces for p in pane.plots())

        await pilot.press("pagedown")
        await until(pilot, lambda: pane.data.page == 1, what="page 2")
        await until(
            pilot, lambda: grid_titles(pane)[1] == chart_title(*names[per_page + 1]), what="p2"
        )
        await pilot.press("pageup")
        await until(pilot, lambda: pane.data.page == 0, what="back to page 1")

        # / filters by name; every word must appear
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"unit_03")
        await until(pilot, lambda: len(grid_titles(pane)) == 2, what="filtered")
        assert sorted(t.removeprefix("▶ ") for t in grid_titles(pane)) == [
            "unit_03/mean",
            "unit_03/std",
        ]
        assert "of 2 (of " in screen_text(app).splitlines()[0]
        await pilot.press("enter")  # leaves the box, keeps the filter
        assert app.focused is pane
        await pilot.press("right")  # select the second chart, open it full size
        await pilot.press("enter")
        zoom = pane.query_one("#metrics-zoom", Plot)
        await until(pilot, lambda: zoom.display and zoom.traces, what="full size")
        assert zoom.border_title == "unit_03/std"
        assert zoom.size.width > 100
        # the full-size chart reads its series at its own width: more points than a small one
        await until(pilot, lambda: len(zoom.traces[0].steps) == 30, what="every step")
        await pilot.press("escape")  # back to the grid, filter kept
        await until(pilot, lambda: not zoom.display and len(grid_titles(pane)) == 2)
        await pilot.press("escape")  # clears the filter
        await until(pilot, lambda: len(grid_titles(pane)) == per_page, what="filter cleared")
        assert pane.filter_text == ""

        await pilot.press("slash", *"no_such_scalar")
        await until(pilot, lambda: "no scalar matches" in screen_text(app))
        await pilot.press("escape")
        await until(pilot, lambda: len(grid_titles(pane)) == per_page)

        # a click on a chart opens it
        target = pane.plots()[4]
        await pilot.click(target, offset=(10, 4))
        await until(pilot, lambda: zoom.display, what="clicked open")
        assert zoom.border_title == chart_title(*names[4])


@sync
async def test_small_terminal_and_ascii(runs):
    app = PaneApp(lambda: MetricsPane(runs[0], None, classes="pane"), ascii_mode=True)
    app.add_class("-ascii")  # as DltuiApp(ascii=True) does
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(MetricsPane)
        await until(pilot, lambda: pane.data is not None and grid_titles(pane), what="charts")
        assert pane.page_size == 2 * 2
        text = screen_text(app)
        assert not any(0x2500 <= ord(c) <= 0x28FF for c in text), text  # no box, no Braille
        assert "> " + chart_title(*scalars_of(runs[0])[0]) in text  # the selection, in words


@sync
async def test_dashboard_has_the_metrics_tab(runs):
    app = make_app(runs[0])
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.snapshot is not None, what="snapshot")
        await pilot.press("6")
        tabs = app.screen.query_one(TabbedContent)
        assert tabs.active == "metrics"
        await until(pilot, lambda: app.screen.query(MetricsPane), what="pane loaded")
        pane = app.screen.query_one(MetricsPane)
        await until(pilot, lambda: pane.data is not None and grid_titles(pane), what="charts")
        assert app.focused is pane
        assert "6 Metrics" in screen_text(app)
        # '/unit_05/s' arriving in one burst (a fast typist, a paste): all of it is the filter,
        # none of it a key of the app ('5' is the Console tab's) or a second '/'
        for ch in "/unit_05/s":
            app.post_message(events.Key("slash" if ch == "/" else ch, ch))
        await until(pilot, lambda: pane.filter_text == "unit_05/s", what="the burst filtered")
        assert tabs.active == "metrics"
        await until(pilot, lambda: grid_titles(pane) == ["▶ unit_05/std"], what="one chart")
        await pilot.press("escape", "escape")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        rows = dict(app.screen.sections)["Metrics tab"]
        assert ("pagedown", "Next page") in rows and ("slash", "Filter the charts by name") in rows


@sync
async def test_compare_grid_overlays_every_run(runs):
    app = CompareApp(runs)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), what="screen")
        await pilot.press("2")
        pane = app.screen.grid
        await until(pilot, lambda: pane.data is not None and grid_titles(pane), what="charts")
        assert app.focused is pane
        loss = next(p for p in pane.plots() if p.border_title.endswith("loss"))
        sources = run_sources(runs)
        assert [t.color for t in loss.traces] == [s.color for s in sources]
        assert len({t.mark for t in loss.traces}) == 2
        # one run logged 30 steps, the other 20: each curve is its own
        assert [t.steps[-1] for t in loss.traces] == [30, 20]
        # val-only scalars are charted too, with both runs
        assert (("acc", wire.VAL)) in scalars_of(runs[0])
        await pilot.press("n")  # n/p page in the compare view (no run to step there)
        await until(pilot, lambda: pane.data.page == 1, what="page 2")
        await pilot.press("p")
        await until(pilot, lambda: pane.data.page == 0, what="page 1")
