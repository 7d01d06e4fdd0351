"""Every run in a runs directory, summarised for the run browser and kept fresh cheaply.

A run's summary is read from its store once and reused while the store's files are unchanged
(size and mtime of run.sqlite and its WAL); runs an engine owns are re-read on every refresh,
since their status can change without a write (an engine that dies stops its heartbeat).
Summaries are also kept in `<runs dir>/.dltui-catalog.json`, so a browser opened on a thousand
finished runs reads a thousand stat() results and one JSON file, not a thousand databases.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .reader import DB_NAME, RunReader
from .runs import LIVE

CACHE_NAME = ".dltui-catalog.json"
CACHE_VERSION = 1


@dataclass
class RunRow:
    id: str
    path: str
    status: str
    script: str = "?"
    started: float | None = None
    ended: float | None = None  # finished, failed or stopped; else the last heartbeat
    step: int = 0
    total_steps: int | None = None
    best: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    device: str | None = None

    @property
    def live(self) -> bool:
        return self.status in LIVE

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        end = self.ended if self.ended is not None else (time.time() if self.live else None)
        return None if end is None else max(0.0, end - self.started)

    @property
    def best_value(self) -> tuple[str, float] | None:
        """The run's best validation loss (or, without one, its first best metric)."""
        if not self.best:
            return None
        if isinstance(self.best.get("val_loss"), int | float):
            return "val_loss", float(self.best["val_loss"])
        for k, v in self.best.items():
            if k.startswith("val_") and isinstance(v, int | float):
                return k, float(v)
        return None

    def matches(self, text: str) -> bool:
        """The browser's filter: every word appears in the id, status, script or hparams."""
        hay = " ".join(
            [
                self.id,
                self.status,
                Path(self.script).name,
                *(f"{k}={v}" for k, v in self.hparams.items()),
            ]
        ).lower()
        return all(w in hay for w in text.lower().split())


def _stamp(run_dir: Path) -> list[int] | None:
    """What changes when the store is written: (size, mtime) of the database and its WAL."""
    out = []
    for name in (DB_NAME, DB_NAME + "-wal"):
        try:
            st = os.stat(run_dir / name)
        except FileNotFoundError:
            if name == DB_NAME:
                return None
            out += [0, 0]
            continue
        out += [st.st_size, st.st_mtime_ns]
    return out


def read_row(run_dir: Path) -> RunRow:
    """One run's summary from its store (an unreadable store is listed, not hidden)."""
    try:
        with RunReader(run_dir) as r:
            meta = r.meta()
            status = r.status(meta)
    except (sqlite3.Error, OSError, ValueError) as e:
        return RunRow(run_dir.name, str(run_dir), f"unreadable ({e})")
    progress = meta.get("progress") or {}
    ended = meta.get("ended") if meta.get("ended") is not None else meta.get("heartbeat")
    return RunRow(
        id=run_dir.name,
        path=str(run_dir),
        status=status,
        script=str(meta.get("script", "?")),
        started=meta.get("started"),
        ended=ended,
        step=int(progress.get("step") or 0),
        total_steps=progress.get("total_steps") or meta.get("total_steps"),
        best=meta.get("best") or {},
        hparams=meta.get("hparams") or {},
        device=meta.get("device"),
    )


class Catalog:
    """The runs of one runs directory, refreshed incrementally."""

    def __init__(self, runs_dir: Path, persist: bool = True) -> None:
        self.runs_dir = Path(runs_dir)
        self.persist = persist
        self._rows: dict[str, tuple[list[int], RunRow]] = {}
        self.read_count = 0  # stores opened so far (the cost a refresh paid)
        if persist:
            self._load_cache()

    def refresh(self) -> list[RunRow]:
        """Every run, oldest first; only new, changed and live runs are read from their store."""
        seen: dict[str, tuple[list[int], RunRow]] = {}
        try:
            dirs = [e for e in os.scandir(self.runs_dir) if e.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            dirs = []
        for entry in dirs:
            d = Path(entry.path)
            stamp = _stamp(d)
            if stamp is None:
                continue
            old = self._rows.get(d.name)
            if old is not None and old[0] == stamp and not old[1].live:
                seen[d.name] = old
                continue
            self.read_count += 1
            row = read_row(d)
            # Stamped after reading: a first reader creates the WAL file, which is not a change.
            # A write that lands in between is seen next time: such a run was live when read.
            seen[d.name] = (_stamp(d) or stamp, row)
        changed = seen.keys() != self._rows.keys() or any(
            seen[k] is not self._rows.get(k) for k in seen
        )
        self._rows = seen
        if changed and self.persist:
            self._save_cache()
        return sorted((r for _, r in seen.values()), key=lambda r: (r.started or 0, r.id))

    def _cache_path(self) -> Path:
        return self.runs_dir / CACHE_NAME

    def _load_cache(self) -> None:
        try:
            doc = json.loads(self._cache_path().read_text())
            if doc.get("version") != CACHE_VERSION:
                return
            self._rows = {k: (v["stamp"], RunRow(**v["row"])) for k, v in doc["runs"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            self._rows = {}  # no cache, or a damaged one: read the stores

    def _save_cache(self) -> None:
        """Best effort: a read-only runs dir just means no cache."""
        doc = {
            "version": CACHE_VERSION,
            "runs": {k: {"stamp": s, "row": asdict(r)} for k, (s, r) in self._rows.items()},
        }
        tmp = self._cache_path().with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self._cache_path())
        except OSError:
            tmp.unlink(missing_ok=True)
