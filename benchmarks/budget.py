"""The engine's per-step budget: where its added cost goes, in µs per step, by part.

A real in-process run of the reference workload (benchmarks/overhead.py's, recipe mode and
script mode) under a profiler that times every call of the engine's per-step code on the
training thread (exclusive time: a part's own time, not the parts it calls), plus the CPU
time of the engine's own threads (store writer, system sampler) per step. The training itself
(data, forward and loss, backward, optimizer step) is timed too, for scale, but is not engine
cost: a bare loop does the same work.

Each timed call costs the profiler itself ~0.3-0.5 µs; that is measured on a no-op first
(printed) and taken off each part's figure. Wall time on the training thread; on a loaded
machine preemption inflates it, so read the figures next to the load average printed.

    python benchmarks/budget.py [--steps 3000]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

import overhead  # benchmarks/overhead.py: the workload and the in-process drivers
import torch

ENGINE = "engine"
TRAINING = "training (not engine cost)"


def targets() -> list[tuple[str, str, object, str]]:
    """(group, part, class, method) of every call the profile times."""
    from torch.utils.data import dataloader

    from dltui.engine import gate, headless, loop, metrics, probe, script, stats, step, store

    eng = [
        ("gate check", gate.Gate, "boundary"),
        ("gate check", script.ScriptRun, "_boundary"),
        ("loop bookkeeping", loop.Loop, "_window"),
        ("loop bookkeeping", loop.Loop, "_plain_window"),
        ("loop bookkeeping", loop.Loop, "_step_scalars"),
        ("loop bookkeeping", loop.Loop, "_train_epoch"),
        ("loop bookkeeping", loop.Loop, "_emit"),
        ("loop bookkeeping", step.Stepper, "finish_window"),
        ("loop bookkeeping", step.Stepper, "lrs_used"),
        ("probe bookkeeping", probe.Probe, "on_step_end"),
        ("probe bookkeeping", probe.Probe, "step_done"),
        ("probe bookkeeping", probe.Probe, "on_before_optimizer_step"),
        ("probe bookkeeping", probe.Probe, "_at_interval"),
        ("probe bookkeeping", probe.Probe, "publish"),
        ("deferred readback", probe.Probe, "_flush"),
        ("deferred readback", probe.Probe, "_steps_read"),
        ("deferred readback", probe.Deferred, "push"),
        ("deferred readback", probe.Probe, "_record_step"),
        ("store append", store.RunStore, "scalars"),
        ("store append", store.RunStore, "scalar_steps"),
        ("store append", store.RunStore, "set_meta"),
        ("store append", store.RunStore, "event"),
        ("store append", store.RunStore, "layer_stats"),
        ("store append", store.RunStore, "histogram"),
        ("headless printer", headless.HeadlessPrinter, "_tick"),
        ("script-mode hooks", script.ScriptRun, "_pre_hook"),
        ("script-mode hooks", script.ScriptRun, "_post_hook"),
        ("script-mode hooks", script.ScriptRun, "_record_backward"),
        ("script-mode hooks", script.ScriptRun, "_forward_pre"),
        ("script-mode hooks", script.ScriptRun, "_mean_loss"),
        ("script-mode hooks", script.ScriptRun, "_emit"),
        ("layer stats (intervals)", stats.LayerStats, "before_step"),
        ("layer stats (intervals)", stats.LayerStats, "after_step"),
        ("layer stats (intervals)", stats.LayerStats, "histograms"),
        ("train metric (intervals)", metrics.MetricSet, "batch_values"),
        ("train metric (intervals)", metrics.MetricSet, "ensure"),
    ]
    train = [
        ("data", dataloader._BaseDataLoaderIter, "__next__"),
        ("forward + loss", loop.Loop, "_forward"),
        ("forward + loss", torch.nn.Module, "__call__"),  # the model and loss_fn modules
        ("backward", step.Stepper, "backward"),
        ("backward", torch.Tensor, "backward"),
        ("optimizer step", step.Stepper, "step_all"),
        ("zero_grad", step.Stepper, "begin_window"),
    ]
    return [(ENGINE, *t) for t in eng] + [(TRAINING, *t) for t in train]


class Profile:
    """Exclusive wall time per part on one thread, from wrappers installed on the classes."""

    def __init__(self) -> None:
        self.own: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self.each: dict[tuple[str, str], list[float]] = defaultdict(list)  # per call, for medians
        self.thread = threading.get_ident()
        self._stack: list[float] = []
        self.per_call = 0.0  # the profiler's own cost per timed call, measured

    def _wrap(self, key: tuple[str, str], fn):
        prof, clock = self, time.perf_counter

        def timed(*args, **kwargs):
            if threading.get_ident() != prof.thread:
                return fn(*args, **kwargs)
            stack = prof._stack
            stack.append(0.0)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = clock() - t0
                mine = elapsed - stack.pop()
                prof.own[key] += mine
                prof.each[key].append(mine)
                prof.calls[key] += 1
                if stack:
                    stack[-1] += elapsed

        return timed

    @contextmanager
    def installed(self):
        undo = []
        for group, part, cls, name in targets():
            fn = cls.__dict__[name]
            undo.append((cls, name, fn))
            setattr(cls, name, self._wrap((group, part), fn))
        try:
            yield self
        finally:
            for cls, name, fn in reversed(undo):
                setattr(cls, name, fn)

    def calibrate(self, n: int = 200_000) -> float:
        """Seconds the wrapper adds to one call (measured on a no-op, then forgotten)."""

        def noop():
            return None

        wrapped = self._wrap(("calibration", "noop"), noop)
        clock = time.perf_counter
        t0 = clock()
        for _ in range(n):
            noop()
        bare = clock() - t0
        t0 = clock()
        for _ in range(n):
            wrapped()
        self.per_call = max(0.0, (clock() - t0 - bare) / n)
        self.own.clear()
        self.calls.clear()
        self.each.clear()
        return self.per_call


def profile_run(kind: str, steps: int) -> tuple[Profile, dict[str, float], float]:
    """One profiled in-process run; (profile, other threads' CPU s, wall s)."""
    torch.manual_seed(0)
    init, loader = overhead.make_model(), overhead.make_loader()
    device = torch.device("cpu")
    prof = Profile()
    prof.calibrate()
    cpu = {}
    real_start = threading.Thread.start

    def start(self):  # note each engine thread's CPU clock at its end (threads are joined)
        run = self.run

        def measured():
            try:
                run()
            finally:
                cpu[self.name] = cpu.get(self.name, 0.0) + time.thread_time()

        self.run = measured
        real_start(self)

    threading.Thread.start = start
    try:
        with prof.installed():
            t0 = time.perf_counter()
            if kind == "script":
                overhead.run_script(init, loader, steps, device, (None, None))
            else:
                overhead.run_engine(init, loader, steps, device, (None, None))
            wall = time.perf_counter() - t0
    finally:
        threading.Thread.start = real_start
    return prof, cpu, wall


def report(kind: str, prof: Profile, cpu: dict[str, float], steps: int) -> float:
    """Per part: the mean µs per step (every call counted: rare slow calls, a GC pass or the
    machine's other load inside one, weigh in) and the typical µs per step (median call x calls
    per step: what a step costs when nothing else happens). Returns the engine's typical total."""
    print(f"\n{kind} mode, {steps} steps: µs per step (profiler's own cost taken off)")
    print(f"  {'':<30}{'mean':>8}{'typical':>9}")
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    for (group, part), seconds in prof.own.items():
        n = prof.calls[(group, part)]
        each = sorted(prof.each[(group, part)])
        med = max(0.0, each[len(each) // 2] - prof.per_call)
        groups[group][part][0] += max(0.0, seconds - n * prof.per_call) * 1e6 / steps
        groups[group][part][1] += med * n * 1e6 / steps
    typical_engine = 0.0
    for group in (ENGINE, TRAINING):
        parts = groups.get(group, {})
        mean, typical = (sum(v[i] for v in parts.values()) for i in (0, 1))
        print(f"  {group:<30}{mean:8.1f}{typical:9.1f}")
        for part, (m, t) in sorted(parts.items(), key=lambda kv: -kv[1][0]):
            if m >= 0.05:
                print(f"    {part:<28}{m:8.1f}{t:9.1f}")
        if group == ENGINE:
            typical_engine = typical
    print("  engine threads, CPU (beside the training thread; compete for the GIL):")
    for name, v in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if v > 0:
            print(f"    {name:<28}{v * 1e6 / steps:8.1f}")
    return typical_engine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The engine's added cost per step, by part.")
    p.add_argument("--steps", type=int, default=3000, help="steps per profiled run")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    prof = Profile()
    print(
        f"dltui per-step budget: reference workload, in-process, headless; profiler cost "
        f"{prof.calibrate() * 1e6:.2f} µs per timed call; load average {os.getloadavg()[0]:.2f}"
    )
    for kind in ("recipe", "script"):
        profile_run(kind, 200)  # warm-up
        prof, cpu, wall = profile_run(kind, args.steps)
        added = report(kind, prof, cpu, args.steps)
        step_us = wall / args.steps * 1e6
        print(
            f"  => engine code on the training thread, typical: {added:.1f} µs of a "
            f"{step_us:.0f} µs step ({added / step_us:.1%})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
