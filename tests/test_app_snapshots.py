"""Snapshot tests of the dashboard's own screens on a finished run written deterministically.

The store is written with RunStore directly (fixed wall times and values, no engine), so the
header's times come from the stored started/ended and every snapshot is byte-for-byte stable.
Update with `pytest tests/test_app_snapshots.py --snapshot-update` after a deliberate change.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from dltui.engine.store import RunStore
from dltui.run import wire
from dltui.tui.app import make_app
from dltui.tui.screens.dialogs import LrDialog, QuitDialog

T0 = 1_700_000_000.0  # the run's fixed start; every wall time is an offset from it


def write_finished_run(
    run_dir: Path, steps: int = 400, steps_per_epoch: int = 50, gpus: int = 0
) -> Path:
    """A finished 400-step run: loss/acc/lr, val per epoch, two commands, checkpoints, system.

    With gpus > 0 the system rows carry NVML-style GPU readings (gpu0.util ...): the one fake
    here, since this machine has no NVIDIA GPU; without, the engine's "unavailable" note.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    st = RunStore(run_dir / "run.sqlite")
    st.start()
    epochs = steps // steps_per_epoch
    st.params(
        [
            ("0.weight", [16, 8], 128, True),
            ("0.bias", [16], 16, True),
            ("2.weight", [4, 16], 64, True),
        ]
    )
    st.event(wire.EV_RUN, "run started: tiny.py on cpu", step=0, wall=T0)
    if not gpus:  # as the engine's sampler says it: an event for people, meta for the panel
        st.event(
            wire.EV_INFO,
            "GPU metrics unavailable: NVML library not found (no driver)",
            level="warning",
            wall=T0 + 1,
        )
        st.set_meta(
            **{wire.META_GPUS: {"note": "NVML library not found (no driver)", "devices": []}}
        )
    lr = 0.1
    for step in range(1, steps + 1):
        wall = T0 + step * 0.5
        if step == 150:
            st.event(
                wire.EV_COMMAND,
                f"lr 0.1 -> 0.05 (all groups) at step {step}",
                step=step,
                wall=wall,
                data={"cmd": "lr"},
            )
            lr = 0.05
        if step == 300:
            st.event(
                wire.EV_COMMAND,
                f"paused at step {step}",
                step=step,
                wall=wall,
                data={"cmd": "pause"},
            )
        if step == 320:
            st.event(
                wire.EV_ALERT,
                "gradient norm spike in 0.weight at step 320: 12.5 (11x its recent mean 1.1)",
                step=step,
                level="warning",
                wall=wall,
            )
        loss = 2.3 * math.exp(-step / 120) + 0.1 + 0.08 * math.sin(step * 1.7)
        acc = 1 - loss / 2.5
        st.scalars(
            step,
            (step - 1) // steps_per_epoch,
            wire.TRAIN,
            wall,
            {
                "loss": loss,
                "acc": acc,
                "lr/0": lr,
                "step_time": 0.01,
                "data_time": 0.002,
                "samples_per_s": 2048.0 + step % 7,
            },
        )
        if step % steps_per_epoch == 0:
            st.scalars(
                step,
                step // steps_per_epoch,
                wire.VAL,
                wall,
                {"loss": loss * 1.2 + 0.05, "acc": acc - 0.05},
            )
            st.event(
                wire.EV_CHECKPOINT,
                f"checkpoint 'last' at step {step} (epoch end)",
                step=step,
                wall=wall,
            )
    for i in range(60):
        sample = {
            "cpu_percent": 40 + 30 * math.sin(i / 5),
            "ram_used": 4e9 + 1e7 * i,
            "ram_total": 16e9,
            "ram_percent": 25.0,
            "proc_rss": 5e8 + 1e6 * i,
            "proc_cpu": 95.0,
        }
        for g in range(gpus):
            sample.update(
                {
                    f"gpu{g}.util": 60 + 35 * math.sin(i / 4 + g),
                    f"gpu{g}.mem_used": 3e10 + 2e8 * i,
                    f"gpu{g}.mem_total": 8.5e10,
                    f"gpu{g}.temp": 55 + i / 6,
                    f"gpu{g}.power": 300 + 2 * i,
                }
            )
        st.system(T0 + steps * 0.5 - 60 + i, sample)
    st.event(wire.EV_STATUS, f"run finished at step {steps}", step=steps, wall=T0 + steps * 0.5)
    progress = {
        "step": steps,
        "epoch": epochs,
        "batch": 0,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": steps,
        "epochs": epochs,
        "lrs": [lr],
        "mode": "train",
        "paused": False,
        "best_val_loss": 0.2,
    }
    st.set_meta(
        run_id=run_dir.name,
        script="/x/tiny.py",
        status=wire.FINISHED,
        started=T0,
        ended=T0 + steps * 0.5,
        hparams={"lr": 0.1},
        model=[],
        device="cpu",
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps,
        progress=progress,
        host="elsewhere",
        pid=1,
        learner=learner_meta(steps_per_epoch),
    )
    st.close()
    return run_dir


def learner_meta(steps_per_epoch: int) -> dict:
    """meta['learner'] as the engine records it, from real torch objects of the run's shape."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from dltui.engine import learner

    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.Linear(16, 4, bias=False))
    data = DataLoader(TensorDataset(torch.zeros(32 * steps_per_epoch - 7, 8)), batch_size=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return {
        "source": "recipe",
        "train": learner.loader_arithmetic(data, 1, steps_per_epoch),
        "val": None,
        "optimizers": [learner.optimizer_description("optimizer", opt)],
        "loss": learner.loss_description(nn.CrossEntropyLoss()),
        "schedulers": [],
        "eval": {"grad": False, **learner.eval_changes([model])},
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A fixed directory name: the run's name is drawn in the header.
    return write_finished_run(tmp_path_factory.mktemp("snap") / "20240101-000000-tiny")


@pytest.fixture(scope="module")
def gpu_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_finished_run(tmp_path_factory.mktemp("snap") / "20240101-000000-gpu", gpus=1)


async def drawn(pilot: Pilot) -> None:
    """Wait for the poller and the series worker, then for the last repaint."""
    app = pilot.app
    for _ in range(100):
        if app.snapshot is not None and all(p.traces for p in app.overview.plots):
            break
        await pilot.pause(0.05)
    await pilot.pause(0.3)
    await pilot.wait_for_scheduled_animations()


def shot(
    snap_compare, run_dir: Path, size: tuple[int, int], before=None, ascii: bool = False
) -> bool:
    async def run_before(pilot: Pilot) -> None:
        await drawn(pilot)
        if before is not None:
            await before(pilot)
            await pilot.pause(0.2)
        for inp in pilot.app.screen.query(Input):
            inp.cursor_blink = False  # a blinking cursor would flip between two snapshots

    return snap_compare(make_app(run_dir, ascii=ascii), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
def test_overview(snap_compare, run_dir: Path, size: tuple[int, int]) -> None:
    assert shot(snap_compare, run_dir, size)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
def test_overview_with_gpus(snap_compare, gpu_run_dir: Path, size: tuple[int, int]) -> None:
    assert shot(snap_compare, gpu_run_dir, size)


def test_overview_smoothed_log_time(snap_compare, run_dir: Path) -> None:
    async def keys(pilot: Pilot) -> None:
        await pilot.press("s", "s", "g", "x")
        pilot.app.clear_notifications()

    assert shot(snap_compare, run_dir, (120, 40), keys)


def test_overview_ascii(snap_compare, run_dir: Path) -> None:
    assert shot(snap_compare, run_dir, (120, 40), ascii=True)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
def test_lr_dialog(snap_compare, run_dir: Path, size: tuple[int, int]) -> None:
    async def open_dialog(pilot: Pilot) -> None:
        # A finished run refuses `l`; the dialog is pushed as a live run's `l` would push it.
        await pilot.app.push_screen(LrDialog([0.05]))
        await pilot.press(*"*0")  # invalid so far: the error line shows

    assert shot(snap_compare, run_dir, size, open_dialog)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
def test_quit_dialog(snap_compare, run_dir: Path, size: tuple[int, int]) -> None:
    async def open_dialog(pilot: Pilot) -> None:
        await pilot.app.push_screen(QuitDialog(run_dir.name, owns_engine=True))

    assert shot(snap_compare, run_dir, size, open_dialog)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
def test_help(snap_compare, run_dir: Path, size: tuple[int, int]) -> None:
    async def open_help(pilot: Pilot) -> None:
        await pilot.press("question_mark")

    assert shot(snap_compare, run_dir, size, open_help)
