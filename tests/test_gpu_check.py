"""benchmarks/gpu_check.py: exits 0 with a clear line without CUDA; its torch-light helpers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", PATH)
gc = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gc  # dataclasses look their module up there
spec.loader.exec_module(gc)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_it_says_so_and_exits_0():
    out = subprocess.run([sys.executable, str(PATH)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("no CUDA on this machine") and out.stderr == ""


def test_table_has_a_verdict_per_row():
    rows = [
        gc.Row("sync", "280 of 300 steps guarded", "no sync", True),
        gc.Row("overhead", "0.981 (bare 900.0 st/s)", ">= 0.99 of bare", False),
        gc.Row("nvml", "no GPUs", "sane", None),
    ]
    lines = gc.table(rows).splitlines()
    assert lines[0].startswith("check") and lines[0].endswith("verdict")
    assert [line.split()[-1] for line in lines[2:]] == ["PASS", "FAIL", "SKIP"]


def test_sane_reading_flags_each_impossible_value():
    good = {"util": 50.0, "mem_used": 1e9, "mem_total": 8e10, "temp": 60.0, "power": 300.0}
    assert gc.sane_reading(good) == []
    assert gc.sane_reading({**good, "util": None, "temp": None, "power": None}) == []  # N/A
    bad = {"util": 140.0, "mem_used": 9e10, "mem_total": 8e10, "temp": 0.0, "power": 5000.0}
    assert len(gc.sane_reading(bad)) == 4
    assert gc.sane_reading({"mem_total": None}) == ["no memory total"]


def test_sane_cuda_memory():
    v = {"cuda1.allocated": 10.0, "cuda1.reserved": 20.0, "cuda1.peak": 15.0}
    assert gc.sane_cuda_memory(v, 1) == []
    assert gc.sane_cuda_memory(v, 0) == ["missing cuda0.allocated, cuda0.reserved, cuda0.peak"]
    v["cuda1.reserved"], v["cuda1.peak"] = 5.0, 1.0
    assert gc.sane_cuda_memory(v, 1) == ["reserved < allocated", "peak < allocated"]


def test_ratio_verdict_uses_medians():
    assert gc.ratio_verdict([100, 100, 50], [99.5, 99, 10], 0.99) == (0.99, True)
    ratio, ok = gc.ratio_verdict([100, 100, 100], [98, 98, 98], 0.99)
    assert ratio == pytest.approx(0.98) and not ok


def test_resnet_runs_channels_last_on_the_cpu():
    model = gc.resnet(8).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    assert model(x).shape == (2, 10)
