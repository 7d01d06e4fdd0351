"""GPU self-check in one command: run it on a CUDA machine, read the table (under 5 minutes).

    python benchmarks/gpu_check.py            # the full check
    python benchmarks/gpu_check.py --quick    # fewer steps and rounds (a smoke run, ~1 minute)

Checks, one table row each (issue 9):
  sync       no host-device synchronisation in any step between probe intervals: a real Loop
             with the probe at its default (automatic) intervals runs a window of steps under
             torch.cuda.set_sync_debug_mode("error"); only steps where stats, histograms or the
             train metric are due are let off
  overhead   a small ResNet (CIFAR-sized, batch 256, channels_last): the engine at default
             settings against a bare loop on the same batches, interleaved rounds; >= 0.99
  nvml       every GPU NVML sees gives sane readings (util 0..100, used <= total, temp, power),
             each reading under 50 ms; this process is listed on the GPU it uses
  cuda mem   the sampler's cuda<d>.allocated/reserved/peak present and ordered, and meta['gpus']
             maps this run's CUDA device to its NVML GPU
  stats mem  the probe's extra device memory with layer stats and histograms on a 1 GiB model:
             <= 1% of parameter bytes + 64 MiB

Without CUDA it says so and exits 0. With CUDA it exits 1 if any check fails, else 0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

MIB = 2**20
OVERHEAD_TARGET = 0.99


@dataclass
class Row:
    """One line of the table."""

    check: str
    figure: str
    target: str
    ok: bool | None  # None: could not be checked (says why in figure)


def table(rows: list[Row]) -> str:
    """The rows as a fixed-width table with a verdict column."""
    head = f"{'check':<11}{'figure':<58}{'target':<22}verdict"
    lines = [head, "-" * len(head)]
    for r in rows:
        verdict = "PASS" if r.ok else "FAIL" if r.ok is False else "SKIP"
        lines.append(f"{r.check:<11}{r.figure:<58}{r.target:<22}{verdict}")
    return "\n".join(lines)


def sane_reading(r: dict[str, float | None]) -> list[str]:
    """What is wrong with one NVML reading (engine.nvml.Nvml.read), as short phrases."""
    bad = []
    if r.get("util") is not None and not 0 <= r["util"] <= 100:
        bad.append(f"util {r['util']}")
    used, total = r.get("mem_used"), r.get("mem_total")
    if total is None or total <= 0:
        bad.append("no memory total")
    elif used is None or not 0 <= used <= total:
        bad.append(f"memory used {used} of {total}")
    if r.get("temp") is not None and not 0 < r["temp"] < 120:
        bad.append(f"temp {r['temp']}")
    if r.get("power") is not None and not 0 < r["power"] < 2000:
        bad.append(f"power {r['power']}")
    return bad


def sane_cuda_memory(values: dict[str, float], device: int) -> list[str]:
    """What is wrong with the sampler's CUDA memory fields of one device."""
    keys = [f"cuda{device}.{k}" for k in ("allocated", "reserved", "peak")]
    missing = [k for k in keys if k not in values]
    if missing:
        return [f"missing {', '.join(missing)}"]
    alloc, reserved, peak = (values[k] for k in keys)
    bad = []
    if alloc <= 0:
        bad.append("nothing allocated")
    if reserved < alloc:
        bad.append("reserved < allocated")
    if peak < alloc:
        bad.append("peak < allocated")
    return bad


def ratio_verdict(bare: list[float], engine: list[float], target: float) -> tuple[float, bool]:
    """Median engine/bare steps-per-second ratio over rounds, and whether it meets target."""
    r = statistics.median(engine) / statistics.median(bare)
    return r, r >= target


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)) + self.skip(x))


def resnet(width: int = 64, classes: int = 10) -> nn.Module:
    """A ResNet-18-shaped network for 32x32 inputs (torchvision is not needed)."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    cin = width
    for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        layers += [_Block(cin, cout, 1 if i == 0 else 2), _Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


# -- the checks (CUDA only) ------------------------------------------------------------------
def _batches(n: int, batch: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device, memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    # a few distinct batches, reused: the data path is not what is measured
    return [(x.roll(i, 0), y.roll(i, 0)) for i in range(min(n, 8))] * (n // min(n, 8) + 1)


def _engine_run(model: nn.Module, batches, steps: int, device, watchers=None):
    """The model through the engine as `dltui train --headless` wires it, at default probe
    settings; watchers(probe) gives callbacks to run before the probe. Returns (status, error,
    loop, probe, steps/s)."""
    from dltui.engine.gate import Gate
    from dltui.engine.loop import Loop, Settings
    from dltui.engine.probe import Probe
    from dltui.engine.recipe import Recipe
    from dltui.engine.sampler import Sampler
    from dltui.engine.store import RunStore
    from dltui.run import wire

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    recipe = Recipe(
        path=Path("gpu_check.py"),
        model=model,
        optimizer=opt,
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=batches[:steps],
        epochs=1,
    )
    settings = Settings(epochs=1, max_steps=steps, device=str(device), checkpoint_dir=None)
    with tempfile.TemporaryDirectory(prefix="dltui-gpu-check-") as tmp:
        store = RunStore(Path(tmp) / "run.sqlite")
        store.start()
        probe = Probe(store)
        sampler = Sampler(store.system, lambda m: store.event(wire.EV_INFO, m), meta=store.set_meta)
        sampler.start()
        first = watchers(probe) if watchers is not None else []
        loop = Loop(recipe, settings, [*first, probe], Gate())
        torch.cuda.synchronize()
        t = time.perf_counter()
        status, error = loop.run()
        torch.cuda.synchronize()
        rate = loop.step / (time.perf_counter() - t)
        sampler.stop()
        store.close(status)
    return status, error, loop, probe, rate


def _bare_run(model: nn.Module, batches, steps: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for x, y in batches[:steps]:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - t)


def check_sync(device: torch.device, steps: int) -> Row:
    from dltui.engine.loop import Callback
    from dltui.engine.probe import WARMUP_STEPS

    class Window(Callback):
        """Sync debug mode "error" wherever neither this step's end nor the next step has
        anything of the probe's due; counts the guarded steps."""

        def __init__(self) -> None:
            self.probe = None
            self.guarded = 0

        def on_step_end(self, loop, out) -> None:
            s = loop.step
            p = self.probe  # _due: the probe's own schedule, warm-up included
            due = any(p._due(k, s) or p._due(k, s + 1) for k in p.every)
            on = s > WARMUP_STEPS + 2 and not due
            self.guarded += on
            torch.cuda.set_sync_debug_mode("error" if on else "default")

        def on_run_end(self, loop, status, error) -> None:
            torch.cuda.set_sync_debug_mode("default")

    model = resnet(32).to(device, memory_format=torch.channels_last)
    window = Window()

    def watch(probe):  # the window asks the run's own probe what is due when
        window.probe = probe
        return [window]

    try:
        status, error, loop, probe, _ = _engine_run(
            model, _batches(steps, 64, device), steps, device, watch
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    iv = probe.every
    figure = (
        f"{window.guarded} of {loop.step} steps guarded (stats/{iv['stats']}, "
        f"hist/{iv['hist']}, metric/{iv['metric']})"
    )
    if error is not None:
        where = "".join(traceback.format_exception_only(type(error), error)).strip()
        return Row("sync", f"host sync at step {loop.step + 1}: {where[:40]}", "none", False)
    return Row("sync", figure, "no sync", window.guarded > steps // 2)


def check_overhead(device: torch.device, steps: int, rounds: int) -> Row:
    torch.backends.cudnn.benchmark = True
    batches = _batches(steps, 256, device)
    init = resnet(64).to(device, memory_format=torch.channels_last)
    state = {k: v.clone() for k, v in init.state_dict().items()}

    def fresh() -> nn.Module:
        init.load_state_dict(state)
        return init

    _bare_run(fresh(), batches, min(steps, 50))  # warm-up: cudnn autotune, allocator
    _engine_run(fresh(), batches, min(steps, 50), device)
    bare, engine = [], []
    for r in range(rounds):
        order: list[Callable[[], None]] = [
            lambda: bare.append(_bare_run(fresh(), batches, steps)),
            lambda: engine.append(_engine_run(fresh(), batches, steps, device)[4]),
        ]
        for run in order if r % 2 == 0 else order[::-1]:
            run()
    ratio, ok = ratio_verdict(bare, engine, OVERHEAD_TARGET)
    figure = (
        f"{ratio:.3f} (bare {statistics.median(bare):.1f} st/s, engine "
        f"{statistics.median(engine):.1f}; {rounds} rounds x {steps})"
    )
    return Row("overhead", figure, f">= {OVERHEAD_TARGET} of bare", ok)


def check_nvml(device: torch.device) -> Row:
    from dltui.engine.nvml import Nvml

    source = Nvml()
    handles, reason = source.gpus()
    if not handles:
        return Row("nvml", f"no GPUs through NVML: {reason}", "every GPU sane", False)
    torch.ones(1, device=device)  # this process holds a context on its GPU
    problems, slowest = [], 0.0
    for h in handles:
        for _ in range(5):
            t = time.perf_counter()
            reading = source.read(h)
            slowest = max(slowest, time.perf_counter() - t)
        problems += [f"GPU {h.index}: {p}" for p in sane_reading(reading)]
    mine = [p for h in handles for p in source.processes(h).rows if p.pid == os.getpid()]
    errors = source.drain_errors()
    figure = f"{len(handles)} GPUs, slowest reading {slowest * 1e3:.1f} ms"
    figure += f", this pid on GPU {sorted({p.gpu for p in mine})}" if mine else ", pid not listed"
    ok = not problems and not errors and slowest < 0.05
    if problems or errors:
        figure = "; ".join(problems + errors)[:57]
    return Row("nvml", figure, "sane, < 50 ms", ok)


def check_cuda_memory(device: torch.device) -> Row:
    from dltui.engine.sampler import Sampler
    from dltui.run import wire

    keep = torch.empty(64 * MIB, dtype=torch.uint8, device=device)
    meta: dict = {}
    values = Sampler(lambda w, v: None, lambda m: None, meta=meta.update).sample_once()
    d = device.index or 0
    bad = sane_cuda_memory(values, d)
    gpus = meta.get(wire.META_GPUS) or {}
    mapped = (gpus.get("cuda") or {}).get(str(d))
    if mapped is None:
        bad.append(f"cuda:{d} not mapped to an NVML GPU")
    del keep
    figure = (
        f"cuda:{d} -> GPU {mapped}: alloc {values.get(f'cuda{d}.allocated', 0) / MIB:.0f} MiB, "
        f"reserved {values.get(f'cuda{d}.reserved', 0) / MIB:.0f}, run {gpus.get('run')}"
    )
    return Row("cuda mem", "; ".join(bad)[:57] if bad else figure, "present, ordered", not bad)


def check_stats_memory(device: torch.device) -> Row:
    from dltui.engine.stats import LayerStats

    model = nn.Sequential(*[nn.Linear(8192, 8192) for _ in range(4)]).to(device)  # 1 GiB
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ls = LayerStats(model)
    ls.before_step()
    ls.after_step()
    ls.histograms()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ls.before_step()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-1e-3)
    ls.after_step()
    ls.histograms()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    bound = 0.01 * param_bytes + 64 * MIB
    figure = f"{extra / MIB:.1f} MiB extra on {param_bytes / MIB:.0f} MiB of parameters"
    return Row("stats mem", figure, f"<= {bound / MIB:.0f} MiB", extra <= bound)


def guarded(name: str, fn: Callable[[], Row]) -> Row:
    """A check that raises is a failed row with the reason, not the end of the whole check."""
    try:
        return fn()
    except Exception as e:  # report and go on: the other checks still tell something
        traceback.print_exc(file=sys.stderr)
        return Row(name, f"error: {type(e).__name__}: {e}"[:57], "", False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="dltui GPU self-check (needs CUDA).")
    p.add_argument("--quick", action="store_true", help="fewer steps and rounds")
    p.add_argument("--device", default="cuda", help="the CUDA device to check (default: cuda)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "no CUDA on this machine (torch.cuda.is_available() is False): nothing to check. "
            "Run this on a GPU box."
        )
        return 0
    device = torch.device(a.device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    steps, rounds = (120, 2) if a.quick else (300, 3)
    print(
        f"dltui GPU check on {torch.cuda.get_device_name(device)} ({device}), torch "
        f"{torch.__version__}, CUDA {torch.version.cuda}"
    )
    t0 = time.perf_counter()
    rows = [
        guarded("sync", lambda: check_sync(device, steps)),
        guarded("overhead", lambda: check_overhead(device, steps, rounds)),
        guarded("nvml", lambda: check_nvml(device)),
        guarded("cuda mem", lambda: check_cuda_memory(device)),
        guarded("stats mem", lambda: check_stats_memory(device)),
    ]
    print(table(rows))
    print(f"took {time.perf_counter() - t0:.0f} s")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
