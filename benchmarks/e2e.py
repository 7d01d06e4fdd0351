"""End to end, as a user runs it: `dltui train --headless` against the same training as a bare
script, each timed from outside as a whole process.

The reference workload (MLP 784-256-256-10, batch 64, SGD momentum, cross-entropy, one CPU
thread, generated data) is written to a temp dir three ways: a bare script (a hand-written loop,
run with `python`), the same loop run as a script by `dltui train --headless` (script mode), and
a recipe of the same training (`dltui train --headless --max-steps N`, recipe mode; also with
`--stats-every 10 --hist-every 10`). Each is run at two lengths; the difference of the two wall
times is the time of the extra steps, so start-up (Python, torch import, the engine's store and
the final checkpoint) cancels. Rounds are interleaved and their order rotated.

Prints per config: steps/s of the extra steps (median over rounds), the ratio to the bare
script, per-round ratios, and the same from CPU time (all child processes: the CLI, the
engine and its threads). Exits 0: it measures, it does not test.

    python benchmarks/e2e.py                    # 5 rounds, 300 and 2300 steps
    python benchmarks/e2e.py --rounds 7 --long 4000
    python benchmarks/e2e.py --quick            # smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMON = """import sys
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(0)
BATCH, BATCHES = 64, 200
g = torch.Generator().manual_seed(0)
x = torch.randn(BATCH * BATCHES, 784, generator=g)
y = torch.randint(0, 10, (BATCH * BATCHES,), generator=g)
train_loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
model = nn.Sequential(
    nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
"""
BARE = (
    COMMON
    + """
steps, done = int(sys.argv[1]), 0
model.train()
while done < steps:
    for xb, yb in train_loader:
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += 1
        if done == steps:
            break
"""
)
RECIPE = COMMON + "epochs = 10_000  # --max-steps ends the run\n"

# name -> (dltui train flags, which file, whether the step count is --max-steps)
CONFIGS = {
    "bare script": None,
    "recipe default": ([], "recipe"),
    "script default": ([], "bare"),
    "recipe stats/hist 10": (["--stats-every", "10", "--hist-every", "10"], "recipe"),
}
TARGETS = {"recipe default": 0.98, "script default": 0.98, "recipe stats/hist 10": 0.90}


BEFORE = " [before]"  # a config run with --before's dltui (the code before a change)


def command(name: str, files: dict, steps: int) -> list[str]:
    """The command line a user would type for config `name`, `steps` optimizer steps long."""
    if CONFIGS[name.removesuffix(BEFORE)] is None:
        return [sys.executable, str(files["bare"]), str(steps)]
    flags, which = CONFIGS[name.removesuffix(BEFORE)]
    cli = [sys.executable, "-m", "dltui.tui.cli", "train", "--headless"]
    cli += ["--runs-dir", str(files["runs"]), *flags]
    # a recipe takes its length from dltui (before FILE); the bare script, run as a script,
    # reads it from its own argv (after FILE)
    if which == "recipe":
        return [*cli, "--max-steps", str(steps), str(files[which])]
    return [*cli, str(files[which]), str(steps)]


def timed(argv: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall s, CPU s of the child processes) of one run; a failed run is an error, loudly."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields after the command name (state, ppid, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _tree(root: int) -> list[int]:
    """root and every process descended from it (the CLI's engine runs in its own session, so a
    process group would miss it): from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat_fields(entry)[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _state(pid: int) -> str:
    """A process's state letter (R, S, T: stopped, ...) from /proc."""
    return _stat_fields(pid)[0]


def _signal_tree(root: int, sig: int) -> None:
    """Send sig to root's whole tree; for SIGSTOP, again until no new process appears (one may
    be forked between the listing and the signal)."""
    done: set[int] = set()
    while True:
        pids = [p for p in _tree(root) if p not in done]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            done.add(pid)
        if sig != signal.SIGSTOP:
            return


def sliced(argvs: list[list[str]], slot: float, envs: list[dict | None]) -> list[float]:
    """Run the commands in turns of `slot` seconds each, only one running at a time (the others
    stopped with SIGSTOP, their engines too), until all have exited; returns each command's
    running wall time. Each starts in its first turn. Commands in one
    slicing see the machine at the same moments: a host whose speed drifts over seconds and
    minutes (this box: 250 to 470 bare steps/s from one minute to the next) slows them alike."""
    procs = [  # a shell that stops itself, then becomes the command in its first turn
        subprocess.Popen(
            ["/bin/sh", "-c", 'kill -STOP $$; exec "$@"', "sh", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for argv, env in zip(argvs, envs, strict=True)
    ]
    for proc in procs:
        while _state(proc.pid) != "T":
            time.sleep(0.001)
    ran = [0.0] * len(procs)
    try:
        while any(p.returncode is None for p in procs):
            for i, proc in enumerate(procs):
                if proc.returncode is not None:
                    continue
                _signal_tree(proc.pid, signal.SIGCONT)
                t0 = time.perf_counter()  # (the stop below lists the tree while it runs)
                try:
                    proc.wait(timeout=slot)
                except subprocess.TimeoutExpired:
                    _signal_tree(proc.pid, signal.SIGSTOP)
                ran[i] += time.perf_counter() - t0
    finally:
        for proc in procs:
            if proc.returncode is None:
                _signal_tree(proc.pid, signal.SIGKILL)
                proc.wait()
    for argv, proc in zip(argvs, procs, strict=True):
        if proc.returncode != 0:
            err = proc.stderr.read()[-2000:] if proc.stderr else ""
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err}")
        if proc.stderr:
            proc.stderr.close()
    return ran


def _rate(steps: int, t_long: float, t_short: float) -> float:
    """Steps per second of the long run's extra steps (nan: a long run no slower than the short
    one is noise, not a rate)."""
    return steps / (t_long - t_short) if t_long > t_short else math.nan


def measure(
    rounds: int,
    short: int,
    long: int,
    names: list[str],
    before: Path | None = None,
    slot: float = 0.0,
) -> dict:
    """Per config, per round: (wall steps/s, cpu steps/s) of the long run's extra steps.
    `before`: a folder holding an older `dltui` package, first on PYTHONPATH for the configs
    named "... [before]". `slot` > 0: every config's long runs of a round are run together in
    turns of `slot` seconds (sliced()), then their short runs, and the rates are of running
    time (no CPU figure: nan); 0: one run after another, as a user would."""
    rates: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    old_env = None
    if before is not None:
        old_env = {
            **os.environ,
            "PYTHONPATH": f"{before}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }

    def env(name: str) -> dict | None:
        return old_env if name.endswith(BEFORE) else None

    def run(name: str, files: dict, steps: int) -> tuple[float, float]:
        return timed(command(name, files, steps), env(name))

    def run_sliced(order: list[str], files: dict) -> dict[str, tuple[float, float]]:
        walls = {}
        for steps in (long, short):
            argvs = [command(n, files, steps) for n in order]
            walls[steps] = sliced(argvs, slot, [env(n) for n in order])
        extra = long - short
        return {
            n: (_rate(extra, w2, w1), math.nan)
            for n, w2, w1 in zip(order, walls[long], walls[short], strict=True)
        }

    with tempfile.TemporaryDirectory(prefix="dltui-e2e-") as tmp:
        files = {"bare": Path(tmp, "bare.py"), "recipe": Path(tmp, "recipe.py")}
        files["bare"].write_text(BARE)
        files["recipe"].write_text(RECIPE)
        files["runs"] = Path(tmp, "runs")
        for name in names:  # warm-up: page cache, .pyc files
            run(name, files, 20)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            if slot > 0:
                got = run_sliced(order, files)
            else:
                got = {}
                for name in order:
                    w1, c1 = run(name, files, short)
                    w2, c2 = run(name, files, long)
                    got[name] = (_rate(long - short, w2, w1), _rate(long - short, c2, c1))
            for name in order:
                rates[name].append(got[name])
            ratios = "  ".join(f"{n} {got[n][0] / got[names[0]][0]:.3f}" for n in names[1:])
            print(f"round {r + 1}: bare {got[names[0]][0]:.1f} st/s; ratios {ratios}", flush=True)
    return rates


def median(xs) -> float:
    """The median of the rounds that gave a rate (nan: none did)."""
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def report(rates: dict, base: str = "bare script") -> None:
    row = "{:<32}{:>12}{:>8}{:>16}{:>7}{:>8}  {}"
    print("\n" + row.format("config", "median st/s", "ratio", "per-round", "cpu", "target", ""))
    bare_w = median(w for w, _ in rates[base])
    bare_c = median(c for _, c in rates[base])
    print(row.format(base, f"{bare_w:.1f}", "1.000", "", "1.000", "", ""))
    for name in rates:
        target = TARGETS.get(name.removesuffix(BEFORE))
        if target is None:
            continue
        med = median(w for w, _ in rates[name])
        med_c = median(c for _, c in rates[name])
        per = [e[0] / b[0] for e, b in zip(rates[name], rates[base], strict=True)]
        per = [r for r in per if not math.isnan(r)] or [math.nan]
        verdict = "PASS" if med / bare_w >= target else "BELOW TARGET"
        if max(per) - min(per) > 0.1:
            verdict += " (noisy: rerun on a quiet machine)"
        print(
            row.format(
                name,
                f"{med:.1f}",
                f"{med / bare_w:.3f}",
                f"{min(per):.3f}..{max(per):.3f}",
                "-" if math.isnan(med_c) else f"{med_c / bare_c:.3f}",
                f"{target:.2f}",
                verdict,
            )
        )
    print(
        "ratio: median steps/s of the extra steps over the bare script's. cpu: the same from CPU\n"
        "time of all child processes (the CLI, the engine and its threads; less sensitive to\n"
        f"other load). Load average at end {os.getloadavg()[0]:.2f}."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="dltui train --headless vs a bare script, end to end.")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--short", type=int, default=300, help="steps of the short run (default 300)")
    p.add_argument("--long", type=int, default=2300, help="steps of the long run (default 2300)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 100 and 600 steps")
    p.add_argument(
        "--slot",
        type=float,
        default=0.5,
        help="a round's runs of one length take turns of SLOT s, one running at a time, so a "
        "drifting host slows them alike (default 0.5); 0: one whole run after another",
    )
    p.add_argument("--only", nargs="+", choices=list(CONFIGS)[1:], help="configs besides bare")
    p.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="also run each dltui config with the `dltui` package in DIR (older code), "
        "interleaved, for a before/after table",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.short, args.long = 1, 100, 600
    names = ["bare script", *(args.only or list(CONFIGS)[1:])]
    if args.before is not None:
        names += [n + BEFORE for n in names[1:]]
    print(
        f"dltui end to end: MLP 784-256-256-10, batch 64, SGD momentum, CPU, 1 thread; "
        f"{args.rounds} rounds x ({args.short}, {args.long}) steps; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    report(measure(args.rounds, args.short, args.long, names, args.before, args.slot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
