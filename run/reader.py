"""Read a run store (torch-free): metadata, status, downsampled series, events, console, stats.

The dashboard and the CLI read through this; it never writes, so any number can read at once.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import wire

DB_NAME = "run.sqlite"
_NO_END = 2**63 - 1  # "up to any step" in a step <= ? bound


class RunNotFound(FileNotFoundError):
    """No run store at the given place."""


@dataclass
class Series:
    """A series downsampled to at most N buckets (columnar, ready to plot)."""

    name: str
    phase: str
    steps: list[int] = field(default_factory=list)  # last step in each bucket
    walls: list[float] = field(default_factory=list)  # wall time of that step
    mins: list[float | None] = field(default_factory=list)
    maxs: list[float | None] = field(default_factory=list)
    means: list[float | None] = field(default_factory=list)
    lasts: list[float | None] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)


def pid_alive(pid: int) -> bool:
    """Is this process running (a zombie, killed but not yet reaped, is not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] not in "ZX"
    except (OSError, ValueError, IndexError):
        return True


class RunReader:
    """Read-only view of one run's SQLite store."""

    def __init__(self, run: Path | str) -> None:
        p = Path(run)
        self.path = p / DB_NAME if p.is_dir() else p
        if not self.path.exists():
            raise RunNotFound(f"no run store at {self.path}")
        self.run_dir = self.path.parent
        self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout=2000")
        self._series_ids: dict[tuple[str, str], int] = {}

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata and status ---------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """The run's metadata; {} for a store its engine is creating this very moment."""
        try:
            rows = self.db.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return {}
            raise
        return {k: json.loads(v) for k, v in rows}

    def status(self, meta: dict[str, Any] | None = None) -> str:
        """starting / running / paused / finished / failed / stopped, or crashed when the
        engine vanished (while starting too: a recipe killed during its import)."""
        m = self.meta() if meta is None else meta
        if not m:  # the schema is being written (an engine's first moments), or never was
            from .runs import lock_holder  # (runs imports this module)

            return wire.STARTING if lock_holder(self.run_dir) else wire.CRASHED
        status = m.get("status", wire.RUNNING)
        if status not in (wire.RUNNING, wire.STARTING):
            return status
        if engine_gone(m):
            return wire.CRASHED
        if status == wire.STARTING:
            return status
        progress = m.get("progress") or {}
        if progress.get("mode") == "eval":
            return "eval"
        return "paused" if progress.get("paused") else status

    # -- scalars ---------------------------------------------------------------------------
    def series_names(self) -> list[tuple[str, str]]:
        return [tuple(r) for r in self.db.execute("SELECT name, phase FROM series ORDER BY id")]

    def _sid(self, name: str, phase: str) -> int | None:
        key = (name, phase)
        if key not in self._series_ids:
            row = self.db.execute(
                "SELECT id FROM series WHERE name = ? AND phase = ?", key
            ).fetchone()
            if row is None:
                return None
            self._series_ids[key] = row[0]
        return self._series_ids[key]

    def step_range(self, name: str, phase: str = wire.TRAIN) -> tuple[int, int] | None:
        sid = self._sid(name, phase)
        if sid is None:
            return None
        lo = self.db.execute(
            "SELECT step FROM scalars WHERE series = ? ORDER BY step LIMIT 1", (sid,)
        ).fetchone()
        hi = self.db.execute(
            "SELECT step FROM scalars WHERE series = ? ORDER BY step DESC LIMIT 1", (sid,)
        ).fetchone()
        return None if lo is None else (lo[0], hi[0])

    def last(self, name: str, phase: str = wire.TRAIN) -> tuple[int, float | None] | None:
        """(step, value) of the newest point of a series."""
        sid = self._sid(name, phase)
        if sid is None:
            return None
        row = self.db.execute(
            "SELECT step, value FROM scalars WHERE series = ? ORDER BY step DESC, rowid DESC LIMIT 1",
            (sid,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def series(
        self,
        name: str,
        phase: str = wire.TRAIN,
        buckets: int = 200,
        start: int | None = None,
        end: int | None = None,
    ) -> Series:
        """The series over [start, end] in at most `buckets` buckets (min/max/mean/last each).

        Reads from the coarsest rollup level that still gives >= `buckets` source buckets, so
        it touches fewer than ROLLUP_BASE * buckets rows whatever the run's length.
        """
        out = Series(name, phase)
        sid = self._sid(name, phase)
        rng = self.step_range(name, phase) if sid is not None else None
        if rng is None or buckets < 1:
            return out
        start = rng[0] if start is None else max(start, rng[0])
        end = rng[1] if end is None else min(end, rng[1])
        if end < start:
            return out
        span = end - start + 1
        level = 0
        while level < wire.ROLLUP_LEVELS and wire.ROLLUP_BASE ** (level + 1) * buckets <= span:
            level += 1
        rows = self._exact_rows(sid, start, end, level)
        _merge_into(out, rows, start, span, buckets)
        return out

    def _exact_rows(self, sid: int, lo: int, hi: int, level: int) -> list[tuple]:
        """Rows (first_step, n, min, max, sum, last, last_step, wall) covering exactly [lo, hi].

        Whole buckets of `level` inside the range come from the rollup; the partial buckets at
        either edge are covered by the next finer level, recursively, down to raw rows. Each
        edge costs < ROLLUP_BASE rows per level, so the total stays bounded.
        """
        if level == 0:
            return self.db.execute(
                "SELECT step, CASE WHEN value IS NULL THEN 0 ELSE 1 END, value, value,"
                " coalesce(value, 0), value, step, wall FROM scalars"
                " WHERE series = ? AND step BETWEEN ? AND ? ORDER BY step, rowid",
                (sid, lo, hi),
            ).fetchall()
        w = wire.ROLLUP_BASE**level
        first = -(-lo // w)  # first bucket that starts at or after lo
        last = (hi + 1) // w - 1  # last bucket that ends at or before hi
        if first > last:
            return self._exact_rows(sid, lo, hi, level - 1)
        rows = self._exact_rows(sid, lo, first * w - 1, level - 1) if lo < first * w else []
        rows += self.db.execute(
            "SELECT bucket * ?, n, vmin, vmax, vsum, vlast, step_last, wall_last FROM rollup"
            " WHERE series = ? AND level = ? AND bucket BETWEEN ? AND ? ORDER BY bucket",
            (w, sid, level, first, last),
        ).fetchall()
        if (last + 1) * w <= hi:
            rows += self._exact_rows(sid, (last + 1) * w, hi, level - 1)
        return rows

    def scalar_rows(self):
        """Every scalar row (step, epoch, phase, wall, name, value), ordered by step: for export."""
        return self.db.execute(
            "SELECT s.step, s.epoch, r.phase, s.wall, r.name, s.value FROM scalars s"
            " JOIN series r ON r.id = s.series ORDER BY s.step, s.rowid"
        )

    # -- events, console, system -----------------------------------------------------------
    def events(self, after_id: int = 0, limit: int = 500, kind: str | None = None) -> list[dict]:
        q = "SELECT id, wall, step, kind, level, message, data FROM events WHERE id > ?"
        args: list[Any] = [after_id]
        if kind:
            q += " AND kind = ?"
            args.append(kind)
        q += " ORDER BY id LIMIT ?"
        args.append(limit)
        cols = ("id", "wall", "step", "kind", "level", "message", "data")
        out = []
        for row in self.db.execute(q, args):
            d = dict(zip(cols, row, strict=True))
            d["data"] = json.loads(d["data"]) if d["data"] else None
            out.append(d)
        return out

    def last_events(self, n: int = 20) -> list[dict]:
        top = self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        return self.events(after_id=max(0, top - n), limit=n)

    def console(self, after_id: int = 0, limit: int = 1000) -> list[tuple[int, float, str, str]]:
        return self.db.execute(
            "SELECT id, wall, stream, line FROM console WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()

    def system_latest(self) -> dict[str, float]:
        """The newest sample of every system metric."""
        row = self.db.execute("SELECT max(wall) FROM system").fetchone()
        if row is None or row[0] is None:
            return {}
        return dict(self.db.execute("SELECT name, value FROM system WHERE wall = ?", (row[0],)))

    def system_series(self, name: str, since_wall: float) -> list[tuple[float, float]]:
        return self.db.execute(
            "SELECT wall, value FROM system WHERE name = ? AND wall >= ? ORDER BY wall",
            (name, since_wall),
        ).fetchall()

    # -- layers ----------------------------------------------------------------------------
    def params(self) -> list[dict]:
        rows = self.db.execute("SELECT id, name, shape, numel, trainable FROM params ORDER BY id")
        return [
            {"id": i, "name": n, "shape": json.loads(s), "numel": k, "trainable": bool(t)}
            for i, n, s, k, t in rows
        ]

    def layer_stats_latest(self) -> tuple[int | None, dict[str, dict[str, float]]]:
        """(step, {param name: {column: value}}) for the newest stats step."""
        step = self.layer_stat_bounds()[1]
        return step, ({} if step is None else self.layer_stats_at(step))

    def layer_stats_at(self, step: int) -> dict[str, dict[str, float]]:
        """{param name: {column: value}} recorded at exactly this stats step ({} if none)."""
        cols = ", ".join("l." + c for c in wire.LAYER_STAT_COLUMNS)
        out = {}
        for r in self.db.execute(
            f"SELECT p.name, {cols} FROM layer_stats l JOIN params p ON p.id = l.param"
            " WHERE l.step = ?",
            (step,),
        ):
            out[r[0]] = dict(zip(wire.LAYER_STAT_COLUMNS, r[1:], strict=True))
        return out

    # Scrubbing through the recorded stats steps: every query below is one descent of the
    # layer_stats_by_step index (ORDER BY ... LIMIT 1), whatever the run's length; the steps
    # are never listed or counted.
    def layer_stat_bounds(self) -> tuple[int | None, int | None]:
        """(first, last) recorded layer-stats step; (None, None) before the first."""
        first = self.db.execute("SELECT step FROM layer_stats ORDER BY step LIMIT 1").fetchone()
        last = self.db.execute("SELECT step FROM layer_stats ORDER BY step DESC LIMIT 1").fetchone()
        return (first[0] if first else None), (last[0] if last else None)

    def layer_stat_step_moved(self, step: int, records: int) -> int:
        """The recorded stats step `records` recordings after `step` (before, when negative),
        stopping at the first or last one; `step` need not be a recorded step itself."""
        at = step
        for _ in range(abs(records)):
            row = self.db.execute(
                "SELECT step FROM layer_stats WHERE step > ? ORDER BY step LIMIT 1"
                if records > 0
                else "SELECT step FROM layer_stats WHERE step < ? ORDER BY step DESC LIMIT 1",
                (at,),
            ).fetchone()
            if row is None:
                break
            at = row[0]
        return at

    def layer_stat_history(
        self, param: str, column: str, limit: int = 200, until: int | None = None
    ) -> list[tuple[int, float]]:
        """The newest `limit` (step, value) of one parameter's statistic, up to step `until`."""
        if column not in wire.LAYER_STAT_COLUMNS:
            raise ValueError(f"unknown layer statistic {column!r}")
        rows = self.db.execute(
            f"SELECT l.step, l.{column} FROM layer_stats l JOIN params p ON p.id = l.param"
            " WHERE p.name = ? AND l.step <= ? ORDER BY l.step DESC LIMIT ?",
            (param, _NO_END if until is None else until, limit),
        ).fetchall()
        return rows[::-1]

    def histogram_rows(self):
        """Every histogram (step, param name, kind, lo, hi, counts), ordered by step: for export."""
        for step, name, kind, lo, hi, counts in self.db.execute(
            "SELECT h.step, p.name, h.kind, h.lo, h.hi, h.counts FROM histograms h"
            " JOIN params p ON p.id = h.param ORDER BY h.step, p.id, h.kind"
        ):
            yield step, name, kind, lo, hi, json.loads(counts)

    def histogram_latest(self, param: str, kind: str = "weight") -> dict | None:
        return self.histogram_at(param, kind)

    def histogram_at(
        self, param: str, kind: str = "weight", step: int | None = None
    ) -> dict | None:
        """The newest histogram of `param` recorded at or before `step` (histograms are kept at a
        lower rate than the stats, so it may be older than `step`); None if there is none."""
        row = self.db.execute(
            "SELECT h.step, h.lo, h.hi, h.counts FROM histograms h JOIN params p ON p.id = h.param"
            " WHERE p.name = ? AND h.kind = ? AND h.step <= ? ORDER BY h.step DESC LIMIT 1",
            (param, kind, _NO_END if step is None else step),
        ).fetchone()
        if row is None:
            return None
        return {"step": row[0], "lo": row[1], "hi": row[2], "counts": json.loads(row[3])}


def engine_gone(meta: dict[str, Any], now: float | None = None) -> bool:
    """True when a run still marked running has no live engine: dead pid here, or stale heartbeat."""
    now = time.time() if now is None else now
    if meta.get("host") == socket.gethostname() and isinstance(meta.get("pid"), int):
        if not pid_alive(meta["pid"]):
            return True
    beat = meta.get("heartbeat") or meta.get("started") or 0
    return now - float(beat) > wire.STALE_AFTER_S


def _merge_into(out: Series, rows, start: int, span: int, buckets: int) -> None:
    """Fold source rows (first_step, n, min, max, sum, last, last_step, wall) into output buckets."""
    cur = -1
    total = 0.0
    for first, n, mn, mx, sm, last, last_step, wall in rows:
        b = min(buckets - 1, max(0, (first - start) * buckets // span))
        if b != cur:
            if cur >= 0:
                out.means.append(total / out.counts[-1] if out.counts[-1] else None)
            cur, total = b, 0.0
            out.steps.append(last_step)
            out.walls.append(wall)
            out.mins.append(mn)
            out.maxs.append(mx)
            out.lasts.append(last)
            out.counts.append(0)
        else:
            out.steps[-1], out.walls[-1] = last_step, wall
            if mn is not None:
                out.mins[-1] = mn if out.mins[-1] is None else min(out.mins[-1], mn)
                out.maxs[-1] = mx if out.maxs[-1] is None else max(out.maxs[-1], mx)
            if n:
                out.lasts[-1] = last
        out.counts[-1] += n
        total += sm
    if cur >= 0:
        out.means.append(total / out.counts[-1] if out.counts[-1] else None)
