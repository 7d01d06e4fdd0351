"""A finished run's Tensors and Model tabs read its saved checkpoints (issue 12, item 3): a real
trained run, the real dashboard, the real checkpoint server process, compared with torch itself;
and the server never outlives the dashboard."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CHILD_ENV, linear_recipe, only_run, run_cli
from textual.widgets import Static, Tree

from dltui.tui.app import make_app
from dltui.tui.checkpoints import saved_checkpoints
from dltui.tui.cli import build_parser
from dltui.tui.inspect_cli import checkpoint_path
from dltui.tui.screens.checkpoint_picker import CheckpointPicker

EXPR = "x.t()[1:3, ::2]"
# Three epochs with validation: last.pt at step 6; best.pt where the val loss was lowest (earlier).
MODEL = (
    "model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 1))\n"
    "optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)\n"
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    recipe = root / "wide.py"
    recipe.write_text(linear_recipe(n=40, batch=20, epochs=3, val=50, extra=MODEL))
    res = run_cli("train", "--headless", "--runs-dir", root / "runs", recipe, cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    run_dir = only_run(root / "runs")
    names = [s.name for s in saved_checkpoints(run_dir)]
    assert names[:2] == ["last.pt", "best.pt"], names
    return run_dir


def saved(run_dir: Path, name: str) -> dict:
    return torch.load(run_dir / "checkpoints" / name)


async def until(pilot, cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def source_line(pane) -> str:
    return str(pane.query_one("#tensors-source", Static).render())


def test_tensors_and_model_tabs_of_a_finished_run(finished: Path) -> None:
    last, best = saved(finished, "last.pt"), saved(finished, "best.pt")
    assert best["step"] < last["step"]

    async def go() -> None:
        app = make_app(finished)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.snapshot is not None, "the first snapshot")
            assert app.checkpoints._proc is None  # lazily: nothing until a tab needs it
            await pilot.press("3")
            await until(pilot, lambda: app.screen.query("TensorsPane"), "the Tensors tab")
            pane = app.screen.query_one("TensorsPane")
            await until(pilot, lambda: "loading" in source_line(pane), "the loading line")
            await pilot.press("2")  # the UI thread is free while torch loads in the server
            await pilot.press("3")
            await until(pilot, lambda: pane.listing, "the checkpoint's tensor list")
            assert f"checkpoint last.pt · step {last['step']}" in source_line(pane)
            # the list was hidden while loading: it takes the focus, so / and o reach the tab
            await until(pilot, lambda: pane.query_one(Tree).has_focus, "the list focused")
            groups = [str(g.label) for g in pane.query_one(Tree).root.children]
            assert groups == ["parameters (6)", "buffers (3)", "optimizer state (6)"], groups

            # The acceptance view: stride and offset as torch has them.
            pane.select("0.weight")
            await until(pilot, lambda: pane.base_info is not None, "the weight")
            await pilot.press("slash", *EXPR, "enter")
            await until(pilot, lambda: pane.view_info is not None, "the view")
            view = last["model"]["0.weight"].t()[1:3, ::2]
            v = pane.view_info
            assert (v["shape"], v["stride"]) == (list(view.shape), list(view.stride()))
            assert v["storage_offset"] == view.storage_offset() and v["step"] == last["step"]
            assert [x["value"] for x in v["values"]] == pytest.approx(view.flatten().tolist())
            drawn = pane.query_one("#view-storage").render().plain
            assert f"stride {list(view.stride())}  offset {view.storage_offset()}" in drawn

            # o: the picker; best.pt replaces last.pt, the same view is asked of it.
            await pilot.press("escape", "o")
            await until(pilot, lambda: isinstance(app.screen, CheckpointPicker), "the picker")
            first = app.checkpoints._proc
            await pilot.press("down", "enter")
            await until(
                pilot,
                lambda: pane.loaded and pane.loaded.name == "best.pt" and pane.view_info,
                "best.pt's view",
            )
            assert f"checkpoint best.pt · step {best['step']}" in source_line(pane)
            want = best["model"]["0.weight"].t()[1:3, ::2].flatten().tolist()
            assert [x["value"] for x in pane.view_info["values"]] == pytest.approx(want)
            assert first.poll() is not None, "the last.pt server was left running"

            # Model tab: a module's parameters and buffers as the chosen checkpoint saved them.
            await pilot.press("4")
            await until(pilot, lambda: app.screen.query("ModelPane"), "the Model tab")
            model = app.screen.query_one("ModelPane")
            await until(pilot, lambda: model.modules, "the module tree")
            model.select("1")
            detail = model.query_one("#module-detail", Static)
            await until(pilot, lambda: "best.pt" in str(detail.render()), "the module's detail")
            text = str(detail.render())
            assert "running_mean" in text and "float32" in text and "num_batches_tracked" in text
            assert f"step {best['step']}" in text
            proc, folder = app.checkpoints._proc, app.checkpoints._dir
            assert proc.poll() is None and folder.is_dir()
        assert proc.poll() is not None, "the checkpoint server outlived the dashboard"
        assert not folder.exists()

    asyncio.run(go())


def test_a_crashed_runs_tensors_come_from_its_checkpoint(finished: Path, tmp_path: Path) -> None:
    """An engine killed outright leaves its run marked running with a dead pid: crashed."""
    crashed = tmp_path / "runs" / finished.name
    shutil.copytree(finished, crashed)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with sqlite3.connect(crashed / "run.sqlite") as db:
        for key, value in (("status", "running"), ("pid", dead.pid)):
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(value), key))

    async def go() -> None:
        app = make_app(crashed)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.snapshot is not None, "the first snapshot")
            assert app.snapshot.state.value == "crashed"
            await pilot.press("3")
            await until(pilot, lambda: app.screen.query("TensorsPane"), "the Tensors tab")
            pane = app.screen.query_one("TensorsPane")
            await until(pilot, lambda: pane.listing, "the checkpoint's tensor list")
            assert "checkpoint last.pt" in source_line(pane)

    asyncio.run(go())


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """The process ended (a zombie waiting for its reaper counts as ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in "ZX":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


PARENT = """
import sys, threading, time
from pathlib import Path
from dltui.tui.checkpoints import CheckpointServer
servers = [CheckpointServer(Path(sys.argv[1])) for _ in range(3)]
loads = [threading.Thread(target=s.load, args=("best",)) for s in servers]
for t in loads: t.start()
for t in loads: t.join()
print(*(f"{s._proc.pid} {s._dir}" for s in servers), flush=True)
time.sleep(600)
"""


def test_no_orphan_server_on_hangup_folder_removed_or_dashboard_killed(finished: Path) -> None:
    """Three servers of one parent: a hang-up (a closed terminal) ends one cleanly; removing
    one's socket folder ends it; killing the parent outright (no cleanup runs) ends the last.
    None leaves its folder behind."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(finished)],
        env=CHILD_ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    folders: list[Path] = []
    try:
        words = parent.stdout.readline().split()
        pids = [int(w) for w in words[::2]]
        folders = [Path(w) for w in words[1::2]]
        os.kill(pids[0], signal.SIGHUP)  # tmux kill-session, a dropped SSH connection
        shutil.rmtree(folders[1])  # a tmp cleaner
        assert wait_gone(pids[0]) and wait_gone(pids[1]), "a server outlived its end"
        assert not wait_gone(pids[2], timeout=0.2)
        os.kill(parent.pid, signal.SIGKILL)  # a dashboard killed outright runs no cleanup
        parent.wait()
        assert wait_gone(pids[2]), "the server outlived its killed parent"
        deadline = time.monotonic() + 5
        while any(f.exists() for f in folders) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [f for f in folders if f.exists()], "a server left its folder behind"
    finally:
        parent.kill()
        parent.wait()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def test_inspect_run_takes_last_best_or_a_file(finished: Path) -> None:
    runs = finished.parent
    for which, name in (("last", "last.pt"), ("best", "best.pt"), ("best.pt", "best.pt")):
        assert checkpoint_path(finished.name, runs, which) == finished / "checkpoints" / name
    assert build_parser().parse_args(["inspect", finished.name]).checkpoint == "last"
    res = run_cli(
        "inspect",
        finished.name,
        "--checkpoint",
        "best",
        "--json",
        "--runs-dir",
        runs,
        cwd=runs.parent,
    )
    assert res.returncode == 0, res.stderr
    kinds = {t["name"]: t["kind"] for t in json.loads(res.stdout)}
    assert kinds["1.running_var"] == "buffer" and kinds["1.weight"] == "parameter"
