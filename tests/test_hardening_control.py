"""Issue 13, item 3, in process: the control server serves at most MAX_CONNECTIONS at once (the
rest wait in the backlog, costing the engine no descriptor), closes idle ones, and keeps
accepting after accept() fails for want of descriptors (EMFILE), instead of ending for good."""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest
from conftest import linear_recipe

from dltui.engine import control
from dltui.engine.gate import Gate
from dltui.engine.loop import Loop, Settings
from dltui.engine.recipe import load_recipe
from dltui.engine.store import RunStore
from dltui.run import wire


@pytest.fixture
def server(tmp_path, write_recipe):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    store = RunStore(run_dir / "run.sqlite")
    store.start()
    gate = Gate()
    loop = Loop(load_recipe(write_recipe(linear_recipe())), Settings(device="cpu"), [], gate)
    srv = control.ControlServer(run_dir, gate, store, loop)
    srv.start()
    yield srv
    srv.close()
    store.close()


def connect(srv: control.ControlServer, timeout: float = 5.0) -> socket.socket:
    """A connection, retried while the backlog is full (a Unix socket says EAGAIN at once)."""
    deadline = time.monotonic() + 30
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(srv.run_dir / wire.CONTROL_SOCKET))
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def ask_status(s: socket.socket) -> wire.Reply:
    s.sendall(wire.Request(cmd="status").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return wire.Reply.decode(buf)


def test_connections_are_capped_and_idle_ones_are_closed(server):
    server.idle_timeout = 1.0
    held = [connect(server) for _ in range(control.MAX_CONNECTIONS)]
    try:
        for s in held:
            assert ask_status(s).ok
        extra = connect(server, timeout=0.5)  # in the backlog: accepted only when a slot frees
        extra.sendall(wire.Request(cmd="status").encode())
        with pytest.raises(TimeoutError):
            extra.recv(65536)
        # The held ones fall silent: after idle_timeout the server closes them, and the one
        # waiting in the backlog is served.
        extra.settimeout(10)
        t0 = time.monotonic()
        reply = wire.Reply.decode(extra.recv(65536))
        assert reply.ok and 0.3 < time.monotonic() - t0 < 8
        assert held[0].recv(1) == b"", "an idle connection was not closed"
    finally:
        for s in held:
            s.close()


def test_accept_goes_on_after_running_out_of_descriptors(server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    client = None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        while True:  # use up every descriptor left: the server's accept() gets EMFILE
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        client.connect(str(server.run_dir / wire.CONTROL_SOCKET))  # queued in the backlog
        time.sleep(3 * control.ACCEPT_RETRY_S)  # accept() fails, and fails again
        for fd in fillers:
            os.close(fd)
        fillers = []
        assert ask_status(client).ok  # the accept loop was still there
    finally:
        for fd in fillers:
            os.close(fd)
        if client is not None:
            client.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert server._thread.is_alive()
