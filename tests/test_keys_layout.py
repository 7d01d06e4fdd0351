"""Keys, focus, layout and discoverability of the dashboard (issue 11, part B), against a real
engine process and a finished run's real store: run keys work on every tab, the Tensors view box
lets go of the keys, every key is in the footer at 80x24, the palette and the help screen list
every key, and the dashboard reaps the engine it started once that engine ends."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CHILD_ENV, cli_argv, run_cli, running_engine
from screen import notes, screen_text
from test_app_snapshots import write_finished_run
from textual.pilot import Pilot
from textual.widgets import Input, TabbedContent, Tree

from dltui.run.reader import RunReader
from dltui.run.status import RunStatus
from dltui.tui.app import TABS, make_app
from dltui.tui.keys import pane_classes
from dltui.tui.screens.dialogs import HelpScreen, QuitDialog

# A small MLP (so the Model tab has a tree to fold) on batches that take ~30 ms; never ends.
RECIPE = """
import time
import torch
from torch import nn

torch.manual_seed(0)


class Slow:
    def __init__(self, n):
        self.x = torch.randn(8, 16, 4)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            time.sleep(0.03)
            yield self.x[i % 8], self.y[i % 8]


train_loader = Slow(100_000)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
loss_fn = nn.MSELoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
epochs = 10
"""
RUN_KEYS = ("space Pause", "n Step", "l LR", "+ LR*2", "- LR/2", "e Eval", "c Ckpt")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    """A real engine on its own run directory, steered by the tests of this module in turn."""
    with running_engine(RECIPE, tmp_path_factory.mktemp("keys"), "keys", steps=3) as run_dir:
        yield run_dir


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_finished_run(tmp_path_factory.mktemp("done") / "finished-run")


async def until(pilot: Pilot, cond: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.1)


def events(run_dir: Path, text: str, after: int = 0) -> list[dict]:
    with RunReader(run_dir) as r:
        return [
            e
            for e in r.events(kind="command", limit=10_000)
            if e["id"] > after and text in e["message"]
        ]


def last_id(run_dir: Path) -> int:
    with RunReader(run_dir) as r:
        evs = r.events(limit=100_000)
    return evs[-1]["id"] if evs else 0


def footer(app) -> str:
    return screen_text(app).splitlines()[-1]


def state(app) -> RunStatus | None:
    return RunStatus.of(str(app.snapshot.state)) if app.snapshot else None


# -- defect 1: run keys on every tab ----------------------------------------------------------


def test_space_pauses_and_resumes_from_every_tab(live: Path) -> None:
    """The Tensors and Model trees took space (Model folded its tree); the footer said Pause
    while paused."""

    async def go() -> None:
        app = make_app(live)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: state(app) is RunStatus.RUNNING, "a running run")
            tabs = app.query_one(TabbedContent)
            for i, (tab, *_rest) in enumerate(TABS, 1):
                await pilot.press(str(i))
                assert tabs.active == tab
                if tab in ("tensors", "model"):  # its tree is built and has the focus
                    tree_id = "#tensor-tree" if tab == "tensors" else "#model-tree"
                    await until(
                        pilot,
                        lambda t=tree_id: app.screen.query(t) and app.screen.query_one(t).has_focus,
                        f"the {tab} tree focused",
                    )
                    tree = app.screen.query_one(tree_id, Tree)
                    await until(pilot, lambda t=tree: t.root.children, f"the {tab} tree filled")
                    folded = [n.is_expanded for n in tree.root.children]
                before = last_id(live)
                await pilot.press("space")
                await until(
                    pilot, lambda b=before: events(live, "paused at step", b), f"pause on {tab}"
                )
                await until(pilot, lambda: "space Resume" in footer(app), f"Resume shown on {tab}")
                assert "Pause" not in footer(app)
                await pilot.press("space")
                await until(
                    pilot, lambda b=before: events(live, "resumed at step", b), f"resume on {tab}"
                )
                await until(pilot, lambda: "space Pause" in footer(app), f"Pause shown on {tab}")
                if tab in ("tensors", "model"):
                    assert tree.root.is_expanded or not tree.show_root, f"{tab}: root folded"
                    assert [n.is_expanded for n in tree.root.children] == folded, tab

    asyncio.run(go())


# -- defect 2: the Tensors view box lets go ---------------------------------------------------


def test_tensors_view_box_does_not_trap_the_keys(live: Path) -> None:
    async def go() -> None:
        app = make_app(live)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: state(app) is RunStatus.RUNNING, "a running run")
            await pilot.press("3")
            await until(pilot, lambda: app.screen.query("#tensor-tree"), "the Tensors tab")
            tree = app.screen.query_one("#tensor-tree", Tree)
            box = app.screen.query_one("#tensor-expr", Input)
            pane = app.screen.query_one("TensorsPane")
            await until(
                pilot,
                lambda: tree.root.children,
                f"the tensor list {pane.listing} {pane.error_text} {pane.client}",
            )
            await until(pilot, lambda: tree.has_focus, f"the list focused, not {app.focused}")

            await pilot.press("t")  # hide the list: the next keys are still commands
            assert not tree.display and not box.has_focus
            await pilot.press("t")
            assert tree.display and box.value == "", "t went into the view box"

            await pilot.press("slash")  # into the view box: letters are text now
            assert box.has_focus
            before = last_id(live)
            await pilot.press("x", ".", "t", "(", ")", "n", "space", "q", "1")
            assert box.value == "x.t()n q1"
            assert isinstance(app.screen, type(app.screen)) and app.is_running
            assert app.query_one(TabbedContent).active == "tensors"
            await pilot.press("escape")  # out of the box: keys are commands again
            assert not box.has_focus and tree.has_focus
            await pilot.press("space")
            await until(pilot, lambda: events(live, "paused at step", before), "space pauses")
            assert not events(live, "step 1 from", before), "n typed into the box stepped the run"

            await pilot.press("t", "slash")  # list hidden, in the box: Esc goes to the drawings
            assert box.has_focus and not tree.display
            await pilot.press("escape")
            assert not box.has_focus and not tree.display
            await pilot.press("space")
            await until(pilot, lambda: events(live, "resumed at step", before), "space resumes")

    asyncio.run(go())


# -- defect 10: every key discoverable at 80x24; the Quit dialog at 40x12 ---------------------


def test_every_run_key_in_the_footer_and_the_lr_in_the_header(live: Path) -> None:
    async def go() -> None:
        app = make_app(live)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: state(app) is RunStatus.RUNNING, "a running run")
            for size in ((80, 24), (100, 30), (120, 40)):
                await pilot.resize_terminal(*size)
                await until(pilot, lambda: "? Help" in footer(app), f"the footer at {size}")
                await pilot.pause(0.3)
                bottom, header = footer(app), screen_text(app).splitlines()[0]
                for key in (*RUN_KEYS, "q Quit", "? Help"):
                    assert key in bottom, f"{key!r} missing from the footer at {size}: {bottom!r}"
                assert " lr 0.01" in header, f"no LR in the header at {size}: {header!r}"
                if size[0] >= 100:
                    assert header.rstrip().endswith("cpu"), header  # the run's device
            await pilot.resize_terminal(40, 12)
            await pilot.press("q")
            assert isinstance(app.screen, QuitDialog)
            await pilot.pause(0.3)
            text = screen_text(app)
            for button in ("Stop the run (s)", "Detach (d)", "Cancel (esc)"):
                assert button in text, f"{button!r} cut off at 40x12:\n{text}"
            await pilot.press("escape")
            assert not isinstance(app.screen, QuitDialog)

    asyncio.run(go())


def test_read_only_run_hides_steering_and_says_why(finished: Path) -> None:
    async def go() -> None:
        app = make_app(finished)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: state(app) is RunStatus.FINISHED, "the finished run")
            await until(pilot, lambda: "? Help" in footer(app), "the footer")
            bottom = footer(app)
            assert "? Help" in bottom and "q Quit" in bottom
            for key in RUN_KEYS:
                assert key not in bottom, f"{key!r} offered on a read-only run: {bottom!r}"
            assert "s Smooth" in bottom  # the room goes to the tab's own keys
            await pilot.press("2")  # a table has the focus; space still only explains
            await pilot.pause(0.3)
            app.clear_notifications()
            await pilot.press("space")
            await until(pilot, lambda: any("read-only" in n for n in notes(app)), "why not")

    asyncio.run(go())


# -- defect 11: the palette and the help screen know every key --------------------------------


def test_palette_offers_every_key_and_one_quit(live: Path) -> None:
    async def go() -> None:
        app = make_app(live)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: state(app) is RunStatus.RUNNING, "a running run")
            titles = [c.title for c in app.get_system_commands(app.screen)]
            wanted = [b.description for b in app.BINDINGS if b.description]
            for _, _, cls in pane_classes(TABS):
                wanted += [b.description for b in cls.BINDINGS if b.description]
            for description in wanted:
                word = description.split()[0].lower()
                assert any(word in t.lower() for t in titles), (description, titles)
            assert len([t for t in titles if "Quit" in t]) == 1, titles

            await pilot.press("ctrl+p")  # the real palette: type part of a name, Enter
            await pilot.pause(0.3)
            await pilot.press(*"smoo")
            await pilot.pause(0.5)
            await pilot.press("enter")
            await until(pilot, lambda: app.overview.smoothing == 0.6, "smoothing from the palette")

            await pilot.press("2")
            await pilot.press("ctrl+p")
            await pilot.pause(0.3)
            await pilot.press(*"follow")
            await pilot.pause(0.5)
            await pilot.press("enter")  # a Console key: the palette shows its tab first
            await until(pilot, lambda: app.query_one(TabbedContent).active == "console", "tab 5")

            await pilot.press("ctrl+q")  # Textual's quit key asks too
            assert isinstance(app.screen, QuitDialog)
            await pilot.press("escape")

    asyncio.run(go())


def test_help_lists_every_tab_palette_and_mouse(live: Path) -> None:
    async def go() -> None:
        app = make_app(live)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: state(app) is RunStatus.RUNNING, "a running run")
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            sections = dict(app.screen.sections)
            for title in ("Overview tab", "Layers tab", "Tensors tab", "Model tab", "Console tab"):
                assert title in sections, list(sections)
            run_keys = [k for k, _ in next(v for t, v in sections.items() if t.startswith("Run"))]
            assert run_keys[:7] == ["space", "n", "l", "+", "-", "e", "c"], run_keys
            assert "ctrl+p" in [k for k, _ in sections["Anywhere"]]
            assert [k for k, _ in sections["Mouse"]] == ["click", "wheel"]
            assert "end" in [k for k, _ in sections["Console tab"]]
            await pilot.press("escape")

    asyncio.run(go())


# -- defect 14 --------------------------------------------------------------------------------


def test_m_with_one_metric_says_so(live: Path) -> None:
    async def go() -> None:
        app = make_app(live)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.overview.metric_count == 1, "the one metric (mae)")
            app.clear_notifications()
            await pilot.press("m")
            await until(pilot, lambda: any("only" in n for n in notes(app)), "a note")

    asyncio.run(go())


def test_status_into_a_closed_pipe_raises_nothing(finished: Path) -> None:
    """`dltui status RUN | head`: the reader went away; no BrokenPipeError traceback."""
    for args in (("status", finished.name), ("runs",)):
        proc = subprocess.Popen(
            cli_argv(*args, "--runs-dir", finished.parent),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=CHILD_ENV,
        )
        proc.stdout.close()  # the reader is gone before the first line
        err = proc.stderr.read().decode()
        proc.wait(timeout=60)
        assert "BrokenPipe" not in err and "Traceback" not in err, err


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def test_dashboard_reaps_the_engine_after_ctl_stop(tmp_path: Path) -> None:
    """`dltui train` in a terminal; `dltui ctl RUN stop` from another: the engine process is
    gone (not defunct) while the dashboard still runs, and q then quits."""
    recipe = tmp_path / "mlp.py"
    recipe.write_text(RECIPE)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    cli = subprocess.Popen(
        cli_argv("train", recipe),
        cwd=tmp_path,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**CHILD_ENV, "TERM": "xterm-256color"},
        start_new_session=True,
    )
    os.close(slave)
    screen: list[bytes] = []

    def drain() -> None:  # a full pty would block the dashboard
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            screen.append(chunk)

    threading.Thread(target=drain, daemon=True).start()
    try:
        runs = tmp_path / "runs"
        deadline = time.monotonic() + 120
        pid = None
        while time.monotonic() < deadline and pid is None:
            assert cli.poll() is None, b"".join(screen)[-2000:]
            for d in runs.glob("*/run.sqlite") if runs.is_dir() else ():
                with RunReader(d.parent) as r:
                    meta = r.meta()
                if (meta.get("progress") or {}).get("step", 0) >= 3:
                    pid, run = meta["pid"], d.parent
            time.sleep(0.2)
        assert pid is not None, "the engine did not start"
        assert cli.poll() is None
        out = run_cli("ctl", run.name, "stop", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 60
        while _proc_state(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _proc_state(pid) is None, f"engine {pid} left {_proc_state(pid)} under the dashboard"
        assert cli.poll() is None, "the dashboard should still be open"
        time.sleep(1.0)  # the dashboard sees the run end; q then quits at once
        os.write(master, b"q")
        assert cli.wait(timeout=30) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        os.close(master)


# -- defect 13 (Model tab): a selected module shows what it holds ----------------------------


def test_model_tab_shows_the_selected_module(live: Path) -> None:
    """Selecting a module changed nothing; now its parameters (name, shape, dtype, numel,
    requires_grad), buffers, hooks and training flag are shown, from the live engine."""

    async def go() -> None:
        app = make_app(live)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: state(app) is RunStatus.RUNNING, "a running run")
            await pilot.press("4")
            await until(pilot, lambda: app.screen.query("#model-tree"), "the Model tab")
            tree = app.screen.query_one("#model-tree", Tree)
            await until(pilot, lambda: tree.root.children, "the module tree")
            await until(pilot, lambda: tree.has_focus, f"the tree focused, not {app.focused}")
            await pilot.press("down")  # the first child: 0  Linear(4, 8)
            await until(pilot, lambda: "in_features=4" in screen_text(app), "the engine's answer")
            text = screen_text(app)
            for words in ("0  Linear  training", "weight", "8×4", "float32", "32  grad", "hooks"):
                assert words in text, f"{words!r} not shown:\n{text}"
            await pilot.press("down")  # 1  ReLU: no parameters of its own
            await until(pilot, lambda: "1  ReLU  training" in screen_text(app), "the ReLU")
            assert "parameters (own): none" in screen_text(app)

    asyncio.run(go())


def test_model_tab_on_a_finished_run_uses_the_store(finished: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "finished-with-model"
    shutil.copytree(finished, run_dir)
    model = [
        {"name": "(model)", "type": "Sequential", "depth": 0, "params": 208, "trainable": 208},
        {"name": "0", "type": "Linear", "depth": 1, "params": 144, "trainable": 144, "own": 144},
        {"name": "1", "type": "ReLU", "depth": 1, "params": 0, "trainable": 0, "own": 0},
        {"name": "2", "type": "Linear", "depth": 1, "params": 64, "trainable": 64, "own": 64},
    ]
    with sqlite3.connect(run_dir / "run.sqlite") as db:
        db.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (json.dumps(model),))

    async def go() -> None:
        app = make_app(run_dir)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("4")
            await until(pilot, lambda: app.screen.query("#model-tree"), "the Model tab")
            tree = app.screen.query_one("#model-tree", Tree)
            await until(pilot, lambda: tree.root.children, "the module tree")
            await until(pilot, lambda: tree.has_focus, f"the tree focused, not {app.focused}")
            await pilot.press("down")
            await until(pilot, lambda: "16×8" in screen_text(app), "0.weight from the store")
            text = screen_text(app)
            assert "0  Linear" in text and "128  grad" in text, text
            assert "known while" in text, text

    asyncio.run(go())


def test_a_tab_key_pressed_as_the_app_opens_sticks(finished: Path) -> None:
    """The Overview's start-up focus was handled after an early tab key and took it back."""

    async def go() -> None:
        app = make_app(finished)
        async with app.run_test(size=(120, 40)) as pilot:
            tabs = app.query_one(TabbedContent)
            await until(pilot, lambda: app.snapshot is not None, "the first snapshot")
            await pilot.press("4")
            await pilot.pause(1.0)
            assert tabs.active == "model"
            await until(pilot, lambda: app.screen.query("#model-tree"), "the Model tab")
            await until(pilot, lambda: app.screen.query_one("#model-tree").has_focus, "focus")

    asyncio.run(go())


def test_crashed_run_suggests_resume(finished: Path, tmp_path: Path) -> None:
    """Issue 13 item 13: the dashboard on a crashed run says how to go on from its checkpoint."""
    run_dir = tmp_path / "crashed-run"
    shutil.copytree(finished, run_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with sqlite3.connect(run_dir / "run.sqlite") as db:  # an engine that died mid-run, here
        for key, value in (
            ("status", "running"),
            ("pid", dead.pid),
            ("host", socket.gethostname()),
        ):
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")

    async def go() -> None:
        app = make_app(run_dir)
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: state(app) is RunStatus.CRASHED, "the crashed run")
            await until(
                pilot,
                lambda: "dltui train --resume crashed-run" in screen_text(app),
                "the --resume hint in the header",
            )
            await pilot.resize_terminal(80, 24)  # the command itself stays whole at 80 columns
            await until(
                pilot,
                lambda: "dltui train --resume crashed-run" in screen_text(app).splitlines()[1],
                "the command at 80 columns",
            )

    asyncio.run(go())


def test_run_keys_leave_the_runs_browser_its_own_keys(live: Path) -> None:
    """R opens the Runs browser over the dashboard; its space (mark) and c (compare) must not
    pause the run or take a checkpoint."""

    async def go() -> None:
        app = make_app(live)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: state(app) is RunStatus.RUNNING, "a running run")
            before = last_id(live)
            await pilot.press("R")
            await until(pilot, lambda: type(app.screen).__name__ == "RunsScreen", "the browser")
            await pilot.press("space", "c")
            await pilot.pause(1.5)
            assert not events(live, "paused at step", before)
            assert not events(live, "checkpoint", before)
            assert type(app.screen).__name__ == "RunsScreen"
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is app.header.screen, "back to the dashboard")
            await pilot.press("space")  # and the run keys work again
            await until(pilot, lambda: events(live, "paused at step", before), "space pauses")
            await pilot.press("space")
            await until(pilot, lambda: events(live, "resumed at step", before), "space resumes")

    asyncio.run(go())
