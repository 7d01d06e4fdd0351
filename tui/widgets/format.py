"""Number, size and duration formatting shared by the dashboard's widgets (short, fixed width)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from rich.text import Text


def fmt_num(v: float | None, integer: bool = False) -> str:
    """4 significant digits, compact: 2.301, 0.0125, 1.2e-05, 15.8k, 1.2M; '-' for none."""
    if v is None:
        return "-"
    if not math.isfinite(v):
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
