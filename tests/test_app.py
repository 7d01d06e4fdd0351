"""The dashboard driven by Pilot against real engine processes on a tiny CPU recipe.

Every steering key is pressed in the app and its effect is read back from the run's store (the
engine's own record), not from the app. Two engines start together at the top of the module
(they import torch side by side): one steered by most tests, detached from, then stopped from
the quit dialog; the other killed with SIGKILL under the open app.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import spawn_engine
from screen import notes, screen_text
from test_app_snapshots import write_finished_run
from textual.pilot import Pilot
from textual.widgets import Input, Label, TabbedContent

from dltui.run.reader import RunReader
from dltui.tui.app import DltuiApp, make_app
from dltui.tui.screens.dialogs import HelpScreen, LrDialog, QuitDialog, parse_lr
from dltui.tui.widgets.plot import Plot

RECIPE = '''
"""A tiny regression that takes ~30 ms a step and never ends on its own."""
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
val_loader = Slow(2)
model = nn.Linear(4, 1)
loss_fn = nn.MSELoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
epochs = 10
'''
SIZE = (120, 40)


class Engine:
    """A real `python -m dltui.engine` process on its own run directory."""

    def __init__(self, recipe: Path, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.proc = spawn_engine(recipe, run_dir, run_dir.parent / f"{run_dir.name}.log")

    def wait_ready(self, timeout: float = 90.0) -> Engine:
        """Until the socket is up and a few steps are in the store."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (
                self.run_dir.parent / f"{self.run_dir.name}.log"
            ).read_text()
            if (self.run_dir / "control.sock").exists() and (self.run_dir / "run.sqlite").exists():
                with RunReader(self.run_dir) as r:
                    if (r.meta().get("progress") or {}).get("step", 0) >= 3:
                        return self
            time.sleep(0.1)
        raise AssertionError(f"engine for {self.run_dir} not ready in {timeout} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def meta(self) -> dict:
        with RunReader(self.run_dir) as r:
            return r.meta()

    def events(self, kind: str = "command") -> list[dict]:
        with RunReader(self.run_dir) as r:
            return r.events(kind=kind, limit=10_000)


@pytest.fixture(scope="module", autouse=True)
def engines(tmp_path_factory: pytest.TempPathFactory):
    """Started when the module starts: torch imports while the finished-run tests run first."""
    root = tmp_path_factory.mktemp("app")
    recipe = root / "slow.py"
    recipe.write_text(RECIPE)
    (root / "runs").mkdir()
    made = {name: Engine(recipe, root / "runs" / name) for name in ("steer", "kill")}
    try:
        yield made
    finally:
        for e in made.values():
            e.kill()


@pytest.fixture
def steer(engines) -> Engine:
    return engines["steer"].wait_ready()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_finished_run(tmp_path_factory.mktemp("done") / "finished-run")


def run(coro) -> None:
    asyncio.run(coro)


async def until(pilot: Pilot, cond: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Let the app run until cond() is true (polling the store from the test's thread)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.1)


def state(app: DltuiApp) -> str | None:
    """The state's word as the header shows it: RUNNING, PAUSED, FINISHED..."""
    return app.snapshot.state.label if app.snapshot else None


def plotted(app: DltuiApp) -> bool:
    return bool(app.overview.plots[0].traces)


def new_events(engine: Engine, before: int, text: str) -> list[dict]:
    return [e for e in engine.events() if e["id"] > before and text in e["message"]]


def last_event_id(engine: Engine) -> int:
    evs = engine.events()
    return evs[-1]["id"] if evs else 0


# -- a finished run ---------------------------------------------------------------------------


def test_finished_run_is_read_only(finished: Path) -> None:
    async def go() -> None:
        app = make_app(finished)
        async with app.run_test(size=SIZE) as pilot:
            await until(
                pilot, lambda: state(app) == "FINISHED" and plotted(app), "the finished run"
            )
            for key in ("space", "n", "l", "plus", "minus", "e", "c"):
                app.clear_notifications()
                await pilot.press(key)
                await pilot.pause()
                assert any("run finished: read-only" in n for n in notes(app)), key
                assert not isinstance(app.screen, LrDialog)
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running, "quit at once")

    run(go())


def test_small_sizes_and_ascii(finished: Path) -> None:
    async def go(size: tuple[int, int], ascii: bool) -> str:
        app = make_app(finished, ascii=ascii)
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: plotted(app), "plots")
            await pilot.pause(0.3)
            return screen_text(app)

    text = asyncio.run(go((80, 24), False))
    assert "FINISHED" in text and "loss" in text and "acc" in text
    assert "FINISHED" in asyncio.run(go((40, 12), False))
    text = asyncio.run(go((120, 40), True))
    assert "FINISHED" in text and "events" in text
    bad = sorted({c for c in text if ord(c) > 127})
    assert not bad, f"non-ASCII characters with ascii=True: {bad}"


def test_no_color_keeps_the_state_words(finished: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")

    async def go() -> None:
        app = make_app(finished)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: plotted(app), "plots")
            assert app.no_color
            assert "FINISHED" in screen_text(app) and "read-only" in screen_text(app)

    run(go())


def test_before_the_store_exists(tmp_path: Path) -> None:
    """`dltui train` opens the app while the engine still imports torch; it may die doing so."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    async def go(engine_pid: int | None, want: str) -> None:
        app = make_app(tmp_path / "not-yet", engine_pid=engine_pid, owns_engine=True)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: want in screen_text(app), want)
            if want == "CRASHED":
                assert "exited before the run started" in screen_text(app)
                await pilot.press("q")  # nothing to stop or detach from
                await until(pilot, lambda: not app.is_running, "exit")

    run(go(None, "STARTING"))
    run(go(dead.pid, "CRASHED"))


def test_parse_lr_mirrors_the_engine() -> None:
    assert parse_lr("0.01") == ("set", 0.01)
    assert parse_lr(" *0.5 ") == ("mul", 0.5)
    assert parse_lr("/2") == ("mul", 0.5)
    for bad, words in (
        ("", "not a number"),
        ("abc", "not a number"),
        ("-1", "greater than zero"),
        ("*0", "factor"),
        ("inf", "not finite"),
        ("nan", "not finite"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_lr(bad)


def test_tui_never_imports_torch() -> None:
    code = (
        "import sys, dltui.tui.app, dltui.tui.panes.overview, dltui.tui.screens.dialogs; "
        "bad = [m for m in ('torch', 'numpy') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# -- steering a live run ----------------------------------------------------------------------


def test_pause_step_resume(steer: Engine) -> None:
    async def go() -> None:
        app = make_app(steer.run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await until(
                pilot, lambda: state(app) == "RUNNING" and plotted(app), "a running, plotted run"
            )
            before = last_event_id(steer)
            await pilot.press("space")
            await until(pilot, lambda: new_events(steer, before, "paused at step"), "a pause event")
            await until(pilot, lambda: steer.meta()["progress"]["paused"], "progress paused")
            await until(pilot, lambda: "PAUSED" in screen_text(app), "PAUSED in the header")
            step = steer.meta()["progress"]["step"]
            await pilot.press("n")
            await until(
                pilot, lambda: new_events(steer, before, "step 1 from step"), "a step event"
            )
            await until(
                pilot, lambda: steer.meta()["progress"]["step"] == step + 1, "one more step"
            )
            await pilot.pause(0.5)
            assert steer.meta()["progress"]["step"] == step + 1  # and no more: still paused
            await pilot.press("space")
            await until(
                pilot, lambda: new_events(steer, before, "resumed at step"), "a resume event"
            )
            await until(pilot, lambda: state(app) == "RUNNING", "RUNNING again")
            await until(
                pilot, lambda: any("resumed" in n for n in notes(app)), "the resume acknowledged"
            )

    run(go())


def test_step_while_running_explains(steer: Engine) -> None:
    async def go() -> None:
        app = make_app(steer.run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: state(app) == "RUNNING", "a running run")
            await pilot.press("n")
            await until(
                pilot,
                lambda: any("pause the run first" in n for n in notes(app)),
                "the engine's error",
            )

    run(go())


def test_lr_dialog_validates_and_halves(steer: Engine) -> None:
    async def go() -> None:
        app = make_app(steer.run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await until(
                pilot, lambda: state(app) == "RUNNING" and app.snapshot.lrs, "a running run"
            )
            lr0 = steer.meta()["progress"]["lrs"][0]
            before = last_event_id(steer)
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LrDialog), "the LR dialog")
            await pilot.press(*"-1")
            error = app.screen.query_one("#lr-error", Label)
            assert "greater than zero" in str(error.render())
            await pilot.press("enter")  # refused: the dialog stays, nothing is sent
            assert isinstance(app.screen, LrDialog)
            app.screen.query_one(Input).value = ""
            await pilot.press(*"abc", "enter")
            assert "not a number" in str(error.render())
            assert isinstance(app.screen, LrDialog)
            app.screen.query_one(Input).value = ""
            await pilot.press(*"*0.5", "enter")
            await until(pilot, lambda: not isinstance(app.screen, LrDialog), "the dialog to close")
            await until(pilot, lambda: new_events(steer, before, "lr "), "an lr event")
            assert len(new_events(steer, before, "lr ")) == 1  # the bad inputs sent nothing
            await until(
                pilot,
                lambda: steer.meta()["progress"]["lrs"][0] == pytest.approx(lr0 / 2),
                "lr halved in the store",
            )
            with RunReader(steer.run_dir) as r:
                await until(
                    pilot, lambda: r.last("lr/0")[1] == pytest.approx(lr0 / 2), "lr/0 halved"
                )
            await until(
                pilot, lambda: any("->" in n for n in notes(app)), "the change acknowledged"
            )
            await pilot.press("escape")

    run(go())


def test_plus_minus_double_and_halve(steer: Engine) -> None:
    async def go() -> None:
        app = make_app(steer.run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: state(app) == "RUNNING", "a running run")
            lr0 = steer.meta()["progress"]["lrs"][0]
            await pilot.press("plus")
            await until(
                pilot, lambda: steer.meta()["progress"]["lrs"][0] == pytest.approx(2 * lr0), "lr x2"
            )
            await pilot.press("minus")
            await until(
                pilot, lambda: steer.meta()["progress"]["lrs"][0] == pytest.approx(lr0), "lr back"
            )

    run(go())


def test_eval_toggle_and_checkpoint(steer: Engine) -> None:
    async def go() -> None:
        app = make_app(steer.run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: state(app) == "RUNNING", "a running run")
            before = last_event_id(steer)
            await pilot.press("e")
            await until(pilot, lambda: new_events(steer, before, "mode eval"), "a mode eval event")
            await until(pilot, lambda: "EVAL" in screen_text(app), "EVAL in the header")
            await pilot.press("e")
            await until(
                pilot, lambda: new_events(steer, before, "mode train"), "a mode train event"
            )
            await until(pilot, lambda: state(app) == "RUNNING", "RUNNING again")
            ck_before = len(steer.events("checkpoint"))
            await pilot.press("c")
            await until(
                pilot, lambda: len(steer.events("checkpoint")) > ck_before, "a checkpoint event"
            )
            await until(pilot, lambda: any("checkpoint saved" in n for n in notes(app)), "the ack")

    run(go())


def test_help_tabs_and_palette(steer: Engine) -> None:
    checkpoints = len(steer.events("checkpoint"))

    async def go() -> None:
        app = make_app(steer.run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("c")  # keys under a dialog do nothing
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            tabs = app.query_one(TabbedContent)
            for key, tab in zip(
                "23451", ("layers", "tensors", "model", "console", "overview"), strict=True
            ):
                await pilot.press(key)
                assert tabs.active == tab
            titles = [c.title for c in app.get_system_commands(app.screen)]
            assert any("Pause" in t for t in titles) and any("LR" in t for t in titles)
            await pilot.pause(0.5)
            assert (
                len(steer.events("checkpoint")) == checkpoints
            )  # 'c' under the help screen: nothing

    run(go())


def test_overview_plot_keys_and_sizes(steer: Engine) -> None:
    async def go() -> None:
        app = make_app(steer.run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: plotted(app), "plots")
            plot = app.query_one("#plot-loss", Plot)
            for key, check in (
                ("s", lambda: plot.smoothing == 0.6),
                ("g", lambda: plot.log_y),
                ("x", lambda: plot.x_time),
            ):
                await pilot.press(key)
                await until(pilot, check, f"key {key}")
            await until(pilot, lambda: "ema 0.6" in screen_text(app), "the plot settings shown")
            for size in ((80, 24), (60, 16), (40, 12), (30, 8), (120, 40)):
                await pilot.resize_terminal(*size)
                await pilot.pause(0.3)
                assert "RUNNING" in screen_text(app) or size[1] < 12

    run(go())


def test_quit_detach_leaves_engine_running(engines) -> None:
    steer = engines["steer"].wait_ready()

    async def go() -> None:
        app = make_app(steer.run_dir, owns_engine=True)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: state(app) == "RUNNING", "a running run")
            await pilot.press("q")
            assert isinstance(app.screen, QuitDialog)
            await pilot.press("escape")  # cancel
            assert not isinstance(app.screen, QuitDialog) and app.is_running
            await pilot.press("q", "d")
            await pilot.pause(0.2)
        assert app.quit_choice == "detach"

    run(go())
    time.sleep(0.5)
    assert steer.proc.poll() is None
    assert steer.meta()["status"] == "running"


def test_quit_stop_ends_the_run(engines) -> None:
    eng = engines["steer"].wait_ready()  # after the detach test: the same engine, still running

    async def go() -> None:
        app = make_app(eng.run_dir, engine_pid=eng.proc.pid, owns_engine=True)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: state(app) == "RUNNING", "a running run")
            await pilot.press("q")
            assert isinstance(app.screen, QuitDialog)
            await pilot.press("s")
            await until(pilot, lambda: not app.is_running, "the app to exit after the stop reply")
        assert app.quit_choice == "stop"

    run(go())
    assert eng.proc.wait(timeout=30) == 0
    assert eng.meta()["status"] == "stopped"


def test_engine_killed_shows_crashed_and_keeps_plots(engines) -> None:
    eng = engines["kill"].wait_ready()

    async def go() -> None:
        app = make_app(eng.run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: state(app) == "RUNNING" and plotted(app), "a plotted run")
            eng.proc.send_signal(signal.SIGKILL)
            eng.proc.wait()
            t0 = time.monotonic()
            await until(
                pilot, lambda: "CRASHED" in screen_text(app), "CRASHED in the header", timeout=5
            )
            assert time.monotonic() - t0 < 5
            assert "read-only" in screen_text(app)
            assert plotted(app)
            await pilot.press("space")
            await until(
                pilot, lambda: any("run crashed: read-only" in n for n in notes(app)), "why not"
            )
            await pilot.press("q")  # no engine to stop: quits at once
            await until(pilot, lambda: not app.is_running, "exit")

    run(go())
