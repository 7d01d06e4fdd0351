"""Dashboard benchmarks: CPU while watching a live run, overview refresh time, first paint,
memory over time, and redraw cost on a 1,000,000-step store against a 100-step one.

    python benchmarks/tui.py              # everything (~2 minutes; builds a 1M-step store once)
    python benchmarks/tui.py --watch 60   # watch the live run for 60 s instead of 20

The live measurements run the real app in a real terminal (a detached tmux pane) against a
real engine, and read the app's CPU time and RSS from /proc through psutil; without tmux they
fall back to App.run_test() in this process. Targets: CPU < 10% of one core, a full overview
refresh at 120x40 <= 50 ms, first paint <= 1 s after the engine is up, flat memory.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from rich.console import Console

from dltui.engine.store import RunStore
from dltui.run import wire
from dltui.run.reader import RunReader
from dltui.tui.app import make_app
from dltui.tui.panes.overview import OverviewPane, read_plot_series

WORK = Path(tempfile.gettempdir()) / "dltui-bench-tui"
SIZE = (120, 40)
RECIPE = '''
"""A small, fast run (~50 steps/s): the dashboard sees new data all the time."""
import time
import torch
from torch import nn

torch.manual_seed(0)


class Data:
    def __init__(self, n):
        self.x, self.y = torch.randn(8, 64, 32), torch.randint(0, 10, (8, 64))
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            time.sleep(0.015)
            yield self.x[i % 8], self.y[i % 8]


train_loader, val_loader = Data(500), Data(4)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
epochs = 1000
'''


# -- stores -----------------------------------------------------------------------------------
def build_store(run_dir: Path, steps: int) -> Path:
    """A finished run of `steps` steps (loss, acc, lr/0, samples/s; val every 1000), once."""
    if (run_dir / "run.sqlite").exists():
        with RunReader(run_dir) as r:
            if (r.step_range("loss") or (0, 0))[1] == steps:
                return run_dir
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    t0 = 1_700_000_000.0
    st = RunStore(run_dir / "run.sqlite")
    st.start()
    for step in range(1, steps + 1):
        loss = 2.0 * math.exp(-step / (steps / 5)) + 0.1 + 0.05 * math.sin(step)
        st.scalars(
            step,
            step // 1000,
            wire.TRAIN,
            t0 + step * 0.01,
            {"loss": loss, "acc": 1 - loss / 2.2, "lr/0": 0.1, "samples_per_s": 6400.0},
        )
        if step % 1000 == 0 or step == steps:
            st.scalars(
                step, step // 1000, wire.VAL, t0 + step * 0.01, {"loss": loss + 0.05, "acc": 0.8}
            )
        if step % 200_000 == 0:
            st.flush()  # bounded queue: the writer keeps up in big batches
    st.event(wire.EV_COMMAND, "lr 0.1 -> 0.05 at step 10", step=10, wall=t0 + 0.1)
    progress = {
        "step": steps,
        "epoch": steps // 1000,
        "batch": 0,
        "steps_per_epoch": 1000,
        "total_steps": steps,
        "epochs": max(1, steps // 1000),
        "lrs": [0.1],
        "mode": "train",
    }
    st.set_meta(
        run_id=run_dir.name,
        status=wire.FINISHED,
        started=t0,
        ended=t0 + steps * 0.01,
        progress=progress,
        host="elsewhere",
        pid=1,
    )
    st.close()
    return run_dir


def screen_text(app) -> str:
    console = Console(
        width=app.size.width,
        height=app.size.height,
        file=io.StringIO(),
        record=True,
        force_terminal=True,
        color_system=None,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text()


async def refresh_times(run_dir: Path, repeats: int = 20) -> dict[str, float]:
    """Median ms of: the overview's series read, its widgets' drawing, the whole screen's render."""
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(OverviewPane)
        for _ in range(200):
            if pane.plots[2].traces:
                break
            await pilot.pause(0.05)
        key = pane._fetch_key(app.snapshot)
        widgets = [
            *pane.plots,
            pane.query_one("#system"),
            pane.query_one("#events"),
            app.query_one("#header"),
        ]
        fetch, draw, screen = [], [], []
        with RunReader(run_dir) as r:
            for _ in range(repeats):
                t = time.perf_counter()
                read_plot_series(r, *key[1:])
                fetch.append(time.perf_counter() - t)
                t = time.perf_counter()
                for w in widgets:
                    w.render()
                draw.append(time.perf_counter() - t)
                for w in widgets:
                    w.refresh()
                t = time.perf_counter()
                screen_text(app)
                screen.append(time.perf_counter() - t)
    med = lambda xs: sorted(xs)[len(xs) // 2] * 1e3  # noqa: E731
    return {
        "read": med(fetch),
        "draw": med(draw),
        "screen": med(screen),
        "total": med(fetch) + med(draw) + med(screen),
    }


# -- a live run -------------------------------------------------------------------------------
def start_engine(root: Path) -> tuple[subprocess.Popen, Path]:
    recipe = root / "fast.py"
    recipe.write_text(RECIPE)
    run_dir = root / "runs" / f"live-{os.getpid()}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dltui.engine",
            "--run-dir",
            str(run_dir),
            "--detached",
            str(recipe),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not ((run_dir / "control.sock").exists() and (run_dir / "run.sqlite").exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the benchmark engine did not start")
        time.sleep(0.05)
    return proc, run_dir


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=False).stdout


# Run in the pane: the real app, with Plot.render wrapped to note when it first draws data, so
# first paint is timed from the process' own start (tmux's capture latency is not counted).
LAUNCHER = """
import sys, time
T0 = time.time()  # the script's first line: only the interpreter's own start comes before
from dltui.tui.widgets.plot import Plot
from dltui.tui.app import run_app
draw = Plot.render
def render(self):
    out = draw(self)
    if self.traces and not hasattr(Plot, "painted_at"):
        Plot.painted_at = time.time()
        open(sys.argv[2], "w").write(repr(Plot.painted_at - T0))
    return out
Plot.render = render
run_app(sys.argv[1])
"""


def python_start_s() -> float:
    """Wall time of a bare `python -c pass`: what the launcher's first line cannot see."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t


PYTHON_START_S = 0.0


def watch_in_tmux(run_dir: Path, seconds: float) -> dict:
    """Open the app in a 120x40 tmux pane; time its first paint, then sample CPU and RSS."""
    global PYTHON_START_S
    PYTHON_START_S = python_start_s()
    session = f"dltui-bench-{os.getpid()}"
    launcher, mark = WORK / "launch_app.py", WORK / f"painted-{os.getpid()}"
    launcher.write_text(LAUNCHER)
    mark.unlink(missing_ok=True)
    t0 = time.monotonic()
    tmux(
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        str(SIZE[0]),
        "-y",
        str(SIZE[1]),
        f"{sys.executable} {launcher} {run_dir} {mark}",
    )
    try:
        first_paint = first_paint_cpu = seen = None
        proc = None
        while time.monotonic() - t0 < 15:
            if proc is None and (
                pids := tmux("list-panes", "-t", session, "-F", "#{pane_pid}").split()
            ):
                proc = psutil.Process(int(pids[0]))
            if first_paint is None and mark.exists() and mark.read_text():
                first_paint = float(mark.read_text()) + PYTHON_START_S
                cpu = proc.cpu_times()
                first_paint_cpu = cpu.user + cpu.system  # what the load on the box can't inflate
            screen = tmux("capture-pane", "-p", "-t", session)
            if "RUNNING" in screen and "train" in screen:  # header state and a plot legend
                seen = time.monotonic() - t0
                break
            time.sleep(
                0.05
            )  # each capture-pane is a process: polling harder slows what it measures
        time.sleep(2.0)  # settle: imports and the first fetches are not the steady state
        cpu0, w0 = proc.cpu_times(), time.monotonic()
        rss = [(0.0, proc.memory_info().rss)]
        while time.monotonic() - w0 < seconds:
            time.sleep(min(10.0, seconds / 4))
            rss.append((time.monotonic() - w0, proc.memory_info().rss))
        cpu1, w1 = proc.cpu_times(), time.monotonic()
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (w1 - w0)
        return {
            "first_paint": first_paint,
            "first_paint_cpu": first_paint_cpu,
            "seen": seen,
            "cpu": cpu,
            "rss": rss,
            "how": "tmux pane, real terminal",
        }
    finally:
        tmux("kill-session", "-t", session)
        mark.unlink(missing_ok=True)


async def first_paint_in_process(run_dir: Path) -> float:
    """Seconds from make_app() to a drawn loss plot, with Python and Textual already imported."""
    t0 = time.monotonic()
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        while not app.query_one(OverviewPane).plots[0].traces:
            await pilot.pause(0.01)
        return time.monotonic() - t0


async def watch_headless(run_dir: Path, seconds: float) -> dict:
    """The same in this process with App.run_test() (no terminal output is written)."""
    me = psutil.Process()
    t0 = time.monotonic()
    app = make_app(run_dir)
    async with app.run_test(size=SIZE) as pilot:
        while not app.query_one(OverviewPane).plots[0].traces:
            await pilot.pause(0.02)
        first_paint = time.monotonic() - t0
        await pilot.pause(2.0)
        cpu0, w0 = time.process_time(), time.monotonic()
        rss = [(0.0, me.memory_info().rss)]
        while time.monotonic() - w0 < seconds:
            await pilot.pause(min(10.0, seconds / 4))
            rss.append((time.monotonic() - w0, me.memory_info().rss))
        cpu = (time.process_time() - cpu0) / (time.monotonic() - w0)
    return {
        "first_paint": first_paint,
        "first_paint_cpu": None,
        "seen": None,
        "cpu": cpu,
        "rss": rss,
        "how": "App.run_test() in-process",
    }


def verdict(ok: bool) -> str:
    return "ok" if ok else "OVER TARGET"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--watch", type=float, default=20.0, help="seconds to watch the live run")
    p.add_argument("--big", type=int, default=1_000_000, help="steps in the big store")
    args = p.parse_args()
    WORK.mkdir(exist_ok=True)
    print(
        f"dltui dashboard benchmark ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, textual "
        f"{__import__('textual').__version__})"
    )

    t = time.perf_counter()
    small = build_store(WORK / "store-100", 100)
    big = build_store(WORK / f"store-{args.big}", args.big)
    print(f"stores ready in {time.perf_counter() - t:.1f} s ({big})")
    res = {}
    for name, d in (("100 steps", small), (f"{args.big:,} steps", big)):
        res[name] = asyncio.run(refresh_times(d))
        r = res[name]
        print(
            f"overview refresh at {SIZE[0]}x{SIZE[1]}, {name:>16}: read {r['read']:6.2f} ms  draw "
            f"{r['draw']:6.2f} ms  screen {r['screen']:6.2f} ms  total {r['total']:6.2f} ms  "
            f"[target <= 50 ms: {verdict(r['total'] <= 50)}]"
        )
    a, b = res.values()
    print(f"redraw, {args.big:,} vs 100 steps: {b['total'] / a['total']:.2f}x the time")

    proc, run_dir = start_engine(WORK)
    try:
        live = (
            watch_in_tmux(run_dir, args.watch)
            if shutil.which("tmux")
            else asyncio.run(watch_headless(run_dir, args.watch))
        )
        inproc = asyncio.run(first_paint_in_process(run_dir))
        with RunReader(run_dir) as r:
            steps = r.meta()["progress"]["step"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(run_dir, ignore_errors=True)
    fp, fp_cpu = live["first_paint"], live["first_paint_cpu"]
    print(f"live run ({live['how']}, engine at step {steps} when done):")
    if fp is None:
        print("  first paint: not seen within 15 s  [OVER TARGET]")
    else:
        cpu_note = f", {fp_cpu:.2f} s of it CPU" if fp_cpu else ""
        print(
            f"  first paint after the engine is up, from the app process' start (incl. "
            f"{PYTHON_START_S:.2f} s interpreter start) to the plots drawn: "
            f"{fp:.2f} s{cpu_note}  [target <= 1 s: {verdict(fp <= 1)}]"
        )
        if live["seen"]:
            print(
                f"  (seen in `tmux capture-pane` {live['seen']:.2f} s after `tmux new-session`, "
                "which adds tmux's own start and capture latency)"
            )
    print(
        f"  first paint in-process (make_app() to a drawn plot, imports done): {inproc:.2f} s  "
        f"[target <= 1 s: {verdict(inproc <= 1)}]"
    )
    print(
        f"  TUI process CPU over {args.watch:.0f} s: {live['cpu'] * 100:.1f}% of one core  "
        f"[target < 10%: {verdict(live['cpu'] < 0.10)}]"
    )
    rss = live["rss"]
    growth = (rss[-1][1] - rss[0][1]) / 2**20
    late = (rss[-1][1] - rss[len(rss) // 2][1]) / 2**20  # bounded caches fill early, then it stops
    print("  RSS over time: " + "  ".join(f"{t:.0f}s {v / 2**20:.1f} MiB" for t, v in rss))
    print(
        f"  RSS growth: {growth:+.1f} MiB in all, {late:+.1f} MiB over the second half (Textual's "
        "render caches and SQLite's page cache fill for ~2 minutes, then stay; see --watch 180)"
    )


if __name__ == "__main__":
    main()
