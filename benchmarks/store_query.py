"""How long the dashboard's downsampled query takes on a long run, against run length.

Writes runs of 1,000 / 100,000 / 1,000,000 steps (one metric) through the real RunStore, then
times RunReader.series(name, buckets=N) for plot widths N = 80, 200, 1000, whole range and a
sub-range. The target (issue #2): under 50 ms for a 1,000,000-step metric, and a cost that
does not grow with run length.

    python benchmarks/store_query.py [--steps 1000 100000 1000000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from dltui.engine.store import RunStore
from dltui.run.reader import RunReader


def build(path: Path, steps: int) -> float:
    t = time.perf_counter()
    store = RunStore(path / "run.sqlite")
    store.start()
    for i in range(1, steps + 1):
        store.scalars(
            i,
            i // 1000,
            "train",
            1_700_000_000.0 + i * 0.01,
            {"loss": 2.0 * math.exp(-i / steps) + 0.01 * math.sin(i)},
        )
        if i % 50_000 == 0:
            store.flush()
    store.close("finished")
    return time.perf_counter() - t


def timed(fn, repeat: int = 20) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    args = ap.parse_args()
    print(
        f"{'steps':>10} {'write s':>8} {'N=80 ms':>8} {'N=200 ms':>9} {'N=1000 ms':>10} {'last 10% N=200':>15}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for steps in args.steps:
            d = Path(tmp) / str(steps)
            write_s = build(d, steps)
            with RunReader(d) as r:
                row = [timed(lambda n=n: r.series("loss", buckets=n)) for n in (80, 200, 1000)]
                tail = timed(lambda s=int(steps * 0.9): r.series("loss", buckets=200, start=s))
                s = r.series("loss", buckets=200)
                assert len(s) <= 200 and sum(s.counts) == steps
            print(
                f"{steps:>10,} {write_s:>8.1f} {row[0]:>8.2f} {row[1]:>9.2f} {row[2]:>10.2f} {tail:>15.2f}"
            )
    print("target: < 50 ms for 1,000,000 steps at any plot width, flat in run length")


if __name__ == "__main__":
    main()
