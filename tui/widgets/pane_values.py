"""PaneValues: a small grid of a tensor's first values (from the engine's `tensor` reply)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from .format import fmt_value

MAX_ROWS = 8


def grid(
    values: list[dict[str, Any]], shape: list[int]
) -> tuple[list[str], list[tuple[str, list]]]:
    """(column labels, [(row label, cells)]) of the values, rows keyed by all but the last index.

    A 1-D tensor folds into rows of 8 so it reads like a matrix: row label = first index.
    """
    if not shape:
        return [""], [("[]", [fmt_value(values[0]["value"])] if values else [])]
    if len(shape) == 1:
        cols = [str(i) for i in range(min(8, shape[0]))]
        rows: dict[str, list[str]] = {}
        for v in values:
            (i,) = v["index"]
            rows.setdefault(f"[{i - i % 8}+]", []).append(fmt_value(v["value"]))
        return cols, list(rows.items())
    rows = {}
    width = 0
    for v in values:
        *outer, j = v["index"]
        label = "[" + ", ".join(map(str, outer)) + ", :]"
        rows.setdefault(label, []).append(fmt_value(v["value"]))
        width = max(width, j + 1)
    return [str(j) for j in range(width)], list(rows.items())


class PaneValues(Widget):
    """The values window: row labels on the left, the last dimension's index across the top."""

    DEFAULT_CSS = """
    PaneValues { height: auto; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.info: dict[str, Any] | None = None

    def set_tensor(self, info: dict[str, Any] | None) -> None:
        self.info = info
        self.refresh(layout=True)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.build(width).split())

    def render(self) -> Text:
        return self.build(self.size.width)

    def build(self, width: int) -> Text:
        t = self.info
        out = Text("values", style="bold")
        if not t:
            return out
        values = t.get("values") or []
        if not values:
            out.append("  (none: empty tensor or no data on this device)", style="dim")
            return out
        out.append(f"  first {len(values)} of {t.get('numel', len(values)):,}", style="dim")
        cols, rows = grid(values, t["shape"])
        label_w = max(len(r[0]) for r in rows)
        cell_w = max(6, max(len(c) for _, cells in rows for c in cells))
        fit = max(1, (width - label_w - 1) // (cell_w + 1))
        cut = len(cols) > fit
        cols = cols[:fit]
        head = Text("\n" + " " * label_w, style="dim")
        for c in cols:
            head.append(" " + c.rjust(cell_w))
        out.append_text(head)
        for label, cells in rows[:MAX_ROWS]:
            out.append("\n" + label.rjust(label_w), style="dim")
            out.append("".join(" " + c.rjust(cell_w) for c in cells[:fit]))
            if cut or len(cells) > fit:
                out.append(" …", style="dim")
        if len(rows) > MAX_ROWS or t.get("truncated"):
            out.append("\n…", style="dim")
        return out
