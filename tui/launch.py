"""Start an engine in its own session (so it outlives the terminal) and wait until it is up."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from dltui.run.client import ControlClient, ControlError, socket_path
from dltui.run.reader import DB_NAME
from dltui.run.runs import make_run_dir

START_TIMEOUT_S = 120.0  # importing torch and a big recipe can take a while on a cold disk
LOG_NAME = "engine.log"


def spawn(argv: list[str], run_dir: Path) -> subprocess.Popen:
    """The engine in a new session: no controlling terminal, so SSH hang-ups don't reach it."""
    make_run_dir(run_dir)
    log = open(run_dir / LOG_NAME, "ab")
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        log.close()


def wait_until_up(
    proc: subprocess.Popen, run_dir: Path, timeout: float = START_TIMEOUT_S
) -> int | None:
    """None once the engine serves its socket; else the engine's exit code (it failed to start)."""
    deadline = time.monotonic() + timeout
    sock = socket_path(run_dir)
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return code
        if sock.exists() and (run_dir / DB_NAME).exists() and _answers(run_dir):
            return None  # this engine answers: a stale socket from a dead one would refuse
        time.sleep(0.05)
    return None


def _answers(run_dir: Path) -> bool:
    client = ControlClient(run_dir, timeout=5)
    try:
        return client.request("status").state is not None
    except ControlError:
        return False
    finally:
        client.close()


def failed_start(run_dir: Path, code: int, fresh: bool) -> int:
    """Show why the engine exited; a run that never started leaves no directory behind."""
    log = run_dir / LOG_NAME
    text = log.read_text(errors="replace") if log.exists() else ""
    sys.stderr.write(text if text.endswith("\n") or not text else text + "\n")
    if fresh and not (run_dir / DB_NAME).exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    return code


def start_engine(args: argparse.Namespace, run_dir: Path, argv: list[str]) -> int:
    """`dltui train --detach` and `dltui train` (dashboard): start the engine, then detach or watch."""
    fresh = not (run_dir / DB_NAME).exists()
    proc = spawn(argv, run_dir)
    if not args.detach:
        if sys.stdout.isatty():
            print(f"dltui: starting {args.recipe} (run {run_dir.name}) ...", flush=True)
        # Import the dashboard while the engine imports torch: it paints as soon as the run is up.
        from dltui.tui.app import run_app
    code = wait_until_up(proc, run_dir)
    if code is not None:
        return failed_start(run_dir, code, fresh)
    if args.detach:
        print(f"run {run_dir.name} started in the background (pid {proc.pid}).")
        print(f"  watch it:  dltui attach {run_dir.name}")
        print(f"  steer it:  dltui ctl {run_dir.name} pause | resume | lr *0.5 | stop")
        print(f"  its log:   {run_dir / LOG_NAME}")
        return 0
    reap_when_done(proc)
    return run_app(run_dir, engine_pid=proc.pid, ascii=args.ascii, owns_engine=True)


def reap_when_done(proc: subprocess.Popen) -> threading.Thread:
    """Wait for the engine on a thread while the dashboard runs: an engine that ends first
    (`dltui ctl RUN stop`, a crash) is reaped at once instead of lingering as a defunct process
    until the dashboard quits. Started only once the engine is up: wait_until_up() polls it."""
    reaper = threading.Thread(target=proc.wait, name="engine reaper", daemon=True)
    reaper.start()
    return reaper
