"""Engine overhead: steps/s of a bare PyTorch loop vs the same training driven by the dltui engine.

Both train the same model (MLP 784-256-256-10, SGD lr 0.01 momentum 0.9, cross-entropy) from the
same initial weights on the same batches (batch 64, one DataLoader over pre-generated tensors),
with torch.set_num_threads(1). The engine runs in-process and headless, as `python -m dltui.engine
--headless` would: Loop + Probe + HeadlessPrinter (to a sink) + RunStore writer thread + system
sampler thread, a fresh run store per run. Configurations, interleaved in every round (order
rotated per round) so drift and other load on the machine hit all of them alike:

  bare              the loop a user would write by hand
  engine default    default settings: probe intervals chosen automatically (~2% budget)
  engine forced 10  layer stats and histograms forced every 10 steps
  script default    script mode: the bare loop itself, run as a script (runpy, as `dltui train
                    script.py` runs it) and observed through the optimizer step hooks

Prints the median steps/s of each, the ratio of medians to the bare loop (the verdict), the
per-round ratios (against the bare run of the same round) so the noise is visible, the intervals
the engine chose, and two views less sensitive to other processes on a shared machine: the ratio
of the fastest runs ("best") and of process CPU time per step, all threads ("cpu"). Always exits
0: it measures, it does not test.

Then, unless left out with --parts: the per-step budget (benchmarks/budget.py: the engine's
added µs per step by part, from a profile of a real run, recipe and script mode) and the end-to-end
figures (benchmarks/e2e.py: `dltui train --headless` against a bare script, timed from outside,
two run lengths so start-up cancels; recipe and script mode, and stats/histograms every 10).

    python benchmarks/overhead.py                 # all three parts (about 10 minutes)
    python benchmarks/overhead.py --parts inprocess --rounds 9 --steps 3000
    python benchmarks/overhead.py --parts budget e2e
    python benchmarks/overhead.py --quick         # smoke run of each part
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dltui.engine.gate import Gate
from dltui.engine.headless import HeadlessPrinter
from dltui.engine.loop import Loop, Settings
from dltui.engine.probe import Probe
from dltui.engine.recipe import Recipe
from dltui.engine.sampler import Sampler
from dltui.engine.store import RunStore
from dltui.run import wire
from dltui.run.reader import RunReader

BATCH, BATCHES = 64, 200  # 200 batches per epoch; runs longer than that loop over epochs
BARE = "bare"
# name -> (stats_every, hist_every); None = the engine's automatic choice
ENGINE = {
    "engine default": (None, None),
    "engine forced 10": (10, 10),
    "script default": (None, None),
}
TARGETS = {"engine default": 0.98, "engine forced 10": 0.90, "script default": 0.98}
SCRIPT = """# the bare loop, run as a user's script by dltui's script mode
import sys
bench = sys.modules["dltui_bench_overhead"]  # this benchmark (run as __main__)
bench.SCRIPT_RESULT.append(bench.run_bare(*bench.SCRIPT_ARGS))
"""
SCRIPT_ARGS: tuple = ()
SCRIPT_RESULT: list = []
# Measured elsewhere on this workload, recording the same content as "forced 10"; not re-measured.
REFERENCE = {"TensorBoard SummaryWriter": 0.22, "W&B (offline mode)": 0.54}


def make_model() -> nn.Module:
    layers = [nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)]
    return nn.Sequential(*layers)


def make_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH * BATCHES, 784, generator=g)
    y = torch.randint(0, 10, (BATCH * BATCHES,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def fresh(init: nn.Module, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = copy.deepcopy(init).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


class Clock:
    """Wall time and process CPU time (all threads: the engine's writer and sampler count too)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sync()
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def rates(self, steps: int) -> tuple[float, float]:
        """(steps per wall second, steps per CPU second) since construction."""
        self._sync()
        return steps / (time.perf_counter() - self.t0), steps / (time.process_time() - self.c0)


def run_bare(init: nn.Module, loader: DataLoader, steps: int, device: torch.device):
    """The hand-written loop."""
    model, optimizer = fresh(init, device)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    done = 0
    clock = Clock(device)
    while done < steps:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss = loss_fn(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return clock.rates(steps), None


def observed(run_dir: Path, every, steps: int, device: torch.device, make_driver, extra=()):
    """One driver run wired as `python -m dltui.engine --headless` wires it: a fresh store,
    the probe, the headless printer (to a sink) and the system sampler. make_driver(store, probe,
    callbacks) builds the Loop or ScriptRun; `extra` observers follow the printer. Returns
    (rates of driver.run(), chosen intervals)."""
    store = RunStore(run_dir / "run.sqlite")
    store.start()
    probe = Probe(store, stats_every=every[0], hist_every=every[1])
    printer = HeadlessPrinter(probe, run_dir, every=5.0, out=io.StringIO())
    driver = make_driver(store, probe, [probe, printer, *extra])
    sampler = Sampler(
        store.system,
        lambda msg: store.event(wire.EV_INFO, msg, level="warning"),
        meta=store.set_meta,
    )
    sampler.start()
    try:
        clock = Clock(device)
        status, error = driver.run()
        rates = clock.rates(steps)
    finally:
        sampler.stop()
    store.close(status)
    if error is not None:
        raise error
    if driver.step != steps:
        raise RuntimeError(
            f"{type(driver).__name__} ran {driver.step} steps, expected {steps} ({status})"
        )
    with RunReader(run_dir) as reader:
        return rates, reader.meta()["intervals"]


def run_engine(
    init: nn.Module, loader: DataLoader, steps: int, device: torch.device, every, extra=()
):
    """The same training through the engine (headless, fresh store); also returns its intervals.
    `extra`: more observers (benchmarks/interleaved.py's)."""
    model, optimizer = fresh(init, device)
    epochs = -(-steps // len(loader))
    recipe = Recipe(
        path=Path("overhead.py"),
        model=model,
        optimizer=optimizer,
        loss_fn=nn.CrossEntropyLoss(),
        train_loader=loader,
        epochs=epochs,
    )
    settings = Settings(epochs=epochs, max_steps=steps, device=str(device), checkpoint_dir=None)
    with tempfile.TemporaryDirectory(prefix="dltui-bench-") as tmp:
        return observed(
            Path(tmp),
            every,
            steps,
            device,
            lambda store, probe, callbacks: Loop(recipe, settings, callbacks, Gate()),
            extra,
        )


def run_script(
    init: nn.Module, loader: DataLoader, steps: int, device: torch.device, every, extra=()
):
    """The bare loop as a script under ScriptRun (engine/script.py), headless, fresh store; its
    rates are the ones the script's own loop measured (runpy and discovery not counted).
    `extra`: more observers (benchmarks/interleaved.py's)."""
    import sys

    import dltui
    from dltui.engine.script import ScriptRun, Session

    global SCRIPT_ARGS
    SCRIPT_ARGS = (init, loader, steps, device)
    SCRIPT_RESULT.clear()
    sys.modules["dltui_bench_overhead"] = sys.modules[__name__]
    with tempfile.TemporaryDirectory(prefix="dltui-bench-") as tmp:
        run_dir = Path(tmp)
        script = run_dir / "bare_script.py"
        script.write_text(SCRIPT)

        def make(store: RunStore, probe: Probe, callbacks: list) -> ScriptRun:
            session = Session(dltui.Context(mode="script"))
            run = ScriptRun(
                script,
                [str(script)],
                callbacks=callbacks,
                gate=Gate(),
                session=session,
                store=store,
                probe=probe,
            )
            session.attach(run, probe)
            return run

        _, intervals = observed(run_dir, every, steps, device, make, extra)
    return SCRIPT_RESULT[0][0], intervals


def run_one(name: str, init: nn.Module, loader: DataLoader, steps: int, device: torch.device):
    gc.collect()
    if name == BARE:
        return run_bare(init, loader, steps, device)
    if name == "script default":
        return run_script(init, loader, steps, device, ENGINE[name])
    return run_engine(init, loader, steps, device, ENGINE[name])


def report(wall: dict, cpu: dict, chosen: dict[str, list[dict]]) -> None:
    print("\nprobe intervals the engine chose (store meta 'intervals'), x rounds:")
    for name, ivs in chosen.items():
        keys = [
            f"stats every {iv['stats_every']}, hist every {iv['hist_every']}, "
            f"metric every {iv['metric_every']} ({iv['chosen']})"
            for iv in ivs
        ]
        for key in dict.fromkeys(keys):
            print(f"  {name:<16}  {key}  x{keys.count(key)}")
    row = "{:<28}{:>12}{:>8}{:>20}{:>7}{:>7}{:>8}  {}"
    print(
        "\n"
        + row.format(
            "config",
            "median st/s",
            "ratio",
            "per-round min..max",
            "best",
            "cpu",
            "target",
            "verdict",
        )
    )
    bare, bare_cpu = statistics.median(wall[BARE]), statistics.median(cpu[BARE])
    print(row.format(BARE, f"{bare:.1f}", "1.000", "", "1.000", "1.000", "", ""))
    for name, target in TARGETS.items():
        med, med_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        per = [e / b for e, b in zip(wall[name], wall[BARE], strict=True)]
        verdict = "PASS" if med / bare >= target else "BELOW TARGET"
        if max(per) - min(per) > 0.1:  # the rounds disagree: other load on the machine
            verdict += " (noisy: rerun on a quiet machine)"
        spread = f"{min(per):.3f}..{max(per):.3f}"
        best = max(wall[name]) / max(wall[BARE])
        print(
            row.format(
                name,
                f"{med:.1f}",
                f"{med / bare:.3f}",
                spread,
                f"{best:.3f}",
                f"{med_cpu / bare_cpu:.3f}",
                f"{target:.2f}",
                verdict,
            )
        )
    for name, ratio in REFERENCE.items():
        print(row.format(f"{name} (ref.)", "", f"{ratio:.2f}", "", "", "", "", "not measured here"))
    print("verdict: on the ratio of median wall steps/s. best: ratio of the fastest runs (other")
    print("load only slows runs down). cpu: bare CPU time per step over the engine's (all its")
    print(f"threads), less sensitive to other load. Load average at end {os.getloadavg()[0]:.2f}.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Engine overhead against a bare PyTorch loop.")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps per run (default 2000)")
    p.add_argument("--warmup", type=int, default=300, help="steps of each config before timing")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds x 100 steps")
    p.add_argument("--device", default="cpu", help="cpu (the reference workload) or cuda")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="which measurements (default: all three)",
    )
    args = p.parse_args(argv)
    if "inprocess" in args.parts:
        inprocess(args)
    if "budget" in args.parts:
        import budget

        print("\n" + "=" * 100)
        budget.main(["--steps", "300" if args.quick else "3000"])
    if "e2e" in args.parts:
        import e2e

        print("\n" + "=" * 100)
        e2e.main(["--quick"] if args.quick else [])
    return 0


PARTS = ("inprocess", "budget", "e2e")


def inprocess(args: argparse.Namespace) -> None:
    """The interleaved in-process rounds: bare, engine default, forced 10, script default."""
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 100, 30
    torch.set_num_threads(1)
    torch.manual_seed(0)
    device = torch.device(args.device)
    init, loader = make_model(), make_loader()
    names = [BARE, *ENGINE]

    print(
        f"dltui engine overhead: MLP 784-256-256-10, batch {BATCH}, SGD momentum, {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread"
    )
    print(
        f"{args.rounds} rounds x {args.steps} steps per config, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at start (other processes on the machine add noise)"
    )

    for name in names:  # warm-up: allocator, torchmetrics import, sqlite, first-call paths
        run_one(name, init, loader, args.warmup, device)

    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    chosen: dict[str, list[dict]] = {n: [] for n in ENGINE}
    print(f"\n{'round':>5}  " + "  ".join(f"{n:>16}" for n in names) + "   ratios to bare")
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no fixed position bias
        for name in order:
            (w, c), iv = run_one(name, init, loader, args.steps, device)
            wall[name].append(w)
            cpu[name].append(c)
            if iv is not None:
                chosen[name].append(iv)
        got = {n: wall[n][-1] for n in names}
        ratios = "  ".join(f"{got[n] / got[BARE]:.3f}" for n in ENGINE)
        print(f"{r + 1:>5}  " + "  ".join(f"{got[n]:>12.1f} st/s" for n in names) + f"   {ratios}")
    report(wall, cpu, chosen)


if __name__ == "__main__":
    raise SystemExit(main())
