"""Every number, count, size and duration the dashboard shows: one module, short fixed widths.

fmt_num: a measured value (loss, norm, LR) in at most 9 characters; fmt_count: a whole count
(parameters, steps); fmt_value: one element of a tensor; fmt_ticks: axis labels that stay
distinct however close the values; fmt_duration, fmt_bytes, fmt_percent. Nothing here cuts a
number: a narrow place drops a column instead (the Layers table), never digits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from rich.text import Text


def fmt_num(v: float | None, integer: bool = False) -> str:
    """4 significant digits, compact: 2.301, 0.0125, 1.2e-05, 15.8k, 1.2M; '-' for none."""
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    a = abs(v)
    if integer and a < 10_000:
        return str(int(round(v)))
    if a >= 1e12:  # past giga a suffix stops helping: 2.1e+299, not 2.1e+290G
        return f"{v:.2e}"
    if a >= 1e9:
        return f"{v / 1e9:.3g}G"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a == 0 or a >= 1e-3:
        return f"{v:.4g}"
    return f"{v:.2e}"


def fmt_count(n: float | None) -> str:
    """A whole count: 812, 9999, 15.8k, 1.2M; '-' for none."""
    return fmt_num(n, integer=True)


def fmt_percent(fraction: float | None, digits: int = 1) -> str:
    """A fraction as a percentage: 0.1234 -> '12.3%'; '-' for none."""
    if fraction is None or not math.isfinite(fraction):
        return "-"
    return f"{100 * fraction:.{digits}f}%"


def fmt_value(v: Any) -> str:
    """One tensor element as the engine sends it: int, bool, float, or [re, im] for complex."""
    if isinstance(v, bool | int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) == 2:
        return f"{v[0]:.3g}{v[1]:+.3g}j"
    return str(v)


def fmt_ticks(values: Sequence[float]) -> list[str]:
    """Axis labels for `values` (top to bottom), with as many digits as it takes to tell them
    apart: 0.05 / 0.05 / 0.05 becomes 0.0501 / 0.05005 / 0.05 (at most 7 significant digits)."""
    for digits in range(3, 8):
        out = [_sig(v, digits) for v in values]
        if len(set(out)) == len(set(values)):
            return out
    return out


def _sig(v: float, digits: int) -> str:
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-3 <= a < 1e5:
        return f"{v:.{digits}g}"
    return f"{v:.{max(1, digits - 2)}e}"


def fmt_duration(seconds: float | None) -> str:
    """12s, 4:05, 1:02:03, 3d04h; '-' for none."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(max(0.0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}:{m:02d}:{s:02d}"
    if m:
        return f"{m}:{s:02d}"
    return f"{s}s"


def fmt_bytes(n: float | None) -> str:
    """Bytes in binary units with 3 digits: 441M, 2.0G, 80G."""
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return "-"


def join_lines(lines: Iterable[Text]) -> Text:
    """Lines into one Text that never wraps: each line is cut at the widget's edge with an ellipsis."""
    text = Text("\n", no_wrap=True, overflow="ellipsis").join(lines)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text
