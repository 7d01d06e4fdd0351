"""A run's saved checkpoints, and the read-only server the dashboard inspects one through.

The server is a child process (`python -m dltui.engine.offline CKPT --serve DIR --parent PID`):
torch stays out of the dashboard. It answers the control protocol on DIR/control.sock, so the
Tensors and Model tabs of a finished run talk to it through the same ControlClient as to a live
engine. One server at a time per dashboard; choosing another checkpoint replaces it, and it
ends with the dashboard (stop() on exit; killed outright, the server sees its parent gone).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from dltui.run import wire
from dltui.run.client import ControlClient, ControlError
from dltui.run.reader import RunNotFound, RunReader

CHECKPOINTS = "checkpoints"
FIRST = ("last.pt", "best.pt")  # listed first, in this order; the rest newest first
READY_TIMEOUT_S = 120.0  # importing torch and reading a large checkpoint on a busy box
NO_CHECKPOINT = (
    "this run saved no checkpoint ({folder} is empty). A recipe run saves last.pt at each "
    "epoch's end and when it stops, best.pt when its val loss improves; any run saves one on c "
    "(or `dltui ctl RUN checkpoint`) while it trains. Resume it with `dltui train --resume "
    "RUN FILE` and press c to get one."
)


class CheckpointUnavailable(Exception):
    """The checkpoint could not be served; str() is one line for the user."""


@dataclass(frozen=True)
class Saved:
    """One file in RUN/checkpoints/, with the step its newest checkpoint event recorded."""

    path: Path
    mtime: float
    size: int
    step: int | None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Loaded:
    """The checkpoint being served: which file, its step (from the file itself), the client."""

    path: Path
    step: int | None
    client: ControlClient
    generation: int  # counts loads: a pane that saw an older one asks again

    @property
    def name(self) -> str:
        return self.path.name


def checkpoint_steps(run_dir: Path) -> dict[str, int]:
    """{file name: step} of each checkpoint file's newest save, from the run's events."""
    out: dict[str, int] = {}
    try:
        with RunReader(run_dir) as r:
            after = 0
            while True:
                evs = r.events(after_id=after, kind=wire.EV_CHECKPOINT, limit=1000)
                for ev in evs:
                    data = ev["data"] if isinstance(ev["data"], dict) else {}
                    if data.get("path") and ev["step"] is not None:
                        out[Path(str(data["path"])).name] = int(ev["step"])
                if len(evs) < 1000:
                    return out
                after = evs[-1]["id"]
    except (RunNotFound, OSError, ValueError, sqlite3.Error):  # steps are a hint: go without
        return out


def saved_checkpoints(run_dir: Path) -> list[Saved]:
    """The run's checkpoint files: last.pt, best.pt, then the others newest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    steps = checkpoint_steps(run_dir)
    found = []
    for p in folder.glob("*.pt"):
        try:
            st = p.stat()
        except OSError:  # removed while listing
            continue
        found.append(Saved(p, st.st_mtime, st.st_size, steps.get(p.name)))

    def order(s: Saved) -> tuple:
        return (FIRST.index(s.name) if s.name in FIRST else len(FIRST), -s.mtime)

    return sorted(found, key=order)


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """RUN/checkpoints/<which> (last, best, or a file name); raises CheckpointUnavailable
    naming the ones the run has."""
    folder = Path(run_dir) / CHECKPOINTS
    name = which if which.endswith(".pt") else f"{which}.pt"
    path = folder / name
    if not path.is_file():
        saved = [s.name for s in saved_checkpoints(run_dir)]
        have = f" It has: {', '.join(saved)}." if saved else " It has saved none."
        raise CheckpointUnavailable(f"run {Path(run_dir).name} has no checkpoint {name}.{have}")
    return path


class CheckpointServer:
    """Starts, replaces and stops the dashboard's one checkpoint server (thread-safe).

    load() blocks (torch's import, the file's unpickling: seconds) and is called from worker
    threads; stop() never waits for a load: it ends the process a load is waiting on.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.loaded: Loaded | None = None
        self.loading: str | None = None  # the file a load is under way for
        self._load_lock = threading.Lock()  # one load at a time
        self._lock = threading.Lock()  # guards the process and its folder
        self._proc: subprocess.Popen | None = None
        self._dir: Path | None = None
        self._generation = 0
        self._closed = False

    def load(self, which: str | None = None) -> Loaded:
        """Serve checkpoint `which` (a file name in RUN/checkpoints; None: last, else best, else
        the newest) unless it already is; returns what is served now."""
        with self._load_lock:
            current = self.loaded
            if which is None and current is not None and self._running():
                return current  # whichever the user chose, for every tab
            if which is None:
                saved = saved_checkpoints(self.run_dir)
                if not saved:
                    folder = self.run_dir / CHECKPOINTS
                    raise CheckpointUnavailable(NO_CHECKPOINT.format(folder=folder))
                path = saved[0].path
            else:
                path = find_checkpoint(self.run_dir, which)
            if current is not None and current.path == path and self._running():
                return current
            self.loading = path.name
            try:
                return self._start(path)
            finally:
                self.loading = None

    def _running(self) -> bool:
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    def _start(self, path: Path) -> Loaded:
        self._end()
        folder = Path(tempfile.mkdtemp(prefix="dltui-ckpt-"))  # 0700: only we can connect
        argv = [sys.executable, "-m", "dltui.engine.offline", str(path), "--serve", str(folder)]
        argv += ["--parent", str(os.getpid())]
        # Its error lines go to an unnamed file (nothing to drain, nothing left on disk).
        err = tempfile.TemporaryFile(mode="w+")
        with self._lock:
            if self._closed:
                err.close()
                shutil.rmtree(folder, ignore_errors=True)
                raise CheckpointUnavailable("the dashboard is closing")
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True
            )
            self._proc, self._dir = proc, folder
        timer = threading.Timer(READY_TIMEOUT_S, proc.kill)
        timer.start()
        try:
            ready = proc.stdout.readline().strip() == "ready"  # or "" when it exits
        finally:
            timer.cancel()
            proc.stdout.close()
        if not ready:
            proc.kill()
            proc.wait()
            err.seek(0)
            lines = [ln.strip() for ln in err.read().splitlines() if ln.strip()]
            err.close()
            self._end()
            why = lines[-1].removeprefix("dltui: ") if lines else f"exit {proc.returncode}"
            raise CheckpointUnavailable(f"{path.name} could not be read: {why}")
        err.close()
        client = ControlClient(folder, timeout=30.0)
        try:
            step = (client.call("status").state or {}).get("step")
        except ControlError as e:
            self._end()
            msg = f"{path.name}: the checkpoint server did not answer: {e}"
            raise CheckpointUnavailable(msg) from None
        self._generation += 1
        self.loaded = Loaded(
            path, step if isinstance(step, int) else None, client, self._generation
        )
        return self.loaded

    def _end(self) -> None:
        """End the server and remove its folder (its socket goes with it)."""
        with self._lock:
            proc, folder, loaded = self._proc, self._dir, self.loaded
            self._proc = self._dir = self.loaded = None
        if loaded is not None:
            loaded.client.close()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def stop(self) -> None:
        """End the server for good (the dashboard is exiting); a load under way fails."""
        with self._lock:
            self._closed = True
        self._end()


class CheckpointUser:
    """For a pane that reads a finished run's checkpoint: the dashboard's shared server (the
    Tensors and Model tabs read the same checkpoint), or, for a pane mounted without the
    dashboard (tests), one of its own that stop_own_server() ends."""

    run_dir: Path
    _own_server: CheckpointServer | None = None

    @property
    def server(self) -> CheckpointServer:
        shared = getattr(getattr(self, "app", None), "checkpoints", None)
        if isinstance(shared, CheckpointServer):
            return shared
        if self._own_server is None:
            self._own_server = CheckpointServer(self.run_dir)
        return self._own_server

    def stop_own_server(self) -> None:
        if self._own_server is not None:
            self._own_server.stop()
