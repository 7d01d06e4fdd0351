"""Test harness for the control and lifetime tests (not a recipe): start and watch real engines.

Used by tests/test_control.py, tests/test_lifetime.py and tests/test_lr_schedulers.py. An Engine
is a real `python -m dltui.engine` subprocess in its own session; the readers go through the real
SQLite store; nothing is faked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dltui.run import wire
from dltui.run.client import ControlClient
from dltui.run.reader import RunReader

RECIPES = Path(__file__).parent
# One intra-op thread per engine: several may run at once on a 2-core box.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
START_TIMEOUT = 90.0
CLI = [sys.executable, "-m", "dltui.tui.cli"]


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll pred() until it returns something truthy; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.03)


class Engine:
    """A `python -m dltui.engine RECIPE --run-dir DIR --detached` process in its own session."""

    def __init__(self, recipe: str, run_dir: Path, *args: str, env: dict | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir.parent / f"{self.run_dir.name[:40]}.engine.log"
        argv = [
            sys.executable,
            "-m",
            "dltui.engine",
            "--run-dir",
            str(self.run_dir),
            "--detached",
            *args,
            str(RECIPES / recipe),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**ENV, **(env or {})},
            )
        self.client: ControlClient | None = None

    @property
    def sock(self) -> Path:
        return self.run_dir / wire.CONTROL_SOCKET

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_up(self, timeout: float = START_TIMEOUT) -> Engine:
        """Wait until the socket is served and the store has the engine's pid."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"engine exited with {self.proc.returncode}:\n{self.log()}")
            if not self.sock.exists() or not (self.run_dir / "run.sqlite").exists():
                return False
            with RunReader(self.run_dir) as r:
                return r.meta().get("pid") == self.proc.pid

        wait_for(up, timeout, "the engine to start")
        self.client = ControlClient(self.run_dir, timeout=60)
        return self

    def state(self) -> dict:
        return self.client.call("status").state

    def wait_step(self, at_least: int, timeout: float = 30.0) -> int:
        return wait_for(
            lambda: (s := self.state()["step"]) >= at_least and s, timeout, f"step {at_least}"
        )

    def running(self) -> dict:
        """Put the run in train mode, not paused."""
        self.client.call("mode", mode="train")
        return self.client.call("resume").state

    def paused(self) -> dict:
        """Put the run in train mode, paused at a step boundary; returns the state."""
        self.client.call("mode", mode="train")
        return self.client.call("pause").state

    def barrier(self) -> int:
        """The id of a fresh event, once it is in the file (so is everything recorded before it).

        `lr *1` changes nothing but is logged, and the store writes events in order.
        """
        last = reader_value(self.run_dir, lambda r: r.last_events(1))
        after = last[-1]["id"] if last else 0
        msg = self.client.call("lr", value="*1").data["message"]
        evs = wait_events(
            self.run_dir, after, wire.EV_COMMAND, 1, match=lambda e: e["message"] == msg
        )
        return evs[-1]["id"]

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"engine still running after {timeout} s:\n{self.log()}") from None

    def kill(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)


def reader_value(run_dir: Path, fn: Callable[[RunReader], Any]) -> Any:
    with RunReader(run_dir) as r:
        return fn(r)


def stored_max_step(run_dir: Path, name: str = "loss", phase: str = wire.TRAIN) -> int | None:
    rng = reader_value(run_dir, lambda r: r.step_range(name, phase))
    return None if rng is None else rng[1]


def stored_points(run_dir: Path, name: str, phase: str = wire.TRAIN) -> dict[int, float]:
    """{step: value} of one series, straight from the scalars table."""
    q = (
        "SELECT s.step, s.value FROM scalars s JOIN series r ON r.id = s.series"
        " WHERE r.name = ? AND r.phase = ? ORDER BY s.step, s.rowid"
    )
    return dict(reader_value(run_dir, lambda r: r.db.execute(q, (name, phase)).fetchall()))


def events_after(run_dir: Path, after: int, kind: str | None = None) -> list[dict]:
    return reader_value(run_dir, lambda r: r.events(after_id=after, kind=kind, limit=10_000))


def wait_events(
    run_dir: Path,
    after: int,
    kind: str,
    n: int,
    timeout: float = 10.0,
    match: Callable[[dict], bool] | None = None,
) -> list[dict]:
    """Wait for n events of `kind` after id `after` (that satisfy `match`); returns them all."""

    def found() -> list[dict]:
        evs = [e for e in events_after(run_dir, after, kind) if match is None or match(e)]
        return evs if len(evs) >= n else []

    return wait_for(found, timeout, f"{n} '{kind}' event(s)")


def cli(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def prestart(request: Any, specs: dict[str, Callable[[], Engine]]) -> dict[str, Engine]:
    """Start at once the engines that the selected tests of this module will use.

    Importing torch makes an engine's start CPU-bound for seconds; starting them together lets
    them load side by side (and while other tests run) instead of one after the other. specs maps
    a fixture name to a factory; an engine is started only when a selected test uses that fixture.
    """
    wanted = selected_fixtures(request)
    return {name: make() for name, make in specs.items() if name in wanted}


def selected_fixtures(request: Any) -> set[str]:
    """The fixture names used by the selected tests of the requesting test's module."""
    return {
        name
        for item in request.session.items
        if getattr(item, "module", None) is request.module
        for name in getattr(item, "fixturenames", ())
    }
