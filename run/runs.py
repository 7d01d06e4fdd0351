"""Run directories: naming, creating (0700), listing and resolving a run by id (torch-free)."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import wire
from .reader import DB_NAME, RunNotFound, RunReader

DEFAULT_RUNS_DIR = "runs"


class RunsDirError(OSError):
    """The runs directory (or a run directory in it) can't be created or written: one line."""


def unwritable(where: Path, e: OSError) -> RunsDirError:
    why = e.strerror or str(e)
    return RunsDirError(
        f"can't create a run in {where}: {why}. Choose a writable folder with --runs-dir DIR."
    )


def new_run_dir(script: str | os.PathLike, runs_dir: Path) -> Path:
    """Reserve runs_dir/<yyyymmdd-hhmmss>-<script stem>[-N] by creating it (0700).

    The exclusive mkdir is the reservation: two runs started in the same second (a sweep)
    can never share a directory. RunsDirError when runs_dir can't hold one (read-only, a file).
    """
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(script).stem)[:40] or "run"
    base = time.strftime("%Y%m%d-%H%M%S") + "-" + stem
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            path = runs_dir / (base if n == 1 else f"{base}-{n}")
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                n += 1
                continue
            os.chmod(path, 0o700)
            return path
    except RunsDirError:
        raise
    except OSError as e:
        raise unwritable(runs_dir, e) from None


ENGINE_LOCK = "engine.lock"  # flock'ed by the one engine that owns a run, for its lifetime


def lock_holder(run_dir: Path, locks_file: str = "/proc/locks") -> int | None:
    """The pid of the engine holding run_dir's lock, or None. Read from the kernel's lock table,
    never by taking the lock (a probe could make a starting engine think the run is taken)."""
    try:
        st = (Path(run_dir) / ENGINE_LOCK).stat()
        table = Path(locks_file).read_text()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 00:2e:1234 0 EOF" (blocked waiters carry a "->")
        if len(parts) >= 6 and parts[1] == "FLOCK" and "->" not in parts and parts[5] == dev:
            try:
                return int(parts[4])
            except ValueError:
                return None
    return None


def discard_if_empty(path: Path) -> None:
    """Remove a reserved run directory that never received anything (the run didn't start)."""
    try:
        path.rmdir()
    except OSError:
        pass


def make_run_dir(path: Path) -> Path:
    """Create the run directory readable by its owner only (its socket steers the run)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as e:
        raise unwritable(path.parent, e) from None
    return path


@dataclass
class RunInfo:
    id: str
    path: Path
    status: str
    script: str
    started: float | None
    step: int
    total_steps: int | None
    best: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": str(self.path),
            "status": self.status,
            "script": self.script,
            "started": self.started,
            "step": self.step,
            "total_steps": self.total_steps,
            "best": self.best,
        }


def run_info(path: Path) -> RunInfo:
    with RunReader(path) as r:
        meta = r.meta()
        status = r.status(meta)
        progress = meta.get("progress") or {}
        best: dict[str, Any] = {}
        if meta.get("best"):
            best = meta["best"]
    return RunInfo(
        id=path.name,
        path=path,
        status=status,
        script=meta.get("script", "?"),
        started=meta.get("started"),
        step=progress.get("step", 0),
        total_steps=progress.get("total_steps"),
        best=best,
    )


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run under runs_dir, oldest first. Unreadable ones are listed as 'unreadable'."""
    out = []
    if not runs_dir.is_dir():
        return out
    for d in sorted(p for p in runs_dir.iterdir() if (p / DB_NAME).exists()):
        try:
            out.append(run_info(d))
        except Exception as e:  # a corrupt or foreign file must not hide the other runs
            out.append(RunInfo(d.name, d, f"unreadable ({e})", "?", None, 0, None, {}))
    out.sort(key=lambda i: (i.started or 0, i.id))
    return out


LIVE = (wire.STARTING, wire.RUNNING, "paused", "eval")  # an engine owns the run


def resolve_run(runs_dir: Path, spec: str | None, live_only: bool = False) -> Path:
    """A run directory from an id, a unique id prefix, a path, or (None) the latest run."""
    if spec:
        p = Path(spec)
        if (p / DB_NAME).exists():
            return p
        cand = runs_dir / spec
        if (cand / DB_NAME).exists():
            return cand
        matches = (
            [d for d in sorted(runs_dir.glob(spec + "*")) if (d / DB_NAME).exists()]
            if runs_dir.is_dir()
            else []
        )
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(m.name for m in matches[:5])
            raise RunNotFound(f"'{spec}' matches several runs ({names}); give more of the id.")
        raise RunNotFound(f"no run '{spec}' in {runs_dir}/ (see `dltui runs`).")
    runs = list_runs(runs_dir)
    if live_only:
        runs = [r for r in runs if r.status in LIVE]
    if not runs:
        what = "live run" if live_only else "run"
        raise RunNotFound(f"no {what} in {runs_dir}/ (start one with `dltui train example.py`).")
    return runs[-1].path
