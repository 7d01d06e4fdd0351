"""Fitting a DataTable's columns to its width without cutting a value: whole columns are dropped
by priority; one column may shrink (its text keeps its end, after an ellipsis) only when nothing
else can go; a flexible column (free text) takes what width is left. The Layers tab and the
Runs screen both fit their tables with it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rich.text import Text

CELL_PAD = 2  # DataTable's cell padding, one cell each side
SCROLLBAR = 2  # the vertical scrollbar's width


@dataclass(frozen=True)
class Fit:
    """The columns kept, in order, with their widths (cell padding not included)."""

    widths: tuple[tuple[str, int], ...]
    shrunk: int | None = None  # the shrinking column's width, when it had to shrink

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.widths)


def measure(headers: Mapping[str, int], rows: Iterable[Mapping[str, Text | str]]) -> dict[str, int]:
    """Each column's natural width: its widest cell, at least `headers[key]` (the header's)."""
    out = dict(headers)
    for row in rows:
        for key, cell in row.items():
            w = cell.cell_len if isinstance(cell, Text) else Text(cell).cell_len
            if w > out.get(key, 0):
                out[key] = w
    return out


def fit_columns(
    natural: Mapping[str, int],
    width: int,
    drop_order: Sequence[str],
    *,
    shrink: str | None = None,
    shrink_min: int = 12,
    flex: str | None = None,
    flex_min: int = 12,
) -> Fit:
    """Fit columns of these natural widths (in display order) into a table `width` wide
    (scrollbar included): drop `drop_order`'s columns, first first, until the rest fit whole;
    then, if still too wide, shrink column `shrink` (not below `shrink_min`). Column `flex` needs
    only `flex_min` and is given whatever width the others leave."""
    room = width - SCROLLBAR
    if room <= 0:  # not laid out yet: every column at its natural width
        return Fit(tuple(natural.items()))
    need = {k: (flex_min if k == flex else w) + CELL_PAD for k, w in natural.items()}
    keep = list(natural)
    for key in drop_order:
        if sum(need[k] for k in keep) <= room:
            break
        if key in keep:
            keep.remove(key)
    widths = {k: natural[k] for k in keep}
    if flex in widths:
        widths[flex] = flex_min
    over = sum(widths[k] + CELL_PAD for k in keep) - room
    shrunk = None
    if over > 0 and shrink in widths:
        shrunk = widths[shrink] = min(natural[shrink], max(shrink_min, natural[shrink] - over))
    elif over < 0 and flex in widths:
        widths[flex] -= over  # the rest of the width
    return Fit(tuple((k, widths[k]) for k in keep), shrunk)


def keep_end(text: str, room: int | None, ascii: bool = False) -> str:
    """`text`, or its end after an ellipsis when it is longer than `room`: a long name's end is
    the part that tells rows apart (…layer3.0.conv1.weight)."""
    if room is None or len(text) <= room:
        return text
    dots = "..." if ascii else "…"
    return dots + text[len(text) - room + len(dots) :]
