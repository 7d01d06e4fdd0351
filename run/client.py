"""Talk to a run's engine over runs/<id>/control.sock (torch-free; the CLI and dashboard use it)."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import wire

# sun_path holds 108 bytes on Linux; a longer path is reached through the directory's fd.
MAX_SOCKET_PATH = 100


class ControlError(Exception):
    """The engine replied with an error, or could not be reached; str() speaks to the user."""


class EngineGone(ControlError):
    """No engine is listening: the run ended, crashed, or was never started."""


REFUSED_GRACE_S = 1.0


@contextmanager
def short_path(run_dir: Path):
    """A path to run_dir/control.sock short enough for AF_UNIX, whatever run_dir's length."""
    full = str(Path(run_dir) / wire.CONTROL_SOCKET)
    if len(full.encode()) <= MAX_SOCKET_PATH:
        yield full
        return
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{wire.CONTROL_SOCKET}"
    finally:
        os.close(fd)


def socket_path(run_dir: Path) -> Path:
    return Path(run_dir) / wire.CONTROL_SOCKET


class ControlClient:
    """One connection to an engine; thread-safe; reconnects on demand."""

    def __init__(self, run_dir: Path | str, timeout: float = 30.0) -> None:
        self.run_dir = Path(run_dir)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._lock = threading.Lock()
        self._next_id = 0

    def _connect(self) -> socket.socket:
        if not socket_path(self.run_dir).exists():
            raise EngineGone(
                f"the engine of run {self.run_dir.name} is not running (no control socket)."
            )
        # A refused or full-backlog connect is retried briefly before the run is called gone: on
        # a loaded box a live engine was seen refusing once (and a burst of dashboards can fill
        # the backlog); a dead engine's socket costs REFUSED_GRACE_S more before the verdict.
        deadline = time.monotonic() + min(self.timeout, REFUSED_GRACE_S)
        delay = 0.05
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                with short_path(self.run_dir) as p:
                    s.connect(p)
                return s
            except (ConnectionRefusedError, BlockingIOError) as e:
                s.close()
                if time.monotonic() >= deadline:
                    if isinstance(e, BlockingIOError):
                        raise ControlError(
                            f"run {self.run_dir.name}'s engine is not accepting connections (too many at once)."
                        ) from None
                    raise EngineGone(
                        f"the engine of run {self.run_dir.name} is not running (stale socket)."
                    ) from None
            except FileNotFoundError:
                s.close()
                raise EngineGone(
                    f"the engine of run {self.run_dir.name} is not running (stale socket)."
                ) from None
            except OSError as e:
                s.close()
                raise ControlError(f"cannot connect to run {self.run_dir.name}: {e}") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
                self._buf = b""

    def request(self, cmd: str, **args: Any) -> wire.Reply:
        """Send one command and wait for its reply (raises EngineGone / ControlError)."""
        with self._lock:
            self._next_id += 1
            req = wire.Request(cmd=cmd, args=args, id=self._next_id)
            for attempt in (0, 1):  # one retry: the engine may have dropped an idle connection
                if self._sock is None:
                    self._sock = self._connect()
                try:
                    self._sock.sendall(req.encode())
                    line = self._readline()
                    return wire.Reply.decode(line)
                except (BrokenPipeError, ConnectionResetError, EOFError) as e:
                    self._sock.close()
                    self._sock, self._buf = None, b""
                    if attempt:
                        raise EngineGone(
                            f"the engine of run {self.run_dir.name} went away ({e})."
                        ) from None
                except TimeoutError:
                    self._sock.close()
                    self._sock, self._buf = None, b""
                    raise ControlError(
                        f"the engine did not answer '{cmd}' within {self.timeout:.0f} s "
                        "(a very long step, or a hung engine)."
                    ) from None
        raise AssertionError("unreachable")

    def call(self, cmd: str, **args: Any) -> wire.Reply:
        """Like request(), but an error reply raises ControlError with the engine's message."""
        reply = self.request(cmd, **args)
        if not reply.ok:
            raise ControlError(reply.error or "error")
        return reply

    def _readline(self) -> bytes:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line
