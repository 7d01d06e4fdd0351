"""The dashboard on script runs (the user's own loop): what it shows and how it steers them.

A script run is written with RunStore for what the dashboard draws (driver "script", steering
without eval, two optimizers, a dltui.log scalar, no epochs or total), and a real engine runs a
tiny two-optimizer script for the control path: the LR dialog changes the second optimizer only,
read back from the engine, and `e` says why a script without dltui.on_eval has no eval.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import spawn_engine
from screen import notes
from textual.pilot import Pilot
from textual.widgets import Input, OptionList
from textual.widgets._footer import FooterKey

from dltui.engine.store import RunStore
from dltui.run import wire
from dltui.run.client import ControlClient
from dltui.run.reader import RunReader
from dltui.tui.app import DltuiApp, make_app
from dltui.tui.screens.dialogs import HelpScreen, LrChoice, LrDialog, lr_targets

SCRIPT = '''
"""A GAN's shape in miniature: two models, two optimizers, dltui.log, no on_eval; ~10 ms a step."""
import sys
import time

import torch
from torch import nn

import dltui

steps = int(sys.argv[1])  # the file's own argv
torch.manual_seed(0)
netD = nn.Linear(2, 1)
netG = nn.Linear(3, 2)
optD = torch.optim.SGD(netD.parameters(), lr=0.01)
optG = torch.optim.Adam(netG.parameters(), lr=0.001)
bce = nn.BCEWithLogitsLoss()
for i in range(steps):
    real = torch.randn(8, 2) + 2.0
    fake = netG(torch.randn(8, 3))
    optD.zero_grad()
    d_loss = bce(netD(real), torch.ones(8, 1)) + bce(netD(fake.detach()), torch.zeros(8, 1))
    d_loss.backward()
    optD.step()
    optG.zero_grad()
    g_loss = bce(netD(fake), torch.ones(8, 1))
    g_loss.backward()
    optG.step()
    dltui.log(d_real=torch.sigmoid(netD(real)).mean())
    time.sleep(0.01)
'''
T0 = 1_700_000_000.0


class ScriptEngine:
    """`python -m dltui.engine --run-dir DIR --detached -- script.py ARGS`: options before the
    file, the file's own argv after it."""

    def __init__(self, script: Path, run_dir: Path, *args: str) -> None:
        self.run_dir = run_dir
        self.log_path = run_dir.parent / f"{run_dir.name}.log"
        self.proc = spawn_engine(script, run_dir, self.log_path, args)

    def wait_ready(self, timeout: float = 60.0) -> ScriptEngine:
        """Until the socket is up and both optimizers have stepped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            if (self.run_dir / "control.sock").exists() and (self.run_dir / "run.sqlite").exists():
                with RunReader(self.run_dir) as r:
                    meta = r.meta()
                    if len(meta.get("optimizers") or []) == 2 and r.last("lr/optG/0"):
                        return self
            time.sleep(0.1)
        raise AssertionError(
            f"script engine not ready in {timeout} s:\n{self.log_path.read_text()}"
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module", autouse=True)
def engine(tmp_path_factory: pytest.TempPathFactory):
    """Started with the module: torch imports while the store-only tests run."""
    root = tmp_path_factory.mktemp("scripts")
    script = root / "tiny_gan.py"
    script.write_text(SCRIPT)
    (root / "runs").mkdir()
    e = ScriptEngine(script, root / "runs" / "gan", "1000000")
    try:
        yield e
    finally:
        e.kill()


def write_script_run(run_dir: Path, steps: int = 60) -> Path:
    """A finished script run as the engine writes one: no epochs or total, eval unsupported,
    optimizers d (the run's) and g, g's loss and LR under their names, a dltui.log scalar and a
    value only the validation phase has."""
    run_dir.mkdir(parents=True, exist_ok=True)
    st = RunStore(run_dir / "run.sqlite")
    st.start()
    st.event(wire.EV_RUN, "run started: script gan.py --steps 60", step=0, wall=T0)
    for step in range(1, steps + 1):
        wall = T0 + step * 0.1
        st.scalars(
            step,
            0,
            wire.TRAIN,
            wall,
            {
                "loss": 0.7 + 0.1 * math.sin(step / 5),
                "lr/0": 2e-4,
                "lr/g/0": 1e-3 if step < 30 else 5e-4,
                "loss/g": 1.1 - step / 200,
                "d_x": 0.5 + step / 300,
                "step_time": 0.01,
                "samples_per_s": 640.0,
            },
        )
    st.scalars(steps, 0, wire.VAL, T0 + steps * 0.1, {"d_real": 0.6})
    progress = {
        "step": steps,
        "epoch": 0,
        "batch": steps,
        "steps_per_epoch": None,
        "total_steps": None,
        "epochs": None,
        "lrs": [2e-4],
        "mode": "train",
        "paused": False,
        "best_val_loss": None,
    }
    steering = {k: k not in ("eval", "resume") for k in wire.STEERING_KEYS}
    st.set_meta(
        run_id=run_dir.name,
        script="/x/gan.py",
        status=wire.FINISHED,
        started=T0,
        ended=T0 + steps * 0.1,
        model=[],
        device="cpu",
        epochs=None,
        steps_per_epoch=None,
        total_steps=None,
        progress=progress,
        host="elsewhere",
        pid=1,
        driver=wire.DRIVER_SCRIPT,
        steering=steering,
        file_args=["--steps", "60"],
        optimizers=[
            {"name": "d", "type": "Adam", "groups": 1},
            {"name": "g", "type": "Adam", "groups": 1},
        ],
        models=["netD", "netG"],
    )
    st.close()
    return run_dir


@pytest.fixture(scope="module")
def script_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_script_run(tmp_path_factory.mktemp("store") / "20240101-000000-gan")


def run(coro) -> None:
    asyncio.run(coro)


async def until(pilot: Pilot, cond: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.05)


def header_text(app: DltuiApp) -> str:
    return str(app.header.render())


def footer_disabled(app: DltuiApp, key: str) -> bool | None:
    """Whether the footer shows `key` dimmed (None: not in the footer yet)."""
    found = [k for k in app.screen.query(FooterKey) if k.key == key]
    return found[0].has_class("-disabled") if found else None


# -- what a script run looks like (a store, no engine) ------------------------------------------


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
def test_script_header_says_script_and_unknown_totals(script_run: Path, size) -> None:
    async def go() -> None:
        app = make_app(script_run)
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.snapshot is not None and app.snapshot.meta, "a snapshot")
            await pilot.pause(0.2)
            text = header_text(app)
            assert "script" in text and "step 60/?" in text
            assert "epoch" not in text and "batch" not in text  # a script's loop has neither
            assert "total unknown" in text and "%" not in text and "ETA" not in text
            assert "None" not in text
            if size[0] >= 100:
                assert "lr d 2.00e-04  g 5.00e-04" in text  # each optimizer's newest LR

    run(go())


def test_a_tab_activated_without_a_screen_is_ignored(script_run: Path) -> None:
    """TabbedContent may announce a tab while the app comes up or is torn down, when the header
    has no screen: the handler lets it be (it raised NoScreen and failed the app once in CI)."""
    app = make_app(script_run)  # not running: no screen
    app._focus_pane("overview")

    async def go() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.snapshot is not None, "a snapshot")
        app._focus_pane("overview")  # torn down

    run(go())


def test_metric_cycles_through_every_scalar_and_lr_by_optimizer(script_run: Path) -> None:
    async def go() -> None:
        app = make_app(script_run)
        async with app.run_test(size=(120, 40)) as pilot:
            plot_loss, plot_metric, plot_lr = app.overview.plots
            await until(pilot, lambda: plot_lr.traces and plot_metric.traces, "the plots")
            assert [t.label for t in plot_lr.traces] == ["d", "g"]
            seen = []
            for _ in range(3):
                name = app.overview.metric_name
                await until(pilot, lambda n=name: plot_metric.border_title.startswith(n), "a title")
                seen.append(plot_metric.border_title)
                await pilot.press("m")
                await until(pilot, lambda n=name: app.overview.metric_name != n, "the next metric")
            # the other optimizer's loss, the dltui.log value and the val-only value; never the
            # loss (its own plot), an LR or a timing
            assert seen == ["loss/g 1/3", "d_x 2/3", "d_real 3/3"]
            assert app.overview.metric_name == "loss/g"  # round again

    run(go())


def test_unsupported_eval_is_dimmed_and_explained(script_run: Path) -> None:
    async def go() -> None:
        app = make_app(script_run)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.snapshot is not None and app.snapshot.meta, "a snapshot")
            await pilot.pause(0.1)
            # Finished, so read-only: no steering key is offered at all (issue 11); the live
            # engine's test below sees e dimmed in the footer and explained when pressed.
            assert app.check_action("toggle_mode", ()) is False
            await until(pilot, lambda: footer_disabled(app, "q") is False, "the footer")
            assert footer_disabled(app, "e") is None and footer_disabled(app, "c") is None
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
            help_text = "\n".join(f"{k} {v}" for _, rows in app.screen.sections for k, v in rows)
            assert "script" in help_text and "gan.py --steps 60" in help_text
            assert "d (Adam, 1 group), g (Adam, 1 group)" in help_text
            assert "dltui.on_eval(evaluate)" in help_text
            assert "unavailable for this run" in help_text
            await pilot.press("escape")

    run(go())


def test_lr_dialog_targets() -> None:
    lrs = {"d": [0.1, 0.2], "g": [0.01]}
    targets = lr_targets(lrs, {"d": 2, "g": 1})
    assert [t for t, _ in targets] == [
        LrChoice("", "d", None),
        LrChoice("", "d", 0),
        LrChoice("", "d", 1),
        LrChoice("", "g", None),
    ]
    assert "0.1, 0.2" in targets[0][1] and "group 1" in targets[2][1] and "0.01" in targets[3][1]
    assert lr_targets({"": [0.05]}, {}) == [(LrChoice("", "", None), "0.05")]  # no list to show


# -- a real script engine ---------------------------------------------------------------------


def test_lr_dialog_steers_the_second_optimizer_and_e_explains(engine: ScriptEngine) -> None:
    engine.wait_ready()
    client = ControlClient(engine.run_dir, timeout=10)

    def lrs() -> dict[str, list[float]]:
        return client.call("status").state["optimizers"]

    before = lrs()
    assert set(before) == {"optD", "optG"}

    async def go() -> None:
        app = make_app(engine.run_dir)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(
                pilot,
                lambda: (
                    app.snapshot is not None
                    and app.snapshot.state.label == "RUNNING"
                    and len(app.snapshot.optimizer_lrs) == 2
                ),
                "a running two-optimizer run",
            )
            assert "script" in header_text(app)
            await until(pilot, lambda: footer_disabled(app, "e"), "e dimmed in the footer")
            await pilot.press("e")
            await until(
                pilot,
                lambda: any("dltui.on_eval" in n for n in notes(app)),
                "the engine's reason eval is unavailable",
            )
            assert any(n.startswith("eval: this script has no evaluation") for n in notes(app))

            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LrDialog), "the LR dialog")
            options = app.screen.query_one(OptionList)
            labels = [
                str(options.get_option_at_index(i).prompt) for i in range(options.option_count)
            ]
            assert labels[0].startswith("optD") and "0.01" in labels[0]
            assert labels[1].startswith("optG") and "0.001" in labels[1]
            assert app.screen.query_one(Input).has_focus  # typing goes to the value at once
            await pilot.press("down", *"*0.5", "enter")
            await until(pilot, lambda: not isinstance(app.screen, LrDialog), "the dialog to close")
            await until(pilot, lambda: any("of 'optG'" in n for n in notes(app)), "the ack")
        after = lrs()
        assert after["optG"] == pytest.approx([before["optG"][0] / 2])
        assert after["optD"] == pytest.approx(before["optD"])  # the other optimizer untouched

    try:
        run(go())
    finally:
        client.close()
