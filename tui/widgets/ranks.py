"""The Ranks view of a distributed run (torchrun) in the System panel: a line per rank (host,
device, step, step time, data time, LR) under a headline naming the straggler."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from dltui.run.ranks import ranks_of, straggler

from .format import fmt_bytes, fmt_num

MAX_RANK_LINES = 8  # past this the slowest ranks are listed, the rest counted


def rank_lines(meta: dict[str, Any]) -> list[Text]:
    """Nothing for a single-process run."""
    ranks = ranks_of(meta)
    if len(ranks) < 2:
        return []
    s = straggler(ranks)
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append(f"{meta.get('world_size') or len(ranks)} ranks", "bold")
    if s is not None:
        style = "yellow" if s.lagging else "dim"
        head.append(
            f"  slowest rank {s.rank} {s.step_time_s * 1e3:.1f} ms/step, fastest rank "
            f"{s.fastest_rank} {s.fastest_s * 1e3:.1f} ms ({s.ratio:.2f}x)",
            style,
        )
    shown = ranks
    if len(ranks) > MAX_RANK_LINES:  # the slowest are the ones to see
        shown = sorted(ranks, key=lambda r: -(r.get("step_time_s") or 0))[: MAX_RANK_LINES - 1]
        shown.sort(key=lambda r: r["rank"])
    out = [head]
    for r in shown:
        t = Text(no_wrap=True, overflow="ellipsis")
        slow = s is not None and s.lagging and r["rank"] == s.rank
        t.append(f" rank {r['rank']:<3}", "bold yellow" if slow else "bold")
        st, dt = r.get("step_time_s"), r.get("data_time_s")
        t.append(f" step {r.get('step', '-'):<7}")
        t.append(f" {st * 1e3:7.1f} ms" if isinstance(st, (int, float)) else "       - ms")
        t.append(f" data {dt * 1e3:5.1f} ms" if isinstance(dt, (int, float)) else "")
        t.append(f"  lr {', '.join(fmt_num(x) for x in r.get('lrs') or []) or '-'}")
        t.append(f"  {r.get('host', '?')} {r.get('device', '?')}", "dim")
        if r.get("memory_rss"):
            t.append(f" RSS {fmt_bytes(r['memory_rss'])}", "dim")
        if r.get("status") not in (None, "running"):
            t.append(f"  {r['status']}", "dim")
        out.append(t)
    if len(shown) < len(ranks):
        out.append(Text(f" … {len(ranks) - len(shown)} more ranks", "dim"))
    return out
