"""The compare view's table: one column per run, one row per field (status, steps, duration,
hparams, the engine's best, each scalar's last and best value); a row whose hparam differs
between the runs is marked with a '*' and drawn in reverse video, so it reads without colour."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from dltui.run.catalog import RunRow

from ..multirun import RunSource, chart_title
from ..screens.runs import progress_text, started_text, status_cell
from .format import fmt_duration, fmt_num

DIFF = "*"  # marks a row whose values differ between the runs (readable without colour)
# Names where a higher value is better; every other scalar is best at its lowest (a loss).
HIGHER_IS_BETTER = ("acc", "f1", "auc", "auroc", "precision", "recall", "score", "iou", "dice")


def higher_is_better(name: str) -> bool:
    """By the words of the name ('val_acc', 'f1_macro', 'mAP'), not any substring of it
    ('bitmap_loss' is a loss)."""
    words = re.split(r"[^a-z0-9]+", name.lower())
    return any(w == "map" or w.startswith(HIGHER_IS_BETTER) for w in words)


@dataclass
class ComparedRun:
    """What the table shows of one run, re-read every POLL_S."""

    row: RunRow
    scalars_seen: int  # the store's newest scalar row id: its curves moved when this did
    resumed_at: tuple[int, ...]  # steps it was resumed from a checkpoint at (same run dir)


class CompareTable(DataTable):
    """Rebuilt only when a cell's text changed (a live run's step, a new last value)."""

    def __init__(self, sources: list[RunSource], **kwargs: Any) -> None:
        super().__init__(zebra_stripes=True, cursor_type="row", **kwargs)
        self.sources = sources
        self._shown: list[tuple[str, ...]] = []

    def on_mount(self) -> None:
        self.add_column("", key="diff", width=1)
        self.add_column("", key="field")
        for src in self.sources:
            self.add_column(Text(f"{src.mark} {src.label}", style=src.color), key=str(src.path))

    def show(self, runs: list[ComparedRun], values: dict[tuple[str, str], list]) -> None:
        rows = table_rows(runs, values)
        shown = [(field, *(str(v) for v in vals)) for field, vals in rows]
        if shown == self._shown:
            return
        self._shown = shown
        hparams = {k for r in runs for k in r.row.hparams} | {"script"}
        keep = self.cursor_row
        self.clear()
        for field, vals in rows:
            differ = field in hparams and len({str(v) for v in vals}) > 1
            style = "bold reverse" if differ else ""
            self.add_row(
                Text(DIFF if differ else "", style="bold"),
                Text(field, style="bold" if differ else ""),
                *(v if isinstance(v, Text) else Text(str(v), style=style) for v in vals),
            )
        if keep < self.row_count:
            self.move_cursor(row=keep)


def table_rows(
    runs: list[ComparedRun], values: dict[tuple[str, str], list]
) -> list[tuple[str, list[Any]]]:
    """(field, one value per run) for every row of the table, in order."""
    rows: list[tuple[str, list[Any]]] = [
        ("status", [status_cell(r.row) for r in runs]),
        ("steps", [progress_text(r.row) for r in runs]),
        ("started", [started_text(r.row) for r in runs]),
        ("duration", [fmt_duration(r.row.duration) for r in runs]),
        ("continued", [continued_text(r) for r in runs]),
        ("script", [Path(r.row.script).name for r in runs]),
    ]
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r.row.hparams))
    for k in keys:
        rows.append((k, [hparam_text(r.row.hparams, k) for r in runs]))
    best_keys: dict[str, None] = {}
    for r in runs:
        best_keys.update(dict.fromkeys(k for k in r.row.best if k not in ("step", "epoch")))
    for k in best_keys:
        rows.append((f"best {k} (engine)", [fmt_num(_num(r.row.best.get(k))) for r in runs]))
    for key, per_run in values.items():
        direction = "max" if higher_is_better(key[0]) else "min"
        rows.append(
            (
                f"{chart_title(*key)}: last, {direction}",
                [f"{fmt_num(last)}  {fmt_num(best)}" for last, best in per_run],
            )
        )
    return rows


def continued_text(r: ComparedRun) -> str:
    """A run resumed in its own directory continues there: say from which step(s)."""
    if not r.resumed_at:
        return "-"
    steps = ", ".join(str(s) for s in r.resumed_at)
    return f"resumed at step {steps} (same run)"


def hparam_text(hparams: dict[str, Any], key: str) -> str:
    if key not in hparams:
        return "-"
    v = hparams[key]
    return fmt_num(v) if isinstance(v, float) else str(v)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) else None
