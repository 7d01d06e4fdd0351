"""The system panel: eight GPUs and a process table at 120x40, one GPU with histories, this run's
CUDA memory, and one readable line each for no GPU, MIG and no permission to list processes.

Snapshots are built the way the poller builds them (system rows + the sampler's meta), from the
fake NVML going through the real sampler, so the panel reads exactly what an engine writes.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from textual.app import App, ComposeResult

from dltui.engine.nvml import Nvml
from dltui.engine.sampler import Sampler
from dltui.tui.poller import RunSnapshot
from dltui.tui.widgets.system import SystemPanel

sys.path.insert(0, os.path.dirname(__file__))
import fake_nvml  # noqa: E402


def snapshot(module=None, samples: int = 5, extra: dict | None = None) -> RunSnapshot:
    """A live run's snapshot after `samples` samples of the real sampler on this NVML."""
    meta: dict = {}
    rows: list[dict] = []
    source = Nvml(module) if module is not None else Nvml(loader=_no_nvml)
    s = Sampler(lambda w, v: rows.append(dict(v)), lambda m: None, gpu_source=source)
    s._meta = meta.update
    for _ in range(samples):
        s.sample_once()
    system = {**rows[-1], **(extra or {})}
    history = {k: tuple(r[k] for r in rows if k in r) for k in rows[-1]}
    snap = RunSnapshot(run_dir=Path("/nonexistent"), run_id="r", meta=meta)
    snap.system, snap.system_history = system, history
    return snap


def _no_nvml():
    raise ImportError("No module named 'pynvml'")


class PanelApp(App):
    def __init__(self, snap: RunSnapshot, height: int) -> None:
        super().__init__()
        self.snap, self.h = snap, height

    def compose(self) -> ComposeResult:
        panel = SystemPanel(id="system")
        panel.styles.height = self.h
        yield panel


def lines_of(snap: RunSnapshot, width: int = 56, height: int = 9) -> list[str]:
    """The panel's text at the size the overview gives it at 120x40 (56x9 inside its border)."""

    async def run() -> list[str]:
        app = PanelApp(snap, height)
        async with app.run_test(size=(width, height + 2)) as pilot:
            panel = app.query_one(SystemPanel)
            panel.show(snap)
            await pilot.pause()
            return panel.render().plain.split("\n")

    return asyncio.run(run())


def test_eight_gpus_and_a_process_table_fit_at_120x40():
    lines = lines_of(snapshot(fake_nvml.make(8)))
    text = "\n".join(lines)
    assert len(lines) <= 9
    for i in range(8):
        mark = "*" if i in (0, 1) else " "
        assert f"{i}{mark}" in text, (i, text)  # this run's GPUs marked
    assert "141G" in text and "GPU     PID USER" in text
    mine = [line for line in lines if str(os.getpid()) in line]
    assert mine and mine[0].startswith("0*")
    assert "engine RSS" in text and "RAM" in text  # the host line says which memory is which


def test_one_gpu_gets_histories_and_this_runs_cuda_memory():
    extra = {"cuda0.allocated": 12 * 2**30, "cuda0.reserved": 14 * 2**30, "cuda0.peak": 13 * 2**30}
    snap = snapshot(fake_nvml.make(1, own_gpus=(0,)), extra=extra)
    snap.meta["gpus"]["cuda"] = {"0": 0}
    lines = lines_of(snap, width=56, height=14)
    text = "\n".join(lines)
    assert lines[0].startswith("GPU0* NVIDIA H200") and "(this run)" in lines[0]
    assert any(c in text for c in "▁▂▃▄▅▆▇█")  # histories drawn
    assert "cuda:0 alloc 12G  reserved 14G  peak 13G" in text
    assert "SM " in text and "/700W" in text
    assert "engine RSS" in text and "engine CPU" in text  # each on its own labelled line


def test_no_gpu_is_one_clear_line():
    lines = lines_of(snapshot(None))
    assert lines[0] == "no GPU readings: nvidia-ml-py is not installed"
    assert sum("GPU" in line for line in lines) == 1


def test_mig_and_no_permission_are_one_line_each():
    snap = snapshot(fake_nvml.make(4, mig=(2,), processes="NoPermission"))
    lines = lines_of(snap, height=12)
    text = "\n".join(lines)
    assert [line for line in lines if "MIG" in line and "instance" in line] == [
        "MIG on GPU 2: utilisation is per MIG instance (N/A here)"
    ]
    assert "processes (all GPUs): no permission to list GPU processes" in text
    assert "2  MIG" in text or "2   MIG" in text  # the MIG GPU's cell says MIG, not 0%


@pytest.mark.parametrize("size", [(36, 6), (80, 3), (120, 20)])
def test_any_size_draws_without_error(size):
    lines = lines_of(snapshot(fake_nvml.make(8)), width=size[0], height=size[1])
    assert 1 <= len(lines) <= size[1]


@pytest.mark.parametrize("size", [(46, 6), (36, 4)])  # the panel at 100x30 and at 80x24
def test_eight_gpus_still_all_shown_when_small(size):
    lines = lines_of(snapshot(fake_nvml.make(8)), width=size[0], height=size[1])
    text = "\n".join(lines)
    assert all(f"{i}{'*' if i < 2 else ' '}" in text for i in range(8)), text


def test_the_poller_reads_the_gpu_note_and_processes_as_data(tmp_path):
    """Through a real store: the note comes from meta['gpus'], not from parsing event text."""
    from dltui.engine.store import RunStore
    from dltui.run import wire
    from dltui.tui.poller import RunPoller

    store = RunStore(tmp_path / "run.sqlite")
    store.start()
    store.set_meta(status=wire.FINISHED, progress={"step": 0})
    store.event(wire.EV_INFO, "GPU metrics unavailable: something else entirely", level="warning")
    store.set_meta(**{wire.META_GPUS: {"note": "NVIDIA driver not loaded", "devices": []}})
    store.set_meta(**{wire.META_GPU_PROCESSES: {"rows": [{"gpu": 0, "pid": 7}], "notes": {}}})
    store.close(wire.FINISHED)
    snap = RunPoller(tmp_path).poll()
    assert snap.gpu_note == "NVIDIA driver not loaded"
    assert snap.meta[wire.META_GPU_PROCESSES]["rows"] == [{"gpu": 0, "pid": 7}]
