"""Several runs on one chart: a reader, colour and glyph per run, legend labels, and each run's
series as a plot trace on a shared time axis. The Metrics tab and the compare view share it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dltui.run import wire
from dltui.run.reader import RunNotFound, RunReader, Series

from .panes.overview import TRAIN_COLOR, VAL_COLOR, _trace
from .widgets.plot import Trace

RUN_COLORS = ("cyan", "yellow", "green", "bright_magenta", "bright_blue", "red", "white")
RUN_MARKS = ("●", "■", "▲", "◆", "✚", "★", "▼")
ASCII_MARKS = ("o", "x", "+", "*", "#", "@", "v")


@dataclass(frozen=True)
class RunSource:
    """One run a chart draws: where its store is, its legend label, colour and glyph."""

    path: Path
    label: str = ""
    color: str = ""
    mark: str = ""  # "" for the dashboard's one run (train/val colours instead)


def run_sources(paths: Sequence[Path], ascii: bool = False) -> list[RunSource]:
    """A colour and a glyph per compared run (glyphs: readable under NO_COLOR and --ascii)."""
    marks = ASCII_MARKS if ascii else RUN_MARKS
    return [
        RunSource(Path(p), Path(p).name, RUN_COLORS[i % len(RUN_COLORS)], marks[i % len(marks)])
        for i, p in enumerate(paths)
    ]


def short_labels(names: Sequence[str]) -> list[str]:
    """The part of each run id that tells it from the others: the '-'-separated words all share
    at the start and the end dropped ('20261201-010203-mnist' -> '010203')."""
    parts = [n.split("-") for n in names]
    if len(parts) < 2:
        return list(names)
    shortest = min(len(p) for p in parts)
    lead = 0
    while lead < shortest - 1 and len({p[lead] for p in parts}) == 1:
        lead += 1
    tail = 0
    while tail < shortest - 1 - lead and len({p[-1 - tail] for p in parts}) == 1:
        tail += 1
    out = ["-".join(p[lead : len(p) - tail]) for p in parts]
    return out if len(set(out)) == len(out) and all(out) else list(names)


def legend_labels(sources: Sequence[RunSource], width: int) -> list[str]:
    """Run names in a chart's legend: whole when they fit its width, else their distinct part."""
    full = [s.label for s in sources]
    need = sum(len(n) + 12 for n in full)  # glyph, value and gap per run
    return full if need <= width else short_labels(full)


def chart_title(name: str, phase: str) -> str:
    return name if phase == wire.TRAIN else f"{name} ({phase})"


def first_wall(r: RunReader) -> float | None:
    """The wall time of the run's first recorded scalar: where its time axis starts (the
    meta's `started` moves when a run is resumed in its own directory)."""
    row = r.db.execute("SELECT wall FROM scalars ORDER BY rowid LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def run_trace(
    s: Series, src: RunSource, phase: str, t0: float | None, label: str | None = None
) -> Trace:
    """One run's series as a trace, its wall times shifted to seconds since the run's start
    (runs started hours apart line up on the time axis; the plot's own t0 is then 0)."""
    val = phase != wire.TRAIN
    if src.mark:
        color, text = src.color, src.label if label is None else label
    else:
        color, text = (VAL_COLOR if val else TRAIN_COLOR), phase
    t = _trace(s, text, color, smooth=not val, points=val)
    walls = tuple(w - (t0 or 0.0) for w in t.walls)
    return dataclasses.replace(t, walls=walls, mark=src.mark)


class Readers:
    """A RunReader per run, opened on first use (a store not there yet is retried later)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self._open: dict[Path, RunReader] = {}

    def get(self, path: Path) -> RunReader | None:
        if path not in self._open:
            try:
                self._open[path] = RunReader(path)
            except (RunNotFound, OSError):
                return None
        return self._open[path]

    def names(self) -> list[tuple[str, str]]:
        """Every (name, phase) any of the runs recorded, in the order first recorded."""
        out: dict[tuple[str, str], None] = {}
        for p in self.paths:
            r = self.get(p)
            for key in r.series_names() if r else ():
                out.setdefault(key, None)
        return list(out)

    def close(self) -> None:
        for r in self._open.values():
            r.close()
        self._open.clear()
