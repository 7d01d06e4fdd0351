"""Layers tab through time (issue 12, item 4): , . < > Home End move the shown stats step; the
table, the detail line, the history and the histograms show that step; a live run is followed
until the user scrubs back. A real RunStore writes the run; the pane reads it as the dashboard does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_panes import PaneApp, stats_row, sync, until
from textual.widgets import DataTable, Static

from dltui.engine.store import RunStore
from dltui.run.reader import RunReader
from dltui.tui.panes.layers import LayersPane
from dltui.tui.widgets.pane_histogram import PaneHistogram
from dltui.tui.widgets.pane_sparkline import PaneSparkline

NAMES = ("fc.weight", "fc.bias")
STATS_STEPS = list(range(5, 35, 5))  # 5, 10, ... 30
HIST_STEPS = (10, 20)  # histograms at a lower rate than the stats


def write_steps(store: RunStore, steps: list[int]) -> None:
    """fc.weight's gradient norm is the step itself: what a row shows says which step it is."""
    for step in steps:
        store.layer_stats(step, [stats_row("fc.weight", float(step)), stats_row("fc.bias", 0.5)])
        if step in HIST_STEPS:
            for name in NAMES:
                store.histogram(step, name, "weight", -1.0, 1.0, [step, 1, 1])
                store.histogram(step, name, "grad", -0.1, 0.1, [1, step, 1])
    store.flush()


def open_store(run_dir: Path) -> RunStore:
    store = RunStore(run_dir / "run.sqlite")
    store.start()
    store.set_meta(run_id=run_dir.name, status="running")
    store.params([("fc.weight", [3, 4], 12, True), ("fc.bias", [3], 3, True)])
    write_steps(store, STATS_STEPS)
    # The engine's probe says what a spike is: fc.bias at step 15 (not at the newest step).
    store.event(
        "alert",
        "gradient norm spike in fc.bias",
        step=15,
        level="warning",
        data={"layer": "fc.bias", "g_norm": 0.5},
    )
    store.flush()
    return store


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("scrub") / "run"
    open_store(run_dir).close("finished")
    return run_dir


def shown(pane: LayersPane) -> tuple[int | None, str]:
    """The step the pane shows and its step line."""
    return pane.step, str(pane.query_one("#layers-step", Static).render())


def g_norm_cell(pane: LayersPane) -> str:
    return pane.query_one(DataTable).get_cell("fc.weight", "g_norm").plain


def test_reader_moves_through_recorded_steps(finished_run: Path) -> None:
    with RunReader(finished_run) as r:
        assert r.layer_stat_bounds() == (5, 30)
        assert r.layer_stat_step_moved(30, -1) == 25
        assert r.layer_stat_step_moved(30, -10) == 5  # stops at the first
        assert r.layer_stat_step_moved(12, 1) == 15  # from between two recorded steps
        assert r.layer_stat_step_moved(25, 10) == 30
        assert r.layer_stats_at(15)["fc.weight"]["g_norm"] == 15.0
        assert r.layer_stats_at(16) == {}
        assert [s for s, _ in r.layer_stat_history("fc.weight", "g_norm", until=15)] == [5, 10, 15]
        assert r.histogram_at("fc.weight", "weight", 25)["step"] == 20  # newest at or before
        assert r.histogram_at("fc.weight", "weight", 5) is None
        assert r.histogram_latest("fc.weight", "grad")["step"] == 20


@sync
async def test_scrub_keys_show_each_recorded_step(finished_run: Path) -> None:
    app = PaneApp(lambda: LayersPane(finished_run, None))
    async with app.run_test(size=(120, 30)) as pilot:
        pane = app.query_one(LayersPane)
        await until(pilot, lambda: pane.step == 30 and pane.selected == "fc.weight", what="rows")
        pane.query_one(DataTable).focus()  # home/end reach the pane past the focused table
        step, line = shown(pane)
        assert "step 30" in line and "latest" in line and g_norm_cell(pane) == "30"

        async def press(key: str, step: int) -> None:
            await pilot.press(key)
            hist = pane.query_one("#layers-hist-w", PaneHistogram)
            title = pane.query_one("#layers-title", Static)
            await until(
                pilot,
                lambda: pane.step == step and f"step {step}" in str(title.render()),
                what=f"step {step} after {key}",
            )
            assert g_norm_cell(pane) == str(step)  # the table shows that step's values
            spark = pane.query_one(PaneSparkline)
            await until(pilot, lambda: len(spark.values) == STATS_STEPS.index(step) + 1)
            assert spark.values[-1] == step  # history up to the shown step, not past it
            older = [h for h in HIST_STEPS if h <= step]
            assert (hist.hist or {}).get("step") == (older[-1] if older else None)

        await press("comma", 25)
        step, line = shown(pane)
        assert "step 25 of 30" in line and "End for latest" in line
        assert str(pane.steps.line(25, 30, 32)) == "step 25 of 30  (End: latest)"  # 40 columns
        await press("less_than_sign", 5)  # ten back stops at the first recorded step
        await press("full_stop", 10)
        await press("full_stop", 15)
        # The spike the engine reported at step 15 is flagged there, and only there.
        assert pane.query_one(DataTable).get_cell("fc.bias", "flag").plain == "↯"
        await press("end", 30)
        assert pane.pinned is None and "latest" in shown(pane)[1]
        assert pane.query_one(DataTable).get_cell("fc.bias", "flag").plain == ""
        await press("home", 5)
        await press("greater_than_sign", 30)  # ten on reaches the newest: following again
        assert pane.pinned is None


@sync
async def test_live_run_followed_until_scrubbed(tmp_path: Path) -> None:
    store = open_store(tmp_path / "live")
    try:
        app = PaneApp(lambda: LayersPane(tmp_path / "live", None))
        async with app.run_test(size=(100, 30)) as pilot:
            pane = app.query_one(LayersPane)
            await until(pilot, lambda: pane.step == 30, what="the newest step")
            write_steps(store, [35])
            await until(pilot, lambda: pane.step == 35, what="following the run")
            await pilot.press("comma")
            await until(pilot, lambda: pane.step == 30, what="scrubbed back")
            write_steps(store, [40])
            await until(pilot, lambda: "of 40" in shown(pane)[1], what="the newest step counted")
            await pilot.pause(0.3)
            assert pane.step == 30 and g_norm_cell(pane) == "30"  # stays where the user put it
            await pilot.press("end")
            await until(pilot, lambda: pane.step == 40, what="following again")
            write_steps(store, [45])
            await until(pilot, lambda: pane.step == 45, what="following the run again")
    finally:
        store.close("finished")
