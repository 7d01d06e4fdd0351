"""How fast the run browser lists a large runs dir (issue 12: 1,000 runs in under a second).

Builds N finished runs (real stores, copied from one written by RunStore), then prints:
the catalog's first read with no cache (every store opened), a fresh process's read from the
cache file (what `dltui` pays when opened again), a refresh with nothing changed, and the Runs
screen's time from mount to a table holding every run, warm.

    python benchmarks/runs.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from textual.app import App
from textual.widgets import DataTable

from dltui.engine.store import RunStore
from dltui.run import wire
from dltui.run.catalog import CACHE_NAME, Catalog
from dltui.tui.screens.runs import RunsScreen


def build(root: Path, n: int) -> Path:
    runs = root / "runs"
    seed = root / "seed"
    seed.mkdir(parents=True)
    st = RunStore(seed / "run.sqlite")
    st.start()
    for step in range(1, 2001):
        st.scalars(step, step // 200, wire.TRAIN, 1e9 + step, {"loss": 1 / step, "lr/0": 0.1})
    st.set_meta(script="/x/train.py", started=1e9, progress={"step": 2000, "total_steps": 2000})
    st.set_meta(hparams={"lr": 0.1, "width": 256}, best={"val_loss": 0.25})
    st.close(wire.FINISHED)
    for i in range(n):
        d = runs / f"20260101-{i:06d}-train"
        d.mkdir(parents=True)
        shutil.copy(seed / "run.sqlite", d / "run.sqlite")
    return runs


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


async def first_paint(runs: Path, n: int) -> float:
    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(RunsScreen(runs))

    app = Host()
    t = time.perf_counter()
    async with app.run_test(size=(120, 40)) as pilot:
        while not (
            isinstance(app.screen, RunsScreen) and app.screen.query_one(DataTable).row_count == n
        ):
            await pilot.pause(0.01)
        return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=1000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = build(Path(tmp), args.runs)
        cold, rows = timed(lambda: Catalog(runs).refresh())
        (runs / CACHE_NAME).unlink(missing_ok=True)
        Catalog(runs).refresh()  # writes the cache
        warm, _ = timed(lambda: Catalog(runs).refresh())
        c = Catalog(runs)
        c.refresh()
        again, _ = timed(c.refresh)
        paint = asyncio.run(first_paint(runs, args.runs))
    print(f"runs: {len(rows)}")
    print(f"catalog, no cache (every store opened): {cold * 1000:8.0f} ms")
    print(f"catalog, new process with cache:        {warm * 1000:8.0f} ms")
    print(f"catalog refresh, nothing changed:       {again * 1000:8.0f} ms")
    print(f"Runs screen mount -> all rows (cached): {paint * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
