"""The control server: serves runs/<id>/control.sock (0600, same uid only) in a thread.

Requests are validated here; anything that touches the model or optimizer is handed to the
gate and runs on the training thread at the next step boundary (STYLE.md 3).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from dltui.run import wire
from dltui.run.client import short_path, socket_path

from . import commands
from .gate import Gate
from .store import RunStore

APPLY_TIMEOUT_S = 60.0  # how long a reply waits for the step boundary
# The server must never take what training needs (file descriptors, threads, CPU): at most this
# many connections are served at once, the rest wait in the listen backlog (no descriptor of
# ours) until one closes; a connection silent for IDLE_TIMEOUT_S is closed (clients reconnect).
MAX_CONNECTIONS = 32
IDLE_TIMEOUT_S = 60.0
ACCEPT_RETRY_S = 0.2  # after a transient accept() error (EMFILE, ENOBUFS): wait, then go on


class SocketInUse(RuntimeError):
    """Another live engine already serves this run's socket."""


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class ControlServer:
    def __init__(self, run_dir: Path, gate: Gate, store: RunStore, loop: Any) -> None:
        self.run_dir = Path(run_dir)
        self.gate = gate
        self.store = store
        self.loop = loop
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.idle_timeout = IDLE_TIMEOUT_S

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        path = socket_path(self.run_dir)
        if path.exists() or path.is_symlink():
            self._clear_stale(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            with short_path(self.run_dir) as p:
                s.bind(p)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        s.listen(16)
        self._sock = s
        self._thread = threading.Thread(target=self._accept_loop, name="dltui-control", daemon=True)
        self._thread.start()

    def _clear_stale(self, path: Path) -> None:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            with short_path(self.run_dir) as p:
                probe.connect(p)
        except (ConnectionRefusedError, FileNotFoundError, OSError):
            path.unlink(missing_ok=True)  # left by a dead engine: nobody is listening
            self.store.event(wire.EV_INFO, "removed a stale control socket left by a dead engine")
            return
        finally:
            probe.close()
        raise SocketInUse(f"another engine is serving {path}; is this run already running?")

    def close(self) -> None:
        self._closing = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        socket_path(self.run_dir).unlink(missing_ok=True)

    # -- connections -----------------------------------------------------------------------
    def _accept_loop(self) -> None:
        told = False
        while not self._closing:
            # A slot first: at the cap, new connections wait in the backlog, not in our fds.
            if not self._slots.acquire(timeout=0.5):
                continue
            try:
                conn, _ = self._sock.accept()
            except OSError as e:
                self._slots.release()
                if self._closing:
                    return
                if not told:  # EMFILE and friends pass; the run is told once, not per retry
                    told = True
                    self.store.event(
                        wire.EV_INFO,
                        f"control server: accept failed ({e}); retrying",
                        level="warning",
                    )
                time.sleep(ACCEPT_RETRY_S)
                continue
            try:
                threading.Thread(
                    target=self._serve, args=(conn,), name="dltui-control-conn", daemon=True
                ).start()
            except RuntimeError:  # can't start a thread: drop this client, keep serving
                conn.close()
                self._slots.release()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self.idle_timeout)
            self._converse(conn)
        except OSError:  # the client went away, or fell silent (timeout): nothing to do
            pass
        except Exception as e:  # a bug must not print a traceback into the run's console
            with contextlib.suppress(OSError):
                conn.sendall(wire.Reply(ok=False, error=f"internal error: {e!r}").encode())
        finally:
            conn.close()
            self._slots.release()

    def _converse(self, conn: socket.socket) -> None:
        if peer_uid(conn) != os.getuid():
            conn.sendall(
                wire.Reply(
                    ok=False, error="permission denied: this run belongs to another user"
                ).encode()
            )
            return
        buf = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
            if b"\n" in chunk:
                # All complete lines at once: linear in the bytes received (splitting one line
                # off at a time copied the rest each time; a megabyte of newlines cost seconds).
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        conn.sendall(self.handle(line).encode())
            if len(buf) > wire.MAX_REQUEST_BYTES:
                conn.sendall(
                    wire.Reply(
                        ok=False, error=f"request too large (over {wire.MAX_REQUEST_BYTES} bytes)"
                    ).encode()
                )
                return  # the rest of an oversized line can't be framed: drop the connection

    def handle(self, line: bytes) -> wire.Reply:
        try:
            req = wire.Request.decode(line)
        except ValueError as e:
            return wire.Reply(ok=False, error=str(e))
        try:
            data = self._dispatch(req)
            return wire.Reply(ok=True, id=req.id, state=self.state(), data=data)
        except commands.CommandError as e:
            return wire.Reply(ok=False, id=req.id, error=str(e), state=self.state())
        except FutureTimeout:
            return wire.Reply(
                ok=False,
                id=req.id,
                state=self.state(),
                error=f"'{req.cmd}' is queued but the current step has not ended "
                f"within {APPLY_TIMEOUT_S:.0f} s; it will apply at the next boundary.",
            )
        except RuntimeError as e:  # e.g. the run has ended
            return wire.Reply(ok=False, id=req.id, error=str(e), state=self.state())

    # -- commands --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The steering state every reply carries, and whether the store can write (a full
        disk: training goes on, records wait); `dltui status` shows it."""
        st = commands.state(self.loop)
        st["store_trouble"] = self.store.trouble
        return st

    def _at_boundary(self, fn: Any) -> Any:
        return self.gate.submit(fn).result(timeout=APPLY_TIMEOUT_S)

    def _event(self, message: str, data: dict) -> None:
        self.store.event(wire.EV_COMMAND, message, step=self.loop.step, data=data)

    def _dispatch(self, req: wire.Request) -> Any:
        cmd, a = req.cmd, req.args
        if cmd not in wire.COMMANDS:
            raise commands.CommandError(
                f"unknown command {cmd!r}; commands: {', '.join(wire.COMMANDS)}."
            )
        if cmd == "status":
            return None
        if cmd == "pause":
            return self._at_boundary(self._pause)
        if cmd == "resume":
            return self._at_boundary(self._resume)
        if cmd == "step":
            n = a.get("n", 1)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise commands.CommandError(f"step count {n!r} must be a whole number, 1 or more.")
            return self._at_boundary(lambda loop: self._step(loop, n))
        if cmd == "lr":
            if "value" not in a:
                raise commands.CommandError("lr needs a value: 0.01, *0.5 or /2.")
            commands.parse_lr(a["value"])  # validate before queueing: a bad value changes nothing
            group, opt = a.get("group"), a.get("optimizer")
            if group is not None and (isinstance(group, bool) or not isinstance(group, int)):
                raise commands.CommandError(f"group {group!r} must be a whole number.")
            if opt is not None and not isinstance(opt, str):
                raise commands.CommandError(
                    f"optimizer {opt!r} must be a name (see `dltui status`)."
                )
            return self._at_boundary(lambda loop: self._lr(loop, a["value"], group, opt))
        if cmd == "mode":
            mode = a.get("mode")
            if mode not in commands.MODES:
                raise commands.CommandError(f"unknown mode {mode!r}; use train or eval.")
            why = getattr(self.loop, "eval_unavailable", lambda: None)() if mode == "eval" else None
            if why:
                raise commands.CommandError(f"eval: {why}")
            return self._at_boundary(lambda loop: self._mode(loop, mode))
        if cmd == "checkpoint":
            return self._at_boundary(
                lambda loop: {
                    "path": str(loop.save_checkpoint("last", reason="requested", must=True))
                }
            )
        if cmd == "stop":
            self.gate.request_stop("stopped by request")
            self._event(f"stop requested at step {self.loop.step}", {"cmd": "stop"})
            return {"stopping": True}
        if cmd == "module":  # read-only, answered at once: no step boundary needed
            name = a.get("name")
            if not isinstance(name, str):
                raise commands.CommandError("module needs a name (see the Model tab).")
            return commands.describe_module(self.loop, name)
        if cmd == "tensors":
            return self._at_boundary(commands.list_tensors)
        if cmd == "tensor":
            name, expr = a.get("name"), a.get("expr")
            if not isinstance(name, str) or not name:
                raise commands.CommandError("tensor needs a name (see the `tensors` command).")
            if expr is not None and not isinstance(expr, str):
                raise commands.CommandError("expr must be a string like 'x.t()[1:3]'.")
            return self._at_boundary(lambda loop: commands.inspect_named(loop, name, expr))
        raise commands.CommandError(f"command {cmd!r} is not implemented")

    def _pause(self, loop: Any) -> None:
        if not self.gate.paused:
            self.gate.hold()
            self._event(f"paused at step {loop.step}", {"cmd": "pause"})

    def _resume(self, loop: Any) -> None:
        if self.gate.paused:
            self.gate.paused, self.gate.step_target = False, None
            self._event(f"resumed at step {loop.step}", {"cmd": "resume"})

    def _step(self, loop: Any, n: int) -> dict:
        if not self.gate.paused:
            raise commands.CommandError("step works while paused; pause the run first.")
        start = max(loop.step, self.gate.step_target or 0)
        self.gate.step_target = start + n
        self._event(f"step {n} from step {loop.step}", {"cmd": "step", "n": n})
        return {"until_step": self.gate.step_target}

    def _lr(self, loop: Any, value: Any, group: int | None, optimizer: str | None) -> dict:
        out = commands.apply_lr(loop, value, group, optimizer)
        self._event(out["message"], {"cmd": "lr", **out})
        return out

    def _mode(self, loop: Any, mode: str) -> None:
        if mode == "eval":
            self.gate.eval_requested = True  # a fresh pass, also when already in eval
        if mode != self.gate.mode:
            self.gate.mode = mode
            self._event(f"mode {mode} at step {loop.step}", {"cmd": "mode", "mode": mode})
