"""Engine vs bare loop in ONE process, alternating blocks of a few steps: robust to a host whose
speed drifts from one minute to the next (this project's CI box ran the bare loop anywhere from
200 to 585 steps/s), which whole-run comparisons (overhead.py's rounds, e2e.py) cannot resolve.

The engine trains the reference workload (benchmarks/overhead.py's MLP, batch 64, one CPU thread)
through Loop + Probe + HeadlessPrinter + RunStore writer + system sampler, as `--headless` wires
them. Every `--block` steps an observer pauses it and trains `--block` steps of the same workload
by hand (a separate model copy, the same loader): the bare block. Each pair (engine block, bare
block) shares the machine's state of that moment; the verdict is the median of the pairs' ratios.

The observer watches `on_before_optimizer_step` (a hook the probe makes the engine call anyway),
not `on_step_end`: in script mode any on_step_end observer but the probe makes each step build a
StepOutput, which `dltui train` does not. The store writer is held during the bare blocks
(WriterGate): it writes only the engine's records, so its cost (a core, the GIL) belongs to the
engine's blocks; left running, it slowed the bare blocks as much and hid about 0.01 of the ratio.
Caveats, small: the observer adds one cheap callback per step to the engine's blocks, and the
system sampler (a reading a second) keeps running during the bare blocks. In script mode the
bare block runs the script's own loop body (overhead.run_bare's, with its `.to(device)` per
batch: a no-op on the CPU that still costs a call), so the difference is the engine's alone.

    python benchmarks/interleaved.py                      # default settings, 6000 steps
    python benchmarks/interleaved.py --stats-every 10     # layer stats and histograms every 10
    python benchmarks/interleaved.py --before DIR         # also an older `dltui` package in DIR
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import overhead  # benchmarks/overhead.py: the workload
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

WARM = 200  # engine steps before pairs are kept (the probe's warm-up, the metric's import)


def tiny_model() -> nn.Module:
    """--tiny: a model whose step costs next to nothing, so the difference is the engine's µs."""
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def tiny_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 8, generator=g), torch.randint(0, 4, (400,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=2, shuffle=False)


@contextlib.contextmanager
def unobserved(run):
    """Script mode's bare blocks run without its hooks: every optimizer's step hooks and the
    patched torch.autograd.backward would otherwise observe the bare loop too."""
    if run is None:
        yield
        return
    from torch.optim import optimizer as opt_mod

    hooks = [opt_mod._global_optimizer_pre_hooks, opt_mod._global_optimizer_post_hooks]
    saved = [dict(h) for h in hooks]
    patched = torch.autograd.backward
    for h in hooks:
        h.clear()
    torch.autograd.backward = next(
        old for obj, attr, old in run._undo if (obj, attr) == (torch.autograd, "backward")
    )
    try:
        yield
    finally:
        torch.autograd.backward = patched
        for h, s in zip(hooks, saved, strict=True):
            h.update(s)


class WriterGate:
    """Holds the run store's writer thread during the bare blocks (see the module's text). A
    drain under way when a bare block starts finishes in it: a small leak the other way."""

    def __init__(self, loop) -> None:
        from dltui.engine.probe import Probe

        self.store = next(cb for cb in loop.callbacks if isinstance(cb, Probe)).store
        self.open = threading.Event()
        self.open.set()
        drain = self.store._drain

        def gated(db):
            self.open.wait()
            return drain(db)

        self.store._drain = gated

    @contextlib.contextmanager
    def held(self):
        self.open.clear()
        try:
            yield
        finally:
            self.open.set()


def pairs(
    block: int, steps: int, every: int | None, script: bool = False, tiny: bool = False
) -> tuple[list[float], list[float], dict]:
    """(engine s/step per block, bare s/step per block, the intervals the probe chose)."""
    from dltui.engine.loop import Callback

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if tiny:
        init, loader = tiny_model(), tiny_loader()
    else:
        init, loader = overhead.make_model(), overhead.make_loader()
    device = torch.device("cpu")
    bare_model, bare_opt = overhead.fresh(init, device)
    loss_fn = nn.CrossEntropyLoss()

    def batches():
        while True:
            yield from loader

    source = batches()

    class Alternate(Callback):
        def __init__(self) -> None:
            self.n, self.mark = 0, None
            self.writer: WriterGate | None = None
            self.engine: list[float] = []
            self.bare: list[float] = []

        def on_before_optimizer_step(self, loop) -> None:
            self.n += 1
            if self.n % block:
                return
            now = time.perf_counter()
            if self.mark is not None and loop.step > WARM:
                self.engine.append((now - self.mark) / block)
            if self.writer is None:
                self.writer = WriterGate(loop)
            with unobserved(loop if script else None), self.writer.held():
                for _ in range(block):
                    x, y = next(source)
                    if script:  # the script's loop (overhead.run_bare) moves each batch
                        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    loss = loss_fn(bare_model(x), y)
                    bare_opt.zero_grad()
                    loss.backward()
                    bare_opt.step()
            if loop.step > WARM:
                self.bare.append((time.perf_counter() - now) / block)
            self.mark = time.perf_counter()

    alt = Alternate()
    run = overhead.run_script if script else overhead.run_engine
    _, intervals = run(init, loader, steps, device, (every, every), extra=[alt])
    return alt.engine, alt.bare, {k: v for k, v in intervals.items() if k.endswith("_every")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Engine vs bare loop, alternating blocks in one run.")
    p.add_argument("--block", type=int, default=20, help="steps per block (default 20)")
    p.add_argument("--steps", type=int, default=6000, help="engine steps (default 6000)")
    p.add_argument("--stats-every", type=int, help="force layer stats and histograms every N")
    p.add_argument("--script", action="store_true", help="the engine in script mode")
    p.add_argument(
        "--tiny", action="store_true", help="a tiny model: prints the engine's added µs per step"
    )
    p.add_argument("--before", type=Path, metavar="DIR", help="also run the dltui package in DIR")
    p.add_argument("--label", default="this checkout", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.before is not None:  # the older code first, in its own process
        env = {
            **os.environ,
            "PYTHONPATH": f"{args.before}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        cmd = [sys.executable, __file__, "--block", str(args.block), "--steps", str(args.steps)]
        cmd += ["--label", f"before ({args.before})"]
        if args.stats_every:
            cmd += ["--stats-every", str(args.stats_every)]
        cmd += [f for f in ("--script", "--tiny") if getattr(args, f[2:])]
        subprocess.run(cmd, env=env, check=True)
    engine, bare, every = pairs(args.block, args.steps, args.stats_every, args.script, args.tiny)
    ratios = [b / e for e, b in zip(engine, bare, strict=True)]
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    added = statistics.quantiles([(e - b) * 1e6 for e, b in zip(engine, bare, strict=True)], n=4)
    print(
        f"{args.label}{' (script mode)' if args.script else ''}: {len(ratios)} pairs of "
        f"{args.block}-step blocks; bare {1 / statistics.median(bare):.1f} steps/s, engine "
        f"{1 / statistics.median(engine):.1f}; ratio (median of pairs) {med:.3f}, quartiles "
        f"{q1:.3f}..{q3:.3f}; engine's added time {added[1]:.1f} µs/step (quartiles "
        f"{added[0]:.1f}..{added[2]:.1f}); intervals {every}; load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
