"""Issue 13 against one real engine: LR inputs past float32, a megabyte of newlines, JSON nested
too deeply, an expression that would make millions of pieces, and 1,100 idle connections to an
engine held to `ulimit -n 1024` — the run still finishes, with finite LR and loss."""

from __future__ import annotations

import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import linear_recipe, spawn_engine

from dltui.run import wire
from dltui.run.client import ControlClient
from dltui.run.reader import RunReader

sys.path.append(str(Path(__file__).parent / "recipes"))
from ctl_harness import stored_points, wait_for  # noqa: E402

FD_LIMIT = 1024
IDLE_CONNECTIONS = 1100


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def exchange(run_dir: Path, payload: bytes, timeout: float = 30.0) -> bytes:
    """Send raw bytes, then read until the engine closes or a reply line arrives."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(run_dir / wire.CONTROL_SOCKET))
        s.sendall(payload)
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf
    finally:
        s.close()


def connect_idle(run_dir: Path, n: int, patience_s: float = 5.0) -> list[socket.socket]:
    """Up to n idle connections, as the review made them: each one retried (a full backlog
    refuses a non-blocking connect) until accepted or patience_s has passed for all."""
    done: list[socket.socket] = []
    deadline = time.monotonic() + patience_s
    while len(done) < n and time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(str(run_dir / wire.CONTROL_SOCKET))
            done.append(s)
        except (BlockingIOError, InterruptedError):  # the backlog is full: wait a little
            s.close()
            time.sleep(0.002)
    time.sleep(0.5)
    return done


@pytest.fixture
def engine(tmp_path, write_recipe):
    # 10 steps per epoch, 3 epochs: two epoch-end checkpoints after the flood of connections.
    recipe = write_recipe(linear_recipe(n=200, batch=20, epochs=3, val=50))
    run_dir = tmp_path / "runs" / "hard"
    run_dir.parent.mkdir(parents=True)
    proc = spawn_engine(
        recipe,
        run_dir,
        tmp_path / "engine.log",
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_limit_fds,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "engine.log").read_text())
        if not (run_dir / wire.CONTROL_SOCKET).exists():
            return False
        with RunReader(run_dir) as r:
            return r.meta().get("status") == wire.RUNNING

    wait_for(up, 90, "the engine")
    client = ControlClient(run_dir, timeout=60)
    client.call("pause")
    yield proc, run_dir, client
    client.close()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def test_the_reviews_hostile_inputs_cost_little_and_the_run_finishes(engine):
    proc, run_dir, client = engine
    pid = proc.pid

    # Items 1-2: past float32, and a factor that would overflow; refused, nothing changes.
    lr0 = client.call("status").state["lrs"]
    for value in ("1e308", "1e39", "1e-320"):
        reply = client.request("lr", value=value)
        assert not reply.ok and "Nothing was changed" in reply.error, (value, reply)
        assert reply.state["lrs"] == lr0
    assert client.call("lr", value="0.05").state["lrs"] == [0.05]

    # Item 9: a megabyte of newlines, then a request on the same connection.
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic()
    reply = wire.Reply.decode(exchange(run_dir, b"\n" * (1 << 20) + b'{"cmd": "status"}\n'))
    took, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    assert reply.ok
    print(f"\n1 MiB of newlines: answered in {took:.2f} s, {cpu:.2f} s of engine CPU")
    assert cpu < 1.0, f"{cpu:.2f} s of engine CPU for blank lines"

    # Item 9: nesting too deep for json: an error reply, no traceback in the run's console.
    reply = wire.Reply.decode(exchange(run_dir, b"[" * 60000 + b"\n"))
    assert not reply.ok and "nested too deeply" in reply.error, reply

    # Item 4: the review's expression; answered within 1 s, engine memory grows < 100 MB.
    rss0 = rss_mb(pid)
    t0 = time.monotonic()
    reply = client.request(
        "tensor", name="weight", expr="x.unsqueeze(0).expand(3000000,-1,-1).split(1)[0]"
    )
    took, grew = time.monotonic() - t0, rss_mb(pid) - rss0
    print(f"expand/split expression: answered in {took:.2f} s, engine RSS +{grew:.1f} MB")
    assert not reply.ok and "3,000,000 pieces" in reply.error, reply
    assert took < 1.0 and grew < 100
    reply = client.request("tensor", name="weight", expr="x.view(-1).split(1)[0]")
    assert reply.ok, reply.error  # 4 pieces: fine

    # Item 3: 1,100 idle connections to an engine with 1,024 descriptors; the run finishes.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    idle: list[socket.socket] = []
    try:
        idle = connect_idle(run_dir, IDLE_CONNECTIONS)
        connected = len(idle)
        fds = fd_count(pid)
        print(
            f"{IDLE_CONNECTIONS} idle connections ({connected} accepted by the kernel): {fds} fds"
        )
        assert fds < 200, f"the engine holds {fds} descriptors"
        client.call("resume")  # this client's connection was made before the flood
        code = proc.wait(120)
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert code == 0, (run_dir.parent.parent / "engine.log").read_text()
    with RunReader(run_dir) as r:
        assert r.status() == wire.FINISHED
        console = [row[3] for row in r.console(limit=10_000)]
    assert not any("Traceback" in line or "RecursionError" in line for line in console), console
    assert (run_dir / "checkpoints" / "last.pt").exists()
    losses, lrs = stored_points(run_dir, "loss"), stored_points(run_dir, wire.lr_name(0))
    assert len(losses) == 30
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert all(math.isfinite(v) and v > 0 for v in lrs.values()), lrs
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
