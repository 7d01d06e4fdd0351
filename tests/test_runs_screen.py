"""The run browser (issue 12, item 1): run/catalog.py over real run stores, and the Runs screen
driven through Textual's pilot. One live run is a real engine, to see rows update in place."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from conftest import linear_recipe, start_cli
from textual.app import App
from textual.widgets import DataTable

from dltui.engine.store import RunStore
from dltui.run import wire
from dltui.run.catalog import CACHE_NAME, Catalog
from dltui.tui.screens.runs import RunsScreen


def write_run(runs: Path, name: str, lr: float, best: float | None, started: float) -> Path:
    """A finished run as the engine leaves one: meta, progress, hparams, a best val loss."""
    d = runs / name
    d.mkdir(parents=True)
    st = RunStore(d / "run.sqlite")
    st.start()
    st.scalars(1, 0, wire.TRAIN, started + 1, {"loss": 1.0})
    progress = {"step": 40, "total_steps": 40, "epoch": 2, "epochs": 2}
    meta = {"script": f"/x/{name}.py", "started": started, "progress": progress}
    meta["hparams"] = {"lr": lr, "width": 64}
    if best is not None:
        meta["best"] = {"step": 40, "epoch": 2, "val_loss": best}
    st.set_meta(**meta)
    st.close(wire.FINISHED)
    return d


@pytest.fixture
def runs(tmp_path) -> Path:
    r = tmp_path / "runs"
    write_run(r, "20260101-000000-alpha", 0.1, 0.52, 1000.0)
    write_run(r, "20260101-000100-beta", 0.01, 0.31, 2000.0)
    write_run(r, "20260101-000200-gamma", 0.001, None, 3000.0)
    return r


class Host(App):
    def __init__(self, runs_dir: Path, compare: bool = False) -> None:
        super().__init__()
        self.runs_dir, self.compare = runs_dir, compare
        self.result: list[Path] | None | str = "pending"

    def on_mount(self) -> None:
        self.push_screen(RunsScreen(self.runs_dir, compare=self.compare), self._done)

    def _done(self, result: list[Path] | None) -> None:
        self.result = result


def table_ids(app: App) -> list[str]:
    t = app.screen.query_one(DataTable)
    return [str(t.get_row_at(i)[1]) for i in range(t.row_count)]


async def settle(pilot, until, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the Runs screen did not get there in time"
        await pilot.pause(0.05)


def test_lists_sorts_filters_and_opens(runs):
    async def go():
        app = Host(runs)
        async with app.run_test(size=(120, 30)) as pilot:
            await settle(pilot, lambda: len(table_ids(app)) == 3)
            assert table_ids(app) == [
                "20260101-000200-gamma",
                "20260101-000100-beta",
                "20260101-000000-alpha",
            ]
            row = [str(c) for c in app.screen.query_one(DataTable).get_row_at(1)]
            assert "loss 0.31" in row and "40/40 100%" in row and "lr=0.01 width=64" in row
            # sort by status, then progress, then best (ascending with S): beta's 0.31 first
            for _ in ("status", "best"):
                await pilot.press("s")
            assert app.screen.sort_by == "best"
            await pilot.press("S")
            assert table_ids(app)[0] == "20260101-000100-beta"
            # filter by an hparam, then Enter opens the one row left
            await pilot.press("slash", *"lr=0.001")
            await settle(pilot, lambda: table_ids(app) == ["20260101-000200-gamma"])
            await pilot.press("enter", "enter")
            await settle(pilot, lambda: app.result != "pending")
            assert app.result == [runs / "20260101-000200-gamma"]

    asyncio.run(go())


def test_marks_two_runs_to_compare(runs):
    async def go():
        plain = Host(runs)  # opening one run: space and c do nothing
        async with plain.run_test(size=(100, 24)) as pilot:
            await settle(pilot, lambda: len(table_ids(plain)) == 3)
            await pilot.press("space", "c")
            assert plain.result == "pending" and plain.screen.marked == set()
        app = Host(runs, compare=True)
        async with app.run_test(size=(100, 24)) as pilot:
            await settle(pilot, lambda: len(table_ids(app)) == 3)
            await pilot.press("c")  # nothing marked: says how, stays
            assert app.result == "pending"
            await pilot.press("space", "space")  # gamma, beta (newest first)
            await pilot.press("c")
            await settle(pilot, lambda: app.result != "pending")
            assert app.result == [runs / "20260101-000100-beta", runs / "20260101-000200-gamma"]

    asyncio.run(go())


def test_a_live_run_updates_in_place(tmp_path, runs):
    recipe = tmp_path / "slow.py"
    recipe.write_text(
        linear_recipe(n=100_000, batch=10, extra="import time\n")
        + "\n\ndef train_step(model, batch):\n"
        "    time.sleep(0.02)\n"
        "    x, y = batch\n"
        "    return loss_fn(model(x), y)\n"
    )
    live = start_cli(
        "train", "--headless", "--runs-dir", runs, recipe, cwd=tmp_path, log_dir=tmp_path
    )

    async def go():
        app = Host(runs)
        async with app.run_test(size=(120, 30)) as pilot:
            await settle(pilot, lambda: len(table_ids(app)) == 4, timeout=120)
            t = app.screen.query_one(DataTable)

            def live_row():
                return next(
                    t.get_row_at(i) for i in range(t.row_count) if "slow" in str(t.get_row_at(i)[1])
                )

            await settle(pilot, lambda: str(live_row()[2]) == "RUNNING", timeout=120)
            first = str(live_row()[3])
            await settle(pilot, lambda: str(live_row()[3]) != first, timeout=30)
            assert "live" in str(app.screen.query_one("#runs-title").render())

    try:
        asyncio.run(go())
    finally:
        live.kill()


def test_catalog_reuses_unchanged_runs_and_lists_bad_ones(runs):
    c = Catalog(runs)
    assert [r.id for r in c.refresh()][0] == "20260101-000000-alpha" and c.read_count == 3
    c.refresh()
    assert c.read_count == 3, "unchanged finished runs were read again"
    # a new process starts from the cache file: no store opened at all
    fresh = Catalog(runs)
    rows = fresh.refresh()
    assert fresh.read_count == 0 and {r.best_value for r in rows} >= {("val_loss", 0.31)}
    # a damaged store is listed as unreadable, the others still are
    bad = runs / "20260101-000300-broken"
    bad.mkdir()
    (bad / "run.sqlite").write_bytes(b"not a database" * 100)
    rows = fresh.refresh()
    assert len(rows) == 4 and next(r for r in rows if "broken" in r.id).status.startswith(
        "unreadable"
    )
    # a changed store is read again
    before = fresh.read_count
    st = RunStore(runs / "20260101-000000-alpha" / "run.sqlite")
    st.start()
    st.set_meta(hparams={"lr": 0.5})
    st.close()
    rows = fresh.refresh()
    assert fresh.read_count == before + 1  # alpha changed; the rest are reused
    assert next(r for r in rows if "alpha" in r.id).hparams == {"lr": 0.5}
    # a damaged cache file is ignored; one that can't be written just means no cache
    (runs / CACHE_NAME).write_text("{not json")
    assert len(Catalog(runs).refresh()) == 4
    (runs / CACHE_NAME).unlink()
    (runs / CACHE_NAME).mkdir()  # (root ignores chmod: a folder in the way can't be replaced)
    assert len(Catalog(runs).refresh()) == 4
    (runs / CACHE_NAME).rmdir()
    Catalog(runs).refresh()
    assert json.loads((runs / CACHE_NAME).read_text())["version"] == 1


async def runs_screen_over_alpha(pilot) -> None:
    """In alpha's dashboard, R: wait until the Runs screen lists the three runs."""
    app = pilot.app
    await pilot.pause(0.5)
    await pilot.press("R")
    await settle(pilot, lambda: isinstance(app.screen, RunsScreen))
    await settle(pilot, lambda: len(table_ids(app)) == 3)


def test_a_filter_typed_in_one_burst_is_all_filter(runs):
    """'/' then keys arriving at once (a fast typist, a paste): every key is the filter's, none
    reaches the dashboard underneath (its q quits) or starts a second filter."""
    from textual import events

    from dltui.tui.app import make_app

    async def go():
        app = make_app(runs / "20260101-000000-alpha")
        async with app.run_test(size=(120, 40)) as pilot:
            await runs_screen_over_alpha(pilot)
            for ch in "/q/ga":
                app.post_message(events.Key("slash" if ch == "/" else ch, ch))
            await settle(pilot, lambda: app.screen.filter_text == "q/ga")
            assert isinstance(app.screen, RunsScreen) and app.return_value is None

    asyncio.run(go())


def test_the_dashboard_switches_runs_with_R(runs):
    """R in a run's dashboard lists the runs; picking another leaves with it (run_app opens it)."""
    from dltui.tui.app import make_app

    async def go():
        app = make_app(runs / "20260101-000000-alpha")
        async with app.run_test(size=(120, 40)) as pilot:
            await runs_screen_over_alpha(pilot)
            marked = [str(app.screen.query_one(DataTable).get_row_at(i)[0]) for i in range(3)]
            assert marked == ["", "", "▶"], "the run being watched is marked"
            await pilot.press("down", "enter")  # beta
        return app.return_value

    assert asyncio.run(go()) == runs / "20260101-000100-beta"


def test_dltui_alone_needs_a_terminal_and_attach_lists_when_ambiguous(runs, tmp_path):
    from conftest import run_cli

    res = run_cli("--runs-dir", runs, cwd=tmp_path)
    assert res.returncode == 2 and "needs a terminal" in res.stderr and "dltui runs" in res.stderr
    res = run_cli("attach", "--runs-dir", runs, cwd=tmp_path)  # three finished runs: which?
    assert res.returncode == 2 and "Runs screen needs a terminal" in res.stderr
