"""The run store writer: one SQLite file per run, written only by a background thread.

The training thread calls the cheap recording methods, which append to a deque and return; the
writer thread drains it every FLUSH_EVERY seconds in one transaction and keeps the heartbeat.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import sys
import threading
import time
from collections import deque
from itertools import chain, repeat
from pathlib import Path
from typing import Any, NamedTuple

from dltui.run import wire

FLUSH_EVERY_S = 0.25
# When a write fails (a full disk, an I/O error) the writer keeps what it could not write and
# tries again every RETRY_S; training goes on. What waits is bounded: past MAX_PENDING records
# the oldest bulk ones (scalars, system, stats) are dropped and counted; events never are.
RETRY_S = 2.0
MAX_PENDING = 200_000
CLOSE_RETRY_S = 30.0  # at the end, how long the final records may wait for space


# What the training thread queues for the writer: one small record type per table.
class Meta(NamedTuple):
    values: dict[str, Any]


class Scalars(NamedTuple):
    """The scalars of one or many steps of one phase (the probe's flush: the training thread
    appends once per flush, not once per step)."""

    phase: str
    steps: list[tuple[int, int, float, dict[str, Any]]]  # (step, epoch, wall, values)


class Params(NamedTuple):
    rows: list[tuple[str, list[int], int, bool]]


class LayerStats(NamedTuple):
    step: int
    rows: list[tuple]


class Histogram(NamedTuple):
    step: int
    name: str
    kind: str
    lo: float
    hi: float
    counts: list[int]


class System(NamedTuple):
    wall: float
    values: dict[str, float]


class Event(NamedTuple):
    wall: float
    step: int | None
    kind: str
    level: str
    message: str
    data: Any


class Console(NamedTuple):
    wall: float
    stream: str
    line: str


class Truncate(NamedTuple):
    step: int


Record = Meta | Scalars | Params | LayerStats | Histogram | System | Event | Console | Truncate
BULK = (Scalars, System, LayerStats, Histogram)  # what may be dropped when writes are stuck

# WAL needs shared memory between processes on one host; on these it corrupts or fails.
NETWORK_FILESYSTEMS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "fuse.sshfs",
    "sshfs",
    "9p",
    "afs",
    "lustre",
    "gpfs",
    "beegfs",
    "glusterfs",
    "fuse.glusterfs",
    "ceph",
    "fuse.ceph",
    "davfs",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "ncpfs",
    "coda",
}


def filesystem_type(path: Path, mounts_file: str = "/proc/mounts") -> str | None:
    """The filesystem type of the mount holding `path`, from the mount table (None if unknown)."""
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, best_type = mnt, parts[2]
    return best_type


def _aggregate_sql(where: str) -> str:
    """Upsert level-L rollup buckets from the raw scalar rows selected by `where`.

    Runs inside SQLite (the GIL is released while it works), merging into existing buckets so a
    flush only touches the rows it wrote.
    """
    return f"""
    WITH agg AS (
        SELECT series, step / :w AS b, count(value) AS n, min(value) AS mn, max(value) AS mx,
               total(value) AS sm, max(step) AS ls, max(wall) AS lw
        FROM scalars WHERE {where} GROUP BY series, b)
    INSERT INTO rollup (series, level, bucket, n, vmin, vmax, vsum, vlast, step_last, wall_last)
    SELECT agg.series, :level, agg.b, agg.n, agg.mn, agg.mx, agg.sm,
           (SELECT s.value FROM scalars s WHERE s.series = agg.series AND s.step = agg.ls
            ORDER BY s.rowid DESC LIMIT 1),
           agg.ls, agg.lw
    FROM agg WHERE true
    ON CONFLICT (series, level, bucket) DO UPDATE SET
        n = n + excluded.n,
        vmin = min(coalesce(vmin, excluded.vmin), coalesce(excluded.vmin, vmin)),
        vmax = max(coalesce(vmax, excluded.vmax), coalesce(excluded.vmax, vmax)),
        vsum = vsum + excluded.vsum,
        vlast = CASE WHEN excluded.step_last >= step_last THEN excluded.vlast ELSE vlast END,
        step_last = max(step_last, excluded.step_last),
        wall_last = max(wall_last, excluded.wall_last)
    """


_ROLLUP_NEW_ROWS = _aggregate_sql("rowid > :lo AND rowid <= :hi")
_ROLLUP_FROM_STEP = _aggregate_sql("step >= :from_step")

# Level L >= 2 buckets are rebuilt from their (at most ROLLUP_BASE) level L-1 children: a flush
# touches a handful of buckets per level instead of rescanning the raw rows at every level. One
# statement per level covers every series (`:lo`..`:hi`: the children of the flush's steps).
_ROLLUP_FROM_CHILDREN = f"""
    INSERT OR REPLACE INTO rollup (series, level, bucket, n, vmin, vmax, vsum, vlast, step_last, wall_last)
    SELECT c.series, :level, c.bucket / {wire.ROLLUP_BASE}, sum(c.n), min(c.vmin), max(c.vmax),
           sum(c.vsum),
           (SELECT d.vlast FROM rollup d WHERE d.series = c.series AND d.level = :level - 1
              AND d.bucket BETWEEN (c.bucket / {wire.ROLLUP_BASE}) * {wire.ROLLUP_BASE}
                               AND (c.bucket / {wire.ROLLUP_BASE}) * {wire.ROLLUP_BASE} + {wire.ROLLUP_BASE - 1}
            ORDER BY d.step_last DESC LIMIT 1),
           max(c.step_last), max(c.wall_last)
    FROM rollup c
    WHERE c.series IN (SELECT id FROM series) AND c.level = :level - 1
      AND c.bucket BETWEEN :lo AND :hi
    GROUP BY c.series, c.bucket / {wire.ROLLUP_BASE}
"""


def levels_for(max_step: int | None) -> int:
    """The rollup levels a run whose steps reach `max_step` keeps: level L only once a range of
    its steps can hold one whole level-L bucket (8**L <= max_step + 1), the only time a reader
    asks for it (run/reader.py's series()). Higher levels are built when the run gets there."""
    level = 1
    while level < wire.ROLLUP_LEVELS and wire.ROLLUP_BASE ** (level + 1) <= (max_step or 0) + 1:
        level += 1
    return level


class StoreError(RuntimeError):
    """The run store could not be opened or written."""


class RunStore:
    """Writer for runs/<run-id>/run.sqlite. Recording methods never block on disk."""

    def __init__(self, path: Path, mounts_file: str = "/proc/mounts") -> None:
        self.path = Path(path)
        self.mounts_file = mounts_file
        self.journal_mode = "wal"
        self._q: deque[Record] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._flushed = threading.Condition()
        self._flush_gen = 0  # number of drains completed
        self._draining = False  # the writer has begun a drain (it may have taken its items)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._series: dict[tuple[str, str], int] = {}
        self._sids: dict[tuple, list[int]] = {}
        self._params: dict[str, int] = {}
        self._last_beat = 0.0
        self.status_written: str | None = None  # the final status close() recorded
        # Set while writes fail (a full disk): what went wrong, since when, records dropped.
        self.trouble: str | None = None
        self.trouble_since: float | None = None
        self.dropped = 0
        self._writers = self._writer_table()
        self._ids_stale = False
        self._levels = 1  # rollup levels kept up to date (levels_for the highest step written)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Create or open the file and start the writer; raises StoreError if it can't."""
        self._thread = threading.Thread(target=self._run, name="dltui-store", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise StoreError(f"cannot open run store {self.path}: {self._error}")

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything recorded so far is on disk (used at checkpoints and the end).
        Returns at once while writes are failing: training must not wait on a full disk."""
        if self._thread is None or not self._thread.is_alive() or self.trouble is not None:
            return
        with self._flushed:
            # The next drain takes everything queued so far; one already under way may have
            # taken its items before ours, so then the one after it.
            target = self._flush_gen + (2 if self._draining else 1)
            self._wake.set()
            self._flushed.wait_for(
                lambda: self._flush_gen >= target or self.trouble is not None, timeout
            )

    def close(self, status: str | None = None, **meta: Any) -> None:
        """Record the final status (and any meta), write everything, stop the writer."""
        if status is not None:
            self.status_written = status
            self.set_meta(status=status, ended=time.time())
        if meta:
            self.set_meta(**meta)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    # -- recording (called from the training thread; append only) --------------------------
    def set_meta(self, **values: Any) -> None:
        self._q.append(Meta(values))

    def scalars(self, step: int, epoch: int, phase: str, wall: float, values: dict) -> None:
        self._q.append(Scalars(phase, [(step, epoch, wall, values)]))

    def scalar_steps(self, phase: str, steps: list[tuple[int, int, float, dict]]) -> None:
        """scalars() of many steps at once: (step, epoch, wall, values) each, in step order."""
        self._q.append(Scalars(phase, steps))

    def params(self, rows: list[tuple[str, list[int], int, bool]]) -> None:
        self._q.append(Params(rows))

    def layer_stats(self, step: int, rows: list[tuple]) -> None:
        """rows: (param name, *wire.LAYER_STAT_COLUMNS values)."""
        self._q.append(LayerStats(step, rows))

    def histogram(self, step: int, name: str, kind: str, lo: float, hi: float, counts) -> None:
        self._q.append(Histogram(step, name, kind, lo, hi, list(counts)))

    def system(self, wall: float, values: dict[str, float]) -> None:
        self._q.append(System(wall, values))

    def event(
        self,
        kind: str,
        message: str,
        step: int | None = None,
        level: str = "info",
        data: Any = None,
        wall: float | None = None,
    ) -> None:
        self._q.append(Event(wall or time.time(), step, kind, level, message, data))

    def console(self, stream: str, line: str, wall: float | None = None) -> None:
        self._q.append(Console(wall or time.time(), stream, line))

    def truncate_after(self, step: int) -> None:
        """Forget step-indexed records after `step` (resuming from a checkpoint taken there)."""
        self._q.append(Truncate(step))

    # -- writer thread ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        fs = filesystem_type(self.path.parent, self.mounts_file)
        if fs in NETWORK_FILESYSTEMS:
            # WAL's shared-memory index is not safe across a network filesystem.
            self.journal_mode = "delete"
            db.execute("PRAGMA journal_mode=DELETE")
            db.execute("PRAGMA synchronous=FULL")
            self.event(
                wire.EV_INFO,
                level="warning",
                message=f"run store is on a network filesystem ({fs}): WAL is unsafe there, "
                "using SQLite's rollback journal instead (slower writes, same data)",
            )
        else:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a killed process loses nothing committed; only power loss can.
            db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA temp_store=MEMORY")  # the rollups' GROUP BY trees: no temp files
        db.executescript(wire.SCHEMA)
        db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(wire.SCHEMA_VERSION),)
        )
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('journal_mode', ?)",
            (json.dumps(self.journal_mode),),
        )
        self._load_ids(db)
        return db

    def _load_ids(self, db: sqlite3.Connection) -> None:
        """The series and param ids as the file has them (after opening, or a rollback)."""
        self._series = {(n, p): i for i, n, p in db.execute("SELECT id, name, phase FROM series")}
        self._params = dict(db.execute("SELECT name, id FROM params").fetchall())
        self._sids = {}
        self._ids_stale = False
        self._levels = levels_for(db.execute("SELECT max(step) FROM scalars").fetchone()[0])

    def _run(self) -> None:
        try:
            db = self._connect()
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            stop_at = None
            while True:
                stopping = self._stop.is_set()
                if stopping and stop_at is None:
                    stop_at = time.monotonic() + CLOSE_RETRY_S
                with self._flushed:
                    self._draining = True
                try:
                    written = self._drain_or_hold(db)
                finally:
                    with self._flushed:
                        self._draining = False
                if stopping and (written or time.monotonic() >= stop_at):
                    if not written:
                        print(
                            f"dltui: the run store {self.path} could not be written at the end "
                            f"({self.trouble}); the last records are lost.",
                            file=sys.__stderr__,
                        )
                    break
                self._wake.wait(FLUSH_EVERY_S if self.trouble is None else RETRY_S)
                self._wake.clear()
            if self.journal_mode == "wal" and self.trouble is None:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except BaseException as e:  # a bug in the writer: said, never silent
            self._error = e
            print(f"dltui: run store writer failed: {e}", file=sys.__stderr__)
        finally:
            db.close()
            with self._flushed:
                self._flush_gen += 10**9
                self._flushed.notify_all()

    def _series_id(self, db: sqlite3.Connection, name: str, phase: str) -> int:
        key = (name, phase)
        sid = self._series.get(key)
        if sid is None:
            cur = db.execute("INSERT INTO series (name, phase) VALUES (?, ?)", key)
            sid = self._series[key] = cur.lastrowid
        return sid

    def _param_id(self, db: sqlite3.Connection, name: str) -> int:
        pid = self._params.get(name)
        if pid is None:
            cur = db.execute(
                "INSERT INTO params (name, shape, numel, trainable) VALUES (?, '[]', 0, 1)", (name,)
            )
            pid = self._params[name] = cur.lastrowid
        return pid

    def _drain_or_hold(self, db: sqlite3.Connection) -> bool:
        """Write what is queued; if the disk refuses (full, I/O error), keep it for the next try
        and say so once, in the engine's log and (when writes come back) in the store."""
        try:
            self._drain(db)
        except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as e:
            if self.trouble is None:
                self.trouble, self.trouble_since = f"{e}", time.time()
                print(
                    f"dltui: cannot write the run store {self.path} ({e}; disk full?); training "
                    f"goes on, its records are held and written when the disk takes them again.",
                    file=sys.__stderr__,
                )
            self._bound_pending()
            with self._flushed:  # a flush() waiting on this drain must not wait for the disk
                self._flushed.notify_all()
            return False
        if self.trouble is not None:
            lost = f"; {self.dropped:,} records were dropped" if self.dropped else ""
            self.event(
                wire.EV_ALERT,
                f"the run store could not be written for {time.time() - self.trouble_since:.0f} s "
                f"({self.trouble}); writes resumed{lost}",
                level="warning",
            )
            self.trouble = self.trouble_since = None
            self._drain(db)
        return True

    def _bound_pending(self) -> None:
        """Past MAX_PENDING records waiting (a Scalars counts its steps), drop the oldest bulk
        ones until it fits. The training thread appends meanwhile: the count is taken over a copy
        (deque.copy() runs in C, without giving up the GIL), never over the live queue."""
        over = sum(map(_weight, self._q.copy())) - MAX_PENDING
        if over <= 0:
            return
        kept: deque[Record] = deque()
        while self._q:
            rec = self._q.popleft()
            if over > 0 and isinstance(rec, BULK):
                n = _weight(rec)
                over -= n
                self.dropped += n
            else:
                kept.append(rec)
        self._q.extendleft(reversed(kept))

    def _drain(self, db: sqlite3.Connection) -> None:
        n = len(self._q)
        items = [self._q.popleft() for _ in range(n)]
        now = time.time()
        beat = now - self._last_beat >= wire.HEARTBEAT_EVERY_S
        if items or beat:
            db.execute("BEGIN")
            try:
                if self._ids_stale:
                    self._load_ids(db)
                self._write(db, items)
                if beat:
                    db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('heartbeat', ?)", (json.dumps(now),)
                    )
                    self._last_beat = now
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # (SQLite may have rolled back itself)
                    db.execute("ROLLBACK")
                self._ids_stale = True  # ids given out in the rolled-back transaction are void
                self._q.extendleft(reversed(items))  # nothing is lost: tried again later
                raise
        with self._flushed:
            self._flush_gen += 1
            self._flushed.notify_all()

    def _write(self, db: sqlite3.Connection, items: list[Record]) -> None:
        scalar_rows: list = []  # the rows' values, flat: 5 a row (see _insert_rows)
        first = last = None  # the steps the scalar rows span
        for rec in items:
            if isinstance(rec, Scalars):
                for step, epoch, wall, values in rec.steps:
                    key = (rec.phase, *values)  # the same names step after step: ids once
                    sids = self._sids.get(key)
                    if sids is None:
                        sids = self._sids[key] = [self._series_id(db, n, rec.phase) for n in values]
                    row = zip(sids, repeat(step), repeat(epoch), repeat(wall), values.values())
                    scalar_rows.extend(chain.from_iterable(row))  # (in C: no Python per value)
                    if first is None or step < first:
                        first = step
                    if last is None or step > last:
                        last = step
            elif isinstance(rec, Truncate):
                self._flush_scalars(db, scalar_rows, first, last)
                scalar_rows, first, last = [], None, None
                self._truncate(db, rec.step)
            else:
                self._writers[type(rec)](db, rec)  # Meta, Params, Event, ...
        self._flush_scalars(db, scalar_rows, first, last)

    def _flush_scalars(
        self, db: sqlite3.Connection, rows: list, first: int | None, last: int | None
    ) -> None:
        """Insert scalar rows (flat: 5 values a row; steps first..last) and bring the rollups
        up to date."""
        if not rows:
            return
        lo = db.execute("SELECT coalesce(max(rowid), 0) FROM scalars").fetchone()[0]
        _insert_rows(db, rows)
        hi = db.execute("SELECT max(rowid) FROM scalars").fetchone()[0]
        db.execute(_ROLLUP_NEW_ROWS, {"w": wire.ROLLUP_BASE, "level": 1, "lo": lo, "hi": hi})
        kept, self._levels = self._levels, max(self._levels, levels_for(last))
        for level in range(2, self._levels + 1):
            child_w, w = wire.ROLLUP_BASE ** (level - 1), wire.ROLLUP_BASE**level
            if level > kept:  # the run reached this level: all of it, from the level below
                span = {"lo": 0, "hi": last // child_w}
            else:  # the children of every bucket the flush touched
                span = {"lo": first // w * wire.ROLLUP_BASE, "hi": last // child_w}
            db.execute(_ROLLUP_FROM_CHILDREN, {"level": level, **span})

    def _truncate(self, db: sqlite3.Connection, step: int) -> None:
        db.execute("DELETE FROM scalars WHERE step > ?", (step,))
        for table in ("layer_stats", "histograms"):
            db.execute(f"DELETE FROM {table} WHERE step > ?", (step,))
        self._levels = levels_for(db.execute("SELECT max(step) FROM scalars").fetchone()[0])
        # levels the shorter run does not reach go; they are built again when it gets there
        db.execute("DELETE FROM rollup WHERE level > ?", (self._levels,))
        for level in range(1, self._levels + 1):
            w = wire.ROLLUP_BASE**level
            first = (step // w) * w  # the bucket holding `step` is rebuilt from its raw rows
            db.execute("DELETE FROM rollup WHERE level = ? AND bucket >= ?", (level, step // w))
            db.execute(_ROLLUP_FROM_STEP, {"w": w, "level": level, "from_step": first})

    def _writer_table(self) -> dict[type, Any]:
        return {
            Meta: self._w_meta,
            Params: self._w_params,
            LayerStats: self._w_layer_stats,
            Histogram: self._w_histogram,
            System: self._w_system,
            Event: self._w_event,
            Console: self._w_console,
        }

    def _w_meta(self, db: sqlite3.Connection, rec: Meta) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [(k, json.dumps(v, default=str)) for k, v in rec.values.items()],
        )

    def _w_params(self, db: sqlite3.Connection, rec: Params) -> None:
        for name, shape, numel, trainable in rec.rows:
            pid = self._param_id(db, name)
            db.execute(
                "UPDATE params SET shape = ?, numel = ?, trainable = ? WHERE id = ?",
                (json.dumps(list(shape)), numel, int(trainable), pid),
            )

    def _w_layer_stats(self, db: sqlite3.Connection, rec: LayerStats) -> None:
        db.executemany(
            "INSERT INTO layer_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(rec.step, self._param_id(db, r[0]), *r[1:]) for r in rec.rows],
        )

    def _w_histogram(self, db: sqlite3.Connection, rec: Histogram) -> None:
        db.execute(
            "INSERT INTO histograms VALUES (?, ?, ?, ?, ?, ?)",
            (
                rec.step,
                self._param_id(db, rec.name),
                rec.kind,
                rec.lo,
                rec.hi,
                json.dumps(rec.counts),
            ),
        )

    def _w_system(self, db: sqlite3.Connection, rec: System) -> None:
        db.executemany(
            "INSERT INTO system VALUES (?, ?, ?)", [(rec.wall, k, v) for k, v in rec.values.items()]
        )

    def _w_event(self, db: sqlite3.Connection, rec: Event) -> None:
        data = None if rec.data is None else json.dumps(rec.data, default=str)
        db.execute(
            "INSERT INTO events (wall, step, kind, level, message, data) VALUES (?, ?, ?, ?, ?, ?)",
            (rec.wall, rec.step, rec.kind, rec.level, rec.message, data),
        )

    def _w_console(self, db: sqlite3.Connection, rec: Console) -> None:
        db.execute("INSERT INTO console (wall, stream, line) VALUES (?, ?, ?)", tuple(rec))


# Scalar rows go in as multi-row INSERTs of INSERT_CHUNK rows (the rest in power-of-two
# statements: a handful of statement texts, all cached): executemany() would hand the GIL back
# and forth between this thread and the training thread at every row (it is released for each
# row's sqlite3_step), and each handoff makes the training thread wait for a thread wake-up;
# measured with benchmarks/interleaved.py, whose bare blocks hold the writer. 5 values a row:
# 128 rows bind 640 values, within SQLite's oldest limit of 999 per statement.
INSERT_CHUNK = 128
_INSERT_SQL = {
    n: "INSERT INTO scalars VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * n)
    for n in (INSERT_CHUNK, *(1 << k for k in range(INSERT_CHUNK.bit_length() - 1)))
}


def _insert_rows(db: sqlite3.Connection, flat: list) -> None:
    """INSERT scalar rows given flat (5 values a row), in order, in a few statements (see
    INSERT_CHUNK)."""
    at, left = 0, len(flat) // 5
    while left:
        n = INSERT_CHUNK if left >= INSERT_CHUNK else 1 << (left.bit_length() - 1)
        db.execute(_INSERT_SQL[n], flat[at : at + 5 * n])
        at, left = at + 5 * n, left - n


def _weight(rec: Record) -> int:
    """What a queued record counts for against MAX_PENDING: its steps (Scalars), else 1."""
    return len(rec.steps) if type(rec) is Scalars else 1


def host_info() -> dict[str, Any]:
    """Where this engine runs: host name and pid (the reader uses them to detect a crash)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}
