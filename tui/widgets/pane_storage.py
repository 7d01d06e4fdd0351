"""PaneStorage: a drawing of a tensor's 1-D storage as a row of cells, its elements numbered in order.

Given a layout (shape, stride, storage_offset) and a window [lo, hi) of the storage, every cell
the tensor touches shows `#k` (its k-th element in row-major order), and under it the step from
element k-1: `+s` is the last dimension's stride, `↵+j` the jump to the next row. Long runs of
untouched cells fold into one `⋯n` cell, so a stride of 1000 still fits on a line.
"""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

MAX_SEGMENTS = 72  # cells drawn before "… more": a window is at most 128 cells anyway
DIM_NAMES = "ijklmn"


def element_positions(
    shape: list[int], stride: list[int], offset: int, lo: int, hi: int, budget: int = 50_000
) -> dict[int, list[int]]:
    """Storage position -> row-major numbers of the elements stored there, for positions in [lo, hi).

    Walks the index space dimension by dimension and only visits index ranges whose reachable
    positions intersect the window, so a 1M-element tensor costs what its window holds, not 1M.
    `budget` bounds the work for stride-0 (expanded) tensors where many elements share a cell.
    """
    n = len(shape)
    out: dict[int, list[int]] = {}
    if any(s == 0 for s in shape) or hi <= lo:
        return out
    mult = [math.prod(shape[d + 1 :]) for d in range(n)]
    # Lowest / highest position offset reachable from dims d.. onwards.
    low = [0] * (n + 1)
    high = [0] * (n + 1)
    for d in range(n - 1, -1, -1):
        reach = (shape[d] - 1) * stride[d]
        low[d], high[d] = low[d + 1] + min(0, reach), high[d + 1] + max(0, reach)
    left = [budget]

    def walk(d: int, pos: int, num: int) -> None:
        if left[0] <= 0:
            return
        if d == n:
            left[0] -= 1
            if lo <= pos < hi:
                out.setdefault(pos, []).append(num)
            return
        s, size = stride[d], shape[d]
        # The i for which pos + i*s can still land in [lo, hi) after the remaining dims.
        a, b = lo - high[d + 1] - pos, hi - 1 - low[d + 1] - pos
        if s > 0:
            first, last = -(-a // s), b // s
        elif s < 0:
            first, last = -(-b // s), a // s
        else:
            first, last = (0, size - 1) if a <= 0 <= b else (1, 0)
        for i in range(max(0, first), min(size - 1, last) + 1):
            walk(d + 1, pos + i * s, num + i * mult[d])

    walk(0, offset, 0)
    return out


def unravel(k: int, shape: list[int]) -> list[int]:
    index = []
    for size in reversed(shape):
        k, i = divmod(k, size)
        index.append(i)
    return index[::-1]


def position(k: int, shape: list[int], stride: list[int], offset: int) -> int:
    return offset + sum(i * s for i, s in zip(unravel(k, shape), stride, strict=True))


def formula(shape: list[int], stride: list[int], offset: int, ascii_mode: bool) -> str:
    """`[i, j] -> 1 + 1*i + 32*j`: where element [i, j] lives in the storage."""
    names = [DIM_NAMES[d] if len(shape) <= len(DIM_NAMES) else f"i{d}" for d in range(len(shape))]
    dot = "*" if ascii_mode else "·"
    terms = [str(offset)] + [f"{s}{dot}{nm}" for s, nm in zip(stride, names, strict=True)]
    return f"[{', '.join(names)}] -> " + " + ".join(terms).replace("+ -", "- ")


def segments(lo: int, hi: int, marks: dict[int, list[int]], fold_at: int = 3) -> list[tuple]:
    """The cells of [lo, hi): ("cell", pos) each, with runs of >= fold_at untouched cells folded
    into ("gap", first_pos, count)."""
    out: list[tuple] = []
    run: list[int] = []

    def flush() -> None:
        if len(run) >= fold_at:
            out.append(("gap", run[0], len(run)))
        else:
            out.extend(("cell", p) for p in run)
        run.clear()

    for p in range(lo, hi):
        if p in marks:
            flush()
            out.append(("cell", p))
        else:
            run.append(p)
    flush()
    return out


class PaneStorage(Widget):
    """Header (shape, stride, offset, index formula, touched cells) and the cell drawing.

    Two of these side by side (base and view) line up cell for cell: the base is drawn over the
    view's window, folded where the view is folded (`fold_by`), at the same cell width (`min_w`).
    """

    DEFAULT_CSS = """
    PaneStorage { height: auto; padding: 0 1 1 0; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.title = ""
        self.info: dict[str, Any] | None = None
        self.window: tuple[int, int] | None = None
        self.accent = "green"
        self.marks: dict[int, list[int]] = {}
        self.cells: list[tuple[str, str, str, str, str]] = []  # top, mid, style, bottom, style
        self.more = 0  # cells cut off after MAX_SEGMENTS
        self.cell_w = 2  # the widest label
        self.min_w = 0  # set by the pane to line up with a partner drawing

    def set_tensor(
        self,
        title: str,
        info: dict[str, Any] | None,
        window: tuple[int, int] | None = None,
        accent: str = "green",
        fold_by: dict[int, Any] | None = None,
    ) -> None:
        """Draw `info` (a `tensor` reply) over `window` (default: the reply's storage_window)."""
        self.title, self.info, self.accent, self.min_w = title, info, accent, 0
        sw = (info or {}).get("storage_window") or {}
        self.window = window or ((sw["lo"], sw["hi"]) if "lo" in sw else None)
        self.marks, self.cells, self.more = {}, [], 0
        if info and self.window:
            lo, hi = self.window
            self.marks = element_positions(
                info["shape"], info["stride"], info["storage_offset"], lo, hi
            )
            self._make_cells(segments(lo, hi, self.marks if fold_by is None else fold_by))
        self.refresh(layout=True)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.build(width).split())

    def render(self) -> Text:
        return self.build(self.size.width)

    # -- drawing ---------------------------------------------------------------------------------
    @property
    def ascii_mode(self) -> bool:
        return bool(getattr(self.app, "ascii_mode", False))

    def _make_cells(self, segs: list[tuple]) -> None:
        t = self.info or {}
        shape, stride, off = t["shape"], t["stride"], t["storage_offset"]
        self.more = max(0, len(segs) - MAX_SEGMENTS)
        ellipsis, carry = ("..", ">") if self.ascii_mode else ("⋯", "↵")
        for seg in segs[:MAX_SEGMENTS]:
            if seg[0] == "gap":
                self.cells.append(("", f"{ellipsis}{seg[2]}", "dim", "", ""))
                continue
            p = seg[1]
            ks = self.marks.get(p)
            if not ks:
                self.cells.append((str(p), "." if self.ascii_mode else "·", "dim", "", ""))
                continue
            k = ks[0]
            mid = f"#{k}" + ("*" if len(ks) > 1 else "")
            bottom, bstyle = "", ""
            if k > 0 and shape:
                # The step from the previous element in logical order: the last dim's stride
                # inside a row, a different jump (marked) when the index wraps to the next row.
                jump = p - position(k - 1, shape, stride, off)
                new_row = unravel(k, shape)[-1] == 0
                bottom = (carry if new_row else "") + f"{jump:+d}"
                bstyle = "magenta" if new_row else "cyan"
            self.cells.append((str(p), mid, f"reverse bold {self.accent}", bottom, bstyle))
        widest = [max(len(c[0]), len(c[1]), len(c[3])) for c in self.cells]
        self.cell_w = max(2, min(10, max(widest, default=2)))

    def build(self, width: int) -> Text:
        t = self.info
        out = Text(self.title, style=f"bold {self.accent}", no_wrap=True, overflow="ellipsis")
        if not t:
            return out
        shape, stride, off = t["shape"], t["stride"], t["storage_offset"]
        # Header lines never wrap, so two drawings side by side keep their cells level.
        out.append(f"\nshape {shape}")
        out.append(f"\nstride {stride}  offset {off}")
        out.append("\n" + formula(shape, stride, off, self.ascii_mode), style="dim")
        firsts = [v["storage"] for v in t.get("values") or []]
        out.append("\ntouches storage " + (", ".join(map(str, firsts[:24])) or "-"))
        if self.window is None:
            return out
        lo, hi = self.window
        out.append(f"\nstorage[{lo}:{hi}] of {t.get('storage_numel', 0):,}", style="dim")
        self._draw(out, width)
        return out

    def _draw(self, out: Text, width: int) -> None:
        w = max(self.cell_w, self.min_w)
        per_line = max(1, (width - 1) // (w + 1))
        bar = "|" if self.ascii_mode else "│"
        for start in range(0, len(self.cells), per_line):
            top, mid, bot = Text("\n"), Text("\n"), Text("\n")
            for c_top, c_mid, c_style, c_bot, c_bstyle in self.cells[start : start + per_line]:
                top.append(" " + c_top[-w:].rjust(w), style="dim")
                mid.append(bar, style="dim")
                mid.append(c_mid[-w:].rjust(w), style=c_style)
                bot.append(" " + c_bot[-w:].rjust(w), style=c_bstyle)
            mid.append(bar, style="dim")
            out.append_text(top)
            out.append_text(mid)
            out.append_text(bot)  # always, even blank: keeps side-by-side drawings level
        if self.more > 0:
            out.append(f"\n… {self.more} more cells", style="dim")
        if any(len(v) > 1 for v in self.marks.values()):
            out.append("\n* several elements share this cell (a stride of 0)", style="dim")
