"""The run store writer: one SQLite file per run, written only by a background thread.

The training thread calls the cheap recording methods, which append to a deque and return; the
writer thread drains it every FLUSH_EVERY seconds in one transaction and keeps the heartbeat.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import threading
import time
from collections import deque
from itertools import repeat
from pathlib import Path
from typing import Any

from dltui.run import wire

FLUSH_EVERY_S = 0.25

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
# touches a handful of buckets per level instead of rescanning the raw rows at every level.
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
    WHERE c.series = :series AND c.level = :level - 1 AND c.bucket BETWEEN :lo AND :hi
    GROUP BY c.bucket / {wire.ROLLUP_BASE}
"""


class StoreError(RuntimeError):
    """The run store could not be opened or written."""


class RunStore:
    """Writer for runs/<run-id>/run.sqlite. Recording methods never block on disk."""

    def __init__(self, path: Path, mounts_file: str = "/proc/mounts") -> None:
        self.path = Path(path)
        self.mounts_file = mounts_file
        self.journal_mode = "wal"
        self._q: deque[tuple[str, Any]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._flushed = threading.Condition()
        self._flush_gen = 0  # number of drains completed
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._series: dict[tuple[str, str], int] = {}
        self._sids: dict[tuple, list[int]] = {}
        self._params: dict[str, int] = {}
        self._last_beat = 0.0
        self.status_written: str | None = None  # the final status close() recorded

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Create or open the file and start the writer; raises StoreError if it can't."""
        self._thread = threading.Thread(target=self._run, name="dltui-store", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise StoreError(f"cannot open run store {self.path}: {self._error}")

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything recorded so far is on disk (used at checkpoints and the end)."""
        if self._thread is None or not self._thread.is_alive():
            return
        with self._flushed:
            target = self._flush_gen + 2  # the drain in progress may have missed recent items
            self._wake.set()
            self._flushed.wait_for(lambda: self._flush_gen >= target, timeout)

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
        self._q.append(("meta", values))

    def scalars(self, step: int, epoch: int, phase: str, wall: float, values: dict) -> None:
        self._q.append(("scalars", (step, epoch, phase, wall, values)))

    def params(self, rows: list[tuple[str, list[int], int, bool]]) -> None:
        self._q.append(("params", rows))

    def layer_stats(self, step: int, rows: list[tuple]) -> None:
        """rows: (param name, *wire.LAYER_STAT_COLUMNS values)."""
        self._q.append(("layer_stats", (step, rows)))

    def histogram(self, step: int, name: str, kind: str, lo: float, hi: float, counts) -> None:
        self._q.append(("histogram", (step, name, kind, lo, hi, list(counts))))

    def system(self, wall: float, values: dict[str, float]) -> None:
        self._q.append(("system", (wall, values)))

    def event(
        self,
        kind: str,
        message: str,
        step: int | None = None,
        level: str = "info",
        data: Any = None,
        wall: float | None = None,
    ) -> None:
        self._q.append(("event", (wall or time.time(), step, kind, level, message, data)))

    def console(self, stream: str, line: str, wall: float | None = None) -> None:
        self._q.append(("console", (wall or time.time(), stream, line)))

    def truncate_after(self, step: int) -> None:
        """Forget step-indexed records after `step` (resuming from a checkpoint taken there)."""
        self._q.append(("truncate", step))

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
        db.executescript(wire.SCHEMA)
        db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(wire.SCHEMA_VERSION),)
        )
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('journal_mode', ?)",
            (json.dumps(self.journal_mode),),
        )
        self._series = {(n, p): i for i, n, p in db.execute("SELECT id, name, phase FROM series")}
        self._params = dict(db.execute("SELECT name, id FROM params").fetchall())
        return db

    def _run(self) -> None:
        try:
            db = self._connect()
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                stopping = self._stop.is_set()
                self._drain(db)
                if stopping:
                    break
                self._wake.wait(FLUSH_EVERY_S)
                self._wake.clear()
            if self.journal_mode == "wal":
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except BaseException as e:  # a broken disk must not take training down silently
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

    def _drain(self, db: sqlite3.Connection) -> None:
        n = len(self._q)
        items = [self._q.popleft() for _ in range(n)]
        now = time.time()
        beat = now - self._last_beat >= wire.HEARTBEAT_EVERY_S
        if items or beat:
            db.execute("BEGIN")
            try:
                self._write(db, items)
                if beat:
                    db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('heartbeat', ?)", (json.dumps(now),)
                    )
                    self._last_beat = now
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        with self._flushed:
            self._flush_gen += 1
            self._flushed.notify_all()

    def _write(self, db: sqlite3.Connection, items: list[tuple[str, Any]]) -> None:
        scalar_rows: list[tuple] = []
        for kind, payload in items:
            if kind == "scalars":
                step, epoch, phase, wall, values = payload
                key = (phase, *values)  # the same names step after step: look their ids up once
                sids = self._sids.get(key)
                if sids is None:
                    sids = self._sids[key] = [self._series_id(db, n, phase) for n in values]
                scalar_rows.extend(
                    zip(sids, repeat(step), repeat(epoch), repeat(wall), values.values())
                )
            elif kind == "truncate":
                self._flush_scalars(db, scalar_rows)
                scalar_rows = []
                self._truncate(db, payload)
            else:
                getattr(self, "_w_" + kind)(db, payload)
        self._flush_scalars(db, scalar_rows)

    def _flush_scalars(self, db: sqlite3.Connection, rows: list[tuple]) -> None:
        if not rows:
            return
        lo = db.execute("SELECT coalesce(max(rowid), 0) FROM scalars").fetchone()[0]
        db.executemany("INSERT INTO scalars VALUES (?, ?, ?, ?, ?)", rows)
        hi = db.execute("SELECT max(rowid) FROM scalars").fetchone()[0]
        db.execute(_ROLLUP_NEW_ROWS, {"w": wire.ROLLUP_BASE, "level": 1, "lo": lo, "hi": hi})
        spans = db.execute(
            "SELECT series, min(step), max(step) FROM scalars WHERE rowid > ? AND rowid <= ? GROUP BY series",
            (lo, hi),
        ).fetchall()
        for level in range(2, wire.ROLLUP_LEVELS + 1):
            child_w, w = wire.ROLLUP_BASE ** (level - 1), wire.ROLLUP_BASE**level
            for sid, first, last in spans:  # children of every touched bucket at this level
                db.execute(
                    _ROLLUP_FROM_CHILDREN,
                    {
                        "series": sid,
                        "level": level,
                        "lo": first // w * wire.ROLLUP_BASE,
                        "hi": last // child_w,
                    },
                )

    def _truncate(self, db: sqlite3.Connection, step: int) -> None:
        db.execute("DELETE FROM scalars WHERE step > ?", (step,))
        for table in ("layer_stats", "histograms"):
            db.execute(f"DELETE FROM {table} WHERE step > ?", (step,))
        for level in range(1, wire.ROLLUP_LEVELS + 1):
            w = wire.ROLLUP_BASE**level
            first = (step // w) * w  # the bucket holding `step` is rebuilt from its raw rows
            db.execute("DELETE FROM rollup WHERE level = ? AND bucket >= ?", (level, step // w))
            db.execute(_ROLLUP_FROM_STEP, {"w": w, "level": level, "from_step": first})

    def _w_meta(self, db: sqlite3.Connection, values: dict) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [(k, json.dumps(v, default=str)) for k, v in values.items()],
        )

    def _w_params(self, db: sqlite3.Connection, rows: list) -> None:
        for name, shape, numel, trainable in rows:
            pid = self._param_id(db, name)
            db.execute(
                "UPDATE params SET shape = ?, numel = ?, trainable = ? WHERE id = ?",
                (json.dumps(list(shape)), numel, int(trainable), pid),
            )

    def _w_layer_stats(self, db: sqlite3.Connection, payload: tuple) -> None:
        step, rows = payload
        db.executemany(
            "INSERT INTO layer_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(step, self._param_id(db, r[0]), *r[1:]) for r in rows],
        )

    def _w_histogram(self, db: sqlite3.Connection, payload: tuple) -> None:
        step, name, kind, lo, hi, counts = payload
        db.execute(
            "INSERT INTO histograms VALUES (?, ?, ?, ?, ?, ?)",
            (step, self._param_id(db, name), kind, lo, hi, json.dumps(counts)),
        )

    def _w_system(self, db: sqlite3.Connection, payload: tuple) -> None:
        wall, values = payload
        db.executemany(
            "INSERT INTO system VALUES (?, ?, ?)", [(wall, k, v) for k, v in values.items()]
        )

    def _w_event(self, db: sqlite3.Connection, payload: tuple) -> None:
        wall, step, kind, level, message, data = payload
        db.execute(
            "INSERT INTO events (wall, step, kind, level, message, data) VALUES (?, ?, ?, ?, ?, ?)",
            (
                wall,
                step,
                kind,
                level,
                message,
                None if data is None else json.dumps(data, default=str),
            ),
        )

    def _w_console(self, db: sqlite3.Connection, payload: tuple) -> None:
        db.execute("INSERT INTO console (wall, stream, line) VALUES (?, ?, ?)", payload)


def host_info() -> dict[str, Any]:
    """Where this engine runs: host name and pid (the reader uses them to detect a crash)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}
