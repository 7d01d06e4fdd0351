"""The compare view (issue 12, item 2): `dltui attach A B`, and runs marked on the Runs screen.

The runs are real stores written with the engine's RunStore (no engine needed to read them);
the live one is a store this test keeps writing to, marked as owned by this process, the way a
running engine leaves it. The CLI is the real `dltui` in a subprocess."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from conftest import run_cli
from screen import screen_text
from test_panes import sync, until
from textual.widgets import DataTable

from dltui.engine.store import RunStore
from dltui.run import wire
from dltui.tui.app import make_app
from dltui.tui.browser import BrowserApp
from dltui.tui.multirun import short_labels
from dltui.tui.screens.compare import CompareApp, CompareScreen
from dltui.tui.screens.runs import RunsScreen
from dltui.tui.widgets.compare_table import higher_is_better
from dltui.tui.widgets.format import fmt_num

T0 = 1_700_000_000.0


def loss_at(step: int, lr: float) -> float:
    return 2.0 / (1.0 + lr * step)


def write_run(
    runs: Path, name: str, lr: float, steps: int, started: float, *, resumed_at: int = 0
) -> Path:
    """A finished run: train loss every step, val loss and val acc every 10, hparams, best."""
    d = runs / name
    d.mkdir(parents=True)
    st = RunStore(d / "run.sqlite")
    st.start()
    for s in range(1, steps + 1):
        st.scalars(s, 0, wire.TRAIN, started + s, {"loss": loss_at(s, lr), "lr/0": lr})
        if s % 10 == 0:
            st.scalars(s, 0, wire.VAL, started + s, {"loss": loss_at(s, lr) + 0.1, "acc": lr * s})
    if resumed_at:
        st.event(wire.EV_RUN, f"resumed from checkpoint at step {resumed_at}", step=resumed_at)
    progress = {"step": steps, "total_steps": steps}
    st.set_meta(
        script=f"/x/{name}.py",
        started=started,
        progress=progress,
        hparams={"lr": lr, "batch_size": 32},
        best={"step": steps, "val_loss": loss_at(steps, lr) + 0.1},
    )
    st.close(wire.FINISHED)
    return d


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare") / "runs"
    write_run(root, "20260101-000000-sweep", 0.1, 40, T0)
    write_run(root, "20260101-000100-sweep", 0.01, 30, T0 + 100, resumed_at=20)
    write_run(root, "20260101-000200-sweep", 0.001, 20, T0 + 200)
    return root


def pair(runs: Path) -> list[Path]:
    return [runs / "20260101-000000-sweep", runs / "20260101-000100-sweep"]


def table(screen: CompareScreen) -> dict[str, list[str]]:
    """The table as {field: [marker, value per run...]}."""
    t = screen.query_one(DataTable)
    out = {}
    for i in range(t.row_count):
        marker, field, *values = (str(c) for c in t.get_row_at(i))
        out[field] = [marker, *values]
    return out


def test_best_is_the_highest_for_accuracy_like_names_only():
    assert [higher_is_better(n) for n in ("val_acc", "accuracy", "f1_macro", "mAP", "auroc")] == [
        True
    ] * 5
    assert not any(higher_is_better(n) for n in ("loss", "bitmap_loss", "err", "perplexity"))


def test_short_labels_keep_what_tells_runs_apart():
    assert short_labels(["20261201-010203-mnist", "20261201-010455-mnist"]) == [
        "010203",
        "010455",
    ]
    assert short_labels(["a-b-reg", "a-b-reg-2"]) == ["reg", "reg-2"]
    assert short_labels(["only-one"]) == ["only-one"]


@sync
async def test_curves_overlaid_with_run_names_glyphs_and_the_table(runs):
    a, b = pair(runs)
    app = CompareApp([a, b])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        loss, val, metric = screen.plots
        await until(pilot, lambda: len(loss.traces) == 2 and len(val.traces) == 2, what="curves")
        # one legend entry per run, named by the run: the loss chart is wide enough for whole ids
        assert [t.label for t in loss.traces] == [a.name, b.name]
        assert len({t.color for t in loss.traces}) == 2
        assert len({t.mark for t in loss.traces}) == 2
        text = screen_text(app)
        legend = next(line for line in text.splitlines() if a.name in line and "━" in line)
        assert b.name in legend
        assert [t.steps[-1] for t in loss.traces] == [40, 30]
        assert [t.last[1] for t in loss.traces] == [loss_at(40, 0.1), loss_at(30, 0.01)]
        # the runs' glyphs are drawn on the curves, so they part without colour (NO_COLOR)
        canvas = "\n".join(str(loss.render()).splitlines()[1:])
        assert {t.mark for t in loss.traces} <= set(canvas)
        # the table: differing hparams marked, the resumed run said to continue itself
        await until(pilot, lambda: "loss: last, min" in table(screen), what="table values")
        rows = table(screen)
        assert rows["lr"] == ["*", "0.1", "0.01"]
        assert rows["batch_size"] == ["", "32", "32"]
        assert rows["continued"] == ["", "-", "resumed at step 20 (same run)"]
        assert rows["steps"][1:] == ["40/40 100%", "30/30 100%"]
        assert rows["status"][1:] == ["FINISHED", "FINISHED"]
        assert rows["loss: last, min"][1:] == [
            f"{fmt_num(loss_at(40, 0.1))}  {fmt_num(loss_at(40, 0.1))}",
            f"{fmt_num(loss_at(30, 0.01))}  {fmt_num(loss_at(30, 0.01))}",
        ]
        assert rows["acc (val): last, max"][1:] == [f"{fmt_num(4.0)}  {fmt_num(4.0)}"] + [
            f"{fmt_num(0.3)}  {fmt_num(0.3)}"
        ]
        # the third chart: the scalars besides the loss, m cycles them
        await until(pilot, lambda: metric.border_title.startswith("acc (val)"), what="metric")
        await pilot.press("x")  # time since each run's start: both start at 0 s
        await until(pilot, lambda: loss.x_time, what="time axis")
        assert [t.walls[0] for t in loss.traces] == [0.0, 0.0]
        assert "x: time since each run's start" in screen_text(app)
        assert "time" in str(loss.render()).splitlines()[-1]


@sync
async def test_ascii_glyphs_and_narrow_terminal(runs):
    app = CompareApp(pair(runs), ascii=True)
    async with app.run_test(size=(80, 24)) as pilot:
        loss = app.screen.plots[0]
        await until(pilot, lambda: len(loss.traces) == 2, what="curves")
        assert [t.mark for t in loss.traces] == ["o", "x"]
        legend = str(loss.render()).splitlines()[0]
        assert legend.startswith("-o ") and " -x " in legend
        await pilot.press("down")  # the table has the focus: its scrollbar shows
        text = screen_text(app)
        fancy = [c for c in text if 0x2500 <= ord(c) <= 0x25FF or 0x2800 <= ord(c) <= 0x28FF]
        assert not fancy, text  # no box drawing, blocks, Braille or ●■ glyphs under --ascii
        await pilot.press("2")
        grid = app.screen.grid
        await until(pilot, lambda: grid.data is not None and grid.plots()[0].traces, what="grid")
        text = screen_text(app)
        fancy = [c for c in text if 0x2500 <= ord(c) <= 0x25FF or 0x2800 <= ord(c) <= 0x28FF]
        assert not fancy and "> loss" in text, text


@sync
async def test_a_live_run_updates_in_place(tmp_path, runs):
    d = tmp_path / "20260102-000000-live"
    d.mkdir()
    st = RunStore(d / "run.sqlite")
    st.start()
    now = time.time()
    meta = {"started": now, "heartbeat": now, "pid": os.getpid(), "host": socket.gethostname()}
    st.set_meta(**meta, progress={"step": 5})
    for s in range(1, 6):
        st.scalars(s, 0, wire.TRAIN, now + s, {"loss": 1.0 / s})
    st.flush()
    try:
        app = CompareApp([pair(runs)[0], d])
        async with app.run_test(size=(120, 40)) as pilot:
            loss = app.screen.plots[0]
            await until(pilot, lambda: len(loss.traces) == 2, what="curves")
            assert loss.traces[1].steps[-1] == 5
            assert table(app.screen)["status"][2] == "RUNNING"
            for s in range(6, 21):
                st.scalars(s, 0, wire.TRAIN, now + s, {"loss": 1.0 / s})
            st.set_meta(heartbeat=time.time(), progress={"step": 20})
            st.flush()
            await until(pilot, lambda: loss.traces[1].steps[-1] == 20, what="new steps drawn")
            await until(pilot, lambda: table(app.screen)["steps"][2] == "20", what="table")
            await pilot.press("2")  # the grid follows the live run too
            grid = app.screen.grid
            await until(pilot, lambda: grid.data is not None and grid.plots()[0].traces)
            for s in range(21, 31):
                st.scalars(s, 0, wire.TRAIN, now + s, {"loss": 1.0 / s})
            st.flush()
            await until(pilot, lambda: grid.plots()[0].traces[1].steps[-1] == 30, what="grid")
    finally:
        st.close(wire.FINISHED)


def test_cli_unknown_run_names_the_runs_there(runs, tmp_path):
    res = run_cli("attach", "--runs-dir", runs, "20260101-000000", "nope", cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "no run 'nope'" in lines[0]
    assert all(n in lines[0] for n in ("000000-sweep", "000100-sweep", "000200-sweep"))


@sync
async def test_marked_on_the_runs_screen_from_the_dashboard_and_the_browser(runs):
    a, b = pair(runs)
    app = make_app(a)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.snapshot is not None, what="dashboard")
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), what="runs screen")
        runs_screen = app.screen
        await until(pilot, lambda: runs_screen.query_one(DataTable).row_count == 3)
        await pilot.press("down", "space", "space")  # 000100 and 000000 (newest first)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
        assert app.screen.paths == [a, b]
        await until(pilot, lambda: len(app.screen.plots[0].traces) == 2, what="curves")
        await pilot.press("escape")  # back to the dashboard, which kept its run
        await until(pilot, lambda: app.on_dashboard(), what="dashboard again")

    browser = BrowserApp(runs)
    async with browser.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: isinstance(browser.screen, RunsScreen))
        await until(pilot, lambda: browser.screen.query_one(DataTable).row_count == 3)
        await pilot.press("space", "space", "c")
        await until(pilot, lambda: browser.return_value is not None, what="picked")
    assert browser.return_value == [runs / "20260101-000100-sweep", runs / "20260101-000200-sweep"]


def test_attach_help_says_several_runs_compare(tmp_path):
    res = run_cli("attach", "--help", cwd=tmp_path)
    assert res.returncode == 0 and "compare" in res.stdout
