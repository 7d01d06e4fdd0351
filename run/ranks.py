"""The ranks of a distributed run as its store records them (meta 'ranks'), and the straggler.

Torch-free: `dltui status` and the dashboard's System panel both read it. Under DDP every rank
waits for the slowest in each gradient all-reduce, so step times converge; the slowest rank is
the one whose own time (step time less the wait it causes the others) is largest, which shows as
the largest step time and data time. Reports are up to half a second apart, so their steps are
not compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STRAGGLER_RATIO = 1.1  # slowest over fastest step time worth pointing at


@dataclass(frozen=True)
class Straggler:
    rank: int  # the slowest rank
    step_time_s: float
    fastest_rank: int
    fastest_s: float

    @property
    def ratio(self) -> float:
        return self.step_time_s / self.fastest_s if self.fastest_s > 0 else float("inf")

    @property
    def lagging(self) -> bool:
        """Worth pointing at: clearly slower than the fastest rank."""
        return self.ratio >= STRAGGLER_RATIO

    def as_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "step_time_s": self.step_time_s,
            "fastest_rank": self.fastest_rank,
            "fastest_s": self.fastest_s,
            "ratio": round(self.ratio, 3),
        }


def ranks_of(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """meta['ranks'] (rank 0 first), [] for a single-process run."""
    ranks = meta.get("ranks")
    if not isinstance(ranks, list):
        return []
    return sorted(
        (r for r in ranks if isinstance(r, dict) and "rank" in r), key=lambda r: r["rank"]
    )


def straggler(ranks: list[dict[str, Any]]) -> Straggler | None:
    """The slowest rank by step time against the fastest; None with fewer than two timed ranks."""
    timed = [r for r in ranks if isinstance(r.get("step_time_s"), (int, float))]
    if len(timed) < 2:
        return None
    slow = max(timed, key=lambda r: r["step_time_s"])
    fast = min(timed, key=lambda r: r["step_time_s"])
    return Straggler(
        rank=slow["rank"],
        step_time_s=float(slow["step_time_s"]),
        fastest_rank=fast["rank"],
        fastest_s=float(fast["step_time_s"]),
    )
