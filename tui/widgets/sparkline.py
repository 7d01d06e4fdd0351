"""A one-line sparkline of a short history: block characters, or plain ASCII with --ascii."""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"
ASCII_LEVELS = "_.-=+*#@"


def sparkline(
    values: Sequence[float],
    width: int,
    *,
    ascii: bool = False,
    lo: float | None = None,
    hi: float | None = None,
    min_span: float = 0.2,
) -> str:
    """The newest `width` values as one character each, scaled to [lo, hi] (default: their range).

    Fixed bounds (0..100 for a percentage) keep a flat 50% from looking like a full bar; without
    them the range is at least `min_span` of the top value, so 1% jitter stays a flat line.
    """
    if width <= 0:
        return ""
    vals = [v for v in values[-width:] if v is not None and math.isfinite(v)]
    if not vals:
        return " " * width
    levels = ASCII_LEVELS if ascii else BLOCKS
    hi = max(vals) if hi is None else hi
    lo = min(min(vals), hi - min_span * abs(hi)) if lo is None else lo
    span = hi - lo
    chars = []
    for v in vals:
        f = 0.0 if span <= 0 else (min(max(v, lo), hi) - lo) / span
        chars.append(levels[min(len(levels) - 1, int(f * len(levels)))])
    return "".join(chars).rjust(width)
