"""The control channel against a real engine: real subprocess, real socket, real SQLite (STYLE 12).

Most checks share one slow engine (tests/recipes/ctl_main.py, ~20 ms a step, endless data) and
put it in the state they need first; scenarios that end or break an engine get their own.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dltui.engine.store import FLUSH_EVERY_S
from dltui.run import wire
from dltui.run.client import ControlClient, ControlError, EngineGone, short_path
from dltui.run.reader import RunReader

sys.path.append(str(Path(__file__).parent / "recipes"))
from ctl_harness import (  # noqa: E402  (tests/recipes holds the shared harness)
    RECIPES,
    START_TIMEOUT,
    Engine,
    cli,
    events_after,
    prestart,
    reader_value,
    selected_fixtures,
    stored_max_step,
    stored_points,
    wait_events,
    wait_for,
)


def raw_exchange(run_dir: Path, payload: bytes) -> dict:
    """Send raw bytes on a fresh connection and return the first reply line, decoded."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    with s:
        with short_path(run_dir) as p:
            s.connect(p)
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the engine may hang up before reading all of an oversized request
        buf = b""
        while b"\n" not in buf:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    assert b"\n" in buf, f"no reply line; got {buf!r}"
    return json.loads(buf.split(b"\n", 1)[0])


def runs_status(runs_dir: Path, run_id: str) -> str:
    """What `dltui runs --json` says about one run."""
    out = cli("--runs-dir", str(runs_dir), "runs", "--json")
    assert out.returncode == 0, out.stderr
    return {r["id"]: r["status"] for r in json.loads(out.stdout)}[run_id]


LONG_RUN_DIR = ("d" * 60) + "/" + ("e" * 60) + "/long-run"  # its socket path is > 120 bytes


@pytest.fixture(scope="module", autouse=True)
def pool(request, tmp_path_factory):
    """Every engine this module's selected tests need, started together (see ctl_harness)."""
    base = tmp_path_factory.mktemp("ctl")
    runs = base / "runs"
    engines = prestart(
        request,
        {
            "main": lambda: Engine("ctl_main.py", runs / "main"),
            "noval": lambda: Engine("ctl_noval.py", runs / "noval"),
            "long_run": lambda: Engine("ctl_main.py", base / LONG_RUN_DIR),
            "stale": lambda: Engine("ctl_main.py", runs / "stale"),
        },
    )
    yield engines
    for eng in list(engines.values()):
        eng.kill()


@pytest.fixture(scope="module")
def main(pool, request) -> Engine:
    """The shared engine: BatchNorm MLP, two Adam groups (lr 0.01 and 0.001), val data, no end."""
    eng = pool["main"].wait_up()
    if "second" in selected_fixtures(request):
        # A second engine on the same run, started as soon as the first serves it.
        eng.meta_before_second = reader_value(eng.run_dir, lambda r: r.meta())
        pool["second"] = Engine("ctl_main.py", eng.run_dir)
    eng.wait_step(2)
    return eng


@pytest.fixture
def second(main, pool) -> Engine:
    return pool["second"]


@pytest.fixture(scope="module")
def runs_dir(main) -> Path:
    return main.run_dir.parent


@pytest.fixture
def noval(pool) -> Engine:
    return pool["noval"].wait_up()


@pytest.fixture
def long_run(pool) -> Engine:
    return pool["long_run"].wait_up()


@pytest.fixture
def stale(pool) -> Engine:
    return pool["stale"].wait_up()


# ---------------------------------------------------------------------------------------------
# pause / step / resume


def test_pause_step_resume_are_exact_acked_and_recorded(main):
    c, run_dir = main.client, main.run_dir
    start = main.running()
    assert start["paused"] is False and start["mode"] == "train"
    main.wait_step(start["step"] + 2)
    ev0 = main.barrier()

    st = c.call("pause").state
    assert st["paused"] is True and st["status"] == "paused" and st["steps_left"] == 0
    s = st["step"]
    time.sleep(0.3)
    assert main.state()["step"] == s, "the step counter moved while paused"
    # The store agrees with the engine (on the CPU a step's scalars are recorded at once).
    wait_for(lambda: stored_max_step(run_dir) == s, 5, f"the stored loss to reach step {s}")
    time.sleep(0.3)
    assert stored_max_step(run_dir) == s

    r = c.call("step", n=5)
    assert r.data == {"until_step": s + 5}
    assert r.state["paused"] is True and r.state["step"] == s and r.state["steps_left"] == 5
    wait_for(
        lambda: (st := main.state())["step"] == s + 5 and st["steps_left"] == 0,
        20,
        "5 single steps",
    )
    time.sleep(0.3)
    st = main.state()
    assert st["step"] == s + 5 and st["paused"] is True, "the run did not hold after `step 5`"
    wait_for(lambda: stored_max_step(run_dir) == s + 5, 5, "the store to record the 5 steps")
    time.sleep(0.3)
    assert stored_max_step(run_dir) == s + 5, "the store saw more or fewer than exactly 5 steps"

    st = c.call("resume").state
    assert st["paused"] is False and st["status"] == wire.RUNNING
    main.wait_step(s + 7)

    bad = c.request("step", n=3)
    assert not bad.ok and "paused" in bad.error and "pause the run first" in bad.error
    assert bad.state["paused"] is False

    evs = wait_events(run_dir, ev0, wire.EV_COMMAND, 3)
    assert [e["data"]["cmd"] for e in evs] == ["pause", "step", "resume"]
    assert [e["step"] for e in evs] == [s, s, s + 5]
    assert evs[0]["message"] == f"paused at step {s}"
    assert evs[1]["message"] == f"step 5 from step {s}" and evs[1]["data"]["n"] == 5
    assert evs[2]["message"] == f"resumed at step {s + 5}"


def test_two_controllers_at_once_see_the_same_state(main):
    main.running()
    a, b = ControlClient(main.run_dir), ControlClient(main.run_dir)
    try:
        s = a.call("pause").state["step"]
        assert b.call("status").state["paused"] is True
        assert b.call("status").state["step"] == s
        r = b.call("step", n=2)
        assert r.state["steps_left"] == 2
        wait_for(lambda: a.call("status").state["step"] == s + 2, 20, "b's 2 steps, seen by a")

        # Both clients (and one client shared by two threads: it is thread-safe) at once.
        seen: list[tuple[str, int, bool]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def hammer(client: ControlClient, tag: str) -> None:
            try:
                for _ in range(15):
                    st = client.call("status").state
                    with lock:
                        seen.append((tag, st["step"], st["paused"]))
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [
            threading.Thread(target=hammer, args=(cl, tag))
            for cl, tag in ((a, "a"), (b, "b"), (a, "a2"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(seen) == 45
        assert {(step, paused) for _, step, paused in seen} == {(s + 2, True)}

        assert a.call("resume").state["paused"] is False
        assert b.call("status").state["paused"] is False
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------------------------
# learning rate


def test_lr_absolute_factor_divisor_and_one_group(main):
    c, run_dir = main.client, main.run_dir
    st = main.paused()
    assert len(st["lrs"]) == 2
    s = st["step"]
    ev0 = main.barrier()

    r = c.call("lr", value="0.01")
    assert r.state["lrs"] == pytest.approx([0.01, 0.01], rel=1e-12)
    assert r.data["after"] == r.state["lrs"] and r.data["group"] is None
    assert "(all groups)" in r.data["message"]
    assert c.call("lr", value="*0.5").state["lrs"] == pytest.approx([0.005, 0.005], rel=1e-12)
    assert c.call("lr", value="/2").state["lrs"] == pytest.approx([0.0025, 0.0025], rel=1e-12)
    r = c.call("lr", value="0.02", group=1)
    assert r.state["lrs"] == pytest.approx([0.0025, 0.02], rel=1e-12)
    assert "(group 1)" in r.data["message"]
    assert c.call("lr", value="*0.5", group=1).state["lrs"] == pytest.approx(
        [0.0025, 0.01], rel=1e-12
    )
    assert main.state()["step"] == s, "an LR change moved the paused run"

    # The next step records the new rates.
    c.call("step", n=1)
    wait_for(lambda: stored_max_step(run_dir, "lr/1") == s + 1, 20, "the lr scalars of step s+1")
    assert stored_points(run_dir, "lr/0")[s + 1] == pytest.approx(0.0025, rel=1e-12)
    assert stored_points(run_dir, "lr/1")[s + 1] == pytest.approx(0.01, rel=1e-12)
    assert stored_points(run_dir, "lr/1")[s] != pytest.approx(0.01, rel=1e-12)

    evs = wait_events(run_dir, ev0, wire.EV_COMMAND, 6)
    lr_evs = [e for e in evs if e["data"]["cmd"] == "lr"]
    assert len(lr_evs) == 5 and all(e["step"] == s for e in lr_evs)
    assert lr_evs[3]["data"]["group"] == 1 and "->" in lr_evs[3]["message"]


BAD_REQUESTS = [
    # (cmd, args, words the error must contain)
    ("lr", {"value": 0}, "greater than zero"),
    ("lr", {"value": "0"}, "greater than zero"),
    ("lr", {"value": "-1"}, "greater than zero"),
    ("lr", {"value": -1}, "greater than zero"),
    ("lr", {"value": "nan"}, "not finite"),
    ("lr", {"value": "inf"}, "not finite"),
    ("lr", {"value": "*inf"}, "not finite"),
    ("lr", {"value": "abc"}, "not a number"),
    ("lr", {"value": ""}, "not a number"),
    ("lr", {"value": "*0"}, "greater than zero"),
    ("lr", {"value": "/0"}, "greater than zero"),
    ("lr", {}, "lr needs a value"),
    ("lr", {"value": "0.5", "group": 5}, "no param group 5"),
    ("lr", {"value": "0.5", "group": -1}, "no param group -1"),
    ("lr", {"value": "0.5", "group": "a"}, "group 'a' must be a whole number"),
    ("lr", {"value": "0.5", "group": True}, "must be a whole number"),
    ("mode", {"mode": "test"}, "unknown mode 'test'"),
    ("mode", {}, "unknown mode"),
    ("frobnicate", {}, "unknown command 'frobnicate'"),
    ("tensor", {"name": "no.such.tensor"}, "no tensor named 'no.such.tensor'"),
    ("tensor", {}, "tensor needs a name"),
    ("tensor", {"name": "fc1.weight", "expr": "x.__class__"}, "`x.__class__` is not allowed"),
    ("tensor", {"name": "fc1.weight", "expr": "x.numpy()"}, "`x.numpy` is not allowed"),
    ("tensor", {"name": "fc1.weight", "expr": "__import__('os')"}, "is not allowed"),
    ("tensor", {"name": "fc1.weight", "expr": "x[y]"}, "`y` is not allowed"),
    ("tensor", {"name": "fc1.weight", "expr": "x.add_(1)"}, "`x.add_` is not allowed"),
    ("tensor", {"name": "fc1.weight", "expr": "x.view(10**100)"}, "`10**100` is not allowed"),
    ("tensor", {"name": "fc1.weight", "expr": 5}, "expr must be a string"),
    ("step", {"n": 0}, "step count 0 must be a whole number, 1 or more"),
    ("step", {"n": -1}, "step count -1 must be"),
    ("step", {"n": "x"}, "step count 'x' must be"),
    ("step", {"n": 1.5}, "step count 1.5 must be"),
    ("step", {"n": True}, "step count True must be"),
]


def test_bad_requests_change_nothing_and_say_what_was_wrong(main):
    c, run_dir = main.client, main.run_dir
    c.call("lr", value="0.003")
    c.call("lr", value="0.0007", group=1)
    before = main.paused()
    ev0 = main.barrier()

    def unchanged(st: dict, why: str) -> None:
        for key in ("lrs", "step", "paused", "mode", "steps_left", "status"):
            assert st[key] == before[key], f"{why} changed {key}: {before[key]} -> {st[key]}"

    for cmd, args, words in BAD_REQUESTS:
        r = c.request(cmd, **args)
        why = f"{cmd} {args}"
        assert not r.ok, f"{why} was accepted"
        assert words in r.error, f"{why}: error {r.error!r} does not say {words!r}"
        assert r.state is not None, f"{why}: the error reply carries no state"
        unchanged(r.state, why)

    raw = [
        (b'{"cmd": "status"\n', "malformed request (not JSON)"),
        (b"\xff\xfe garbage\n", "malformed request"),
        (b'["status"]\n', 'expected an object like {"cmd": "status"}'),
        (b'{"args": {}}\n', "expected an object"),
        (b'{"cmd": "lr", "args": ["0.1"]}\n', "'args' must be an object"),
        (
            b'{"cmd": "lr", "args": {"value": "' + b"1" * (wire.MAX_REQUEST_BYTES + 10) + b'"}}\n',
            "too large",
        ),
        (b"{" * (3 * wire.MAX_REQUEST_BYTES), "too large"),  # never ends: the engine hangs up
    ]
    for payload, words in raw:
        reply = raw_exchange(run_dir, payload)
        assert reply["ok"] is False, f"{payload[:40]!r} was accepted"
        assert words in reply["error"], f"{payload[:40]!r}: {reply['error']!r} lacks {words!r}"

    time.sleep(0.3)
    unchanged(main.state(), "the bad requests")
    time.sleep(0.3)
    assert events_after(run_dir, ev0, wire.EV_COMMAND) == [], (
        "a refused command was logged as applied"
    )

    # ... and the run still works.
    c.call("step", n=1)
    wait_for(
        lambda: main.state()["step"] == before["step"] + 1, 20, "one step after the bad requests"
    )
    assert main.state()["lrs"] == before["lrs"]


def test_lr_factor_that_overflows_to_inf_is_refused(main):
    c = main.client
    main.paused()
    c.call("lr", value="1e30")  # 1e300 itself is refused now: above float32
    before = main.state()
    for value in ("*1e10", "/1e-320"):
        r = c.request("lr", value=value)
        assert not r.ok and ("finite" in r.error or "too small" in r.error), (value, r.error)
        assert r.state["lrs"] == before["lrs"], f"lr {value} changed the rates"
    c.call("lr", value="0.01", group=0)
    c.call("lr", value="0.001", group=1)


def test_eval_mode_records_val_and_holds_training_until_train(main, runs_dir):
    c, run_dir = main.client, main.run_dir
    main.running()
    main.wait_step(main.state()["step"] + 2)
    val_before = stored_points(run_dir, "loss", wire.VAL)
    st = c.call("mode", mode="eval").state
    assert st["mode"] == "eval"
    held = st["step"]
    wait_for(
        lambda: len(stored_points(run_dir, "loss", wire.VAL)) > len(val_before), 30, "an eval pass"
    )
    assert held in stored_points(run_dir, "loss", wire.VAL), (
        "the pass is not recorded at the held step"
    )
    assert "acc" in {
        n for n, ph in reader_value(run_dir, lambda r: r.series_names()) if ph == wire.VAL
    }
    time.sleep(0.5)
    assert main.state()["step"] == held, "training went on in eval mode"
    out = cli("--runs-dir", str(runs_dir), "status", run_dir.name, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "eval", out.stdout
    c.call("mode", mode="train")
    main.wait_step(held + 2)


def test_tensors_lists_every_kind_and_inspects_a_view_like_torch(main):
    c = main.client
    main.paused()
    listed = {t["name"]: t for t in c.call("tensors").data}
    kinds = {t["kind"] for t in listed.values()}
    assert {"parameter", "gradient", "buffer", "optimizer state", "batch"} <= kinds, kinds
    assert "bn.running_mean" in listed and listed["bn.running_mean"]["kind"] == "buffer"
    assert "optimizer.fc1.weight.exp_avg" in listed
    assert {"input", "output"} <= set(listed)
    shape = tuple(listed["fc1.weight"]["shape"])
    for expr in ("x.t()[1:3, ::2]", "x.t()", "x[2:5, 1::3]"):
        d = c.call("tensor", name="fc1.weight", expr=expr).data
        ref = eval(expr, {"x": torch.empty(shape)})  # the reference: torch itself on that shape
        assert d["shape"] == list(ref.shape)
        assert d["stride"] == list(ref.stride())
        assert d["storage_offset"] == ref.storage_offset()
        assert d["is_contiguous"] is ref.is_contiguous() is False
        assert d["shares_storage"] is True
        assert d["storage_numel"] == math.prod(shape)
        assert len(d["values"]) == min(ref.numel(), 64)  # the default window
        for v in d["values"]:
            pos = d["storage_offset"] + sum(
                i * s for i, s in zip(v["index"], d["stride"], strict=True)
            )
            assert v["storage"] == pos

    # The view's values are the base tensor's values at those storage positions.
    base = c.call("tensor", name="fc1.weight").data
    assert base["shares_storage"] is True and base["stride"] == [8, 1]
    by_pos = {v["storage"]: v["value"] for v in base["values"]}
    view = c.call("tensor", name="fc1.weight", expr="x.t()[1:3, ::2]").data
    common = [v for v in view["values"] if v["storage"] in by_pos]
    assert len(common) >= 4
    for v in common:
        assert v["value"] == by_pos[v["storage"]]


def test_checkpoint_writes_last_pt_at_the_current_step(main):
    c, run_dir = main.client, main.run_dir
    s = main.paused()["step"]
    ev0 = main.barrier()
    r = c.call("checkpoint")
    path = Path(r.data["path"])
    assert path == run_dir / "checkpoints" / "last.pt"
    ck = torch.load(path, map_location="cpu", weights_only=False)
    assert ck["step"] == s and r.state["step"] == s
    assert set(ck) >= {"model", "optimizer", "scheduler", "epoch", "batch"}
    assert ck["model"]["fc1.weight"].shape == (16, 8)
    ev = wait_events(run_dir, ev0, wire.EV_CHECKPOINT, 1)[0]
    assert ev["step"] == s and ev["data"]["tag"] == "last" and "requested" in ev["message"]


# ---------------------------------------------------------------------------------------------
# permissions, a second engine, the real CLI


def as_other_user(run_dir: Path, request: bytes, uid: int = 65534) -> dict:
    """In a forked child running as `uid`, connect to run_dir's socket, send, return the reply."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.close(rd)
            os.chdir(run_dir)  # connect by a relative name: no search permission needed above
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(wire.CONTROL_SOCKET)
            try:
                s.sendall(request)
            except OSError:
                pass  # the engine may hang up first; its reply is still there to read
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            os.write(wr, json.dumps({"uid": os.getuid(), "reply": buf.decode()}).encode())
            code = 0
        except BaseException as e:
            os.write(wr, json.dumps({"uid": os.getuid(), "error": repr(e)}).encode())
        finally:
            os._exit(code)
    os.close(wr)
    with os.fdopen(rd, "rb") as f:
        got = json.loads(f.read() or b"{}")
    os.waitpid(pid, 0)
    return got


def test_run_dir_0700_socket_0600_and_other_users_are_refused(main):
    run_dir = main.run_dir
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(main.sock).st_mode)
    assert stat.S_IMODE(os.stat(main.sock).st_mode) == 0o600
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")

    st = main.running()
    os.chmod(run_dir, 0o755)  # let the connect through: the engine's own uid check must refuse
    os.chmod(main.sock, 0o666)
    try:
        got = as_other_user(run_dir, wire.Request(cmd="pause", id=1).encode())
    finally:
        os.chmod(run_dir, 0o700)
        os.chmod(main.sock, 0o600)
    assert "error" not in got, got
    assert got["uid"] == 65534
    reply = wire.Reply.decode(got["reply"])
    assert reply.ok is False and "permission denied" in reply.error
    assert reply.state is None, "a refused client was shown the run's state"
    # The refused pause was not applied.
    main.wait_step(st["step"] + 3)
    assert main.state()["paused"] is False


def test_second_engine_on_a_live_run_refuses_and_changes_nothing(main, second):
    run_dir = main.run_dir
    code = second.wait_exit(START_TIMEOUT)
    assert code == 2, second.log()
    assert "another engine" in second.log() and "already running" in second.log()

    time.sleep(2.5 * FLUSH_EVERY_S)
    meta = reader_value(run_dir, lambda r: r.meta())
    for key in ("pid", "started", "status", "args", "run_id", "script"):
        assert meta.get(key) == main.meta_before_second.get(key), (
            f"the refused engine changed {key!r}"
        )
    evs = events_after(run_dir, 0)
    assert [e["message"] for e in evs if e["kind"] == wire.EV_RUN] == [
        f"run started: {RECIPES / 'ctl_main.py'} on cpu"
    ], "the refused engine wrote a run event"
    assert not any("stale" in e["message"] for e in evs), "the refused engine removed the socket"
    assert main.sock.exists()
    st = main.running()  # the first engine still serves its socket and trains
    main.wait_step(st["step"] + 2)


def test_cli_ctl_pause_step_lr_tensor_and_status(main, runs_dir):
    main.running()
    d = str(runs_dir)
    out = cli("--runs-dir", d, "ctl", "main", "pause")
    assert out.returncode == 0, out.stderr
    assert "ok: pause" in out.stdout and "PAUSED" in out.stdout
    s = main.state()["step"]

    out = cli("--runs-dir", d, "ctl", "main", "step", "3", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["ok"] is True and got["state"]["step"] == s + 3 and got["state"]["steps_left"] == 0

    out = cli("--runs-dir", d, "ctl", "main", "lr", "0.004", "--group", "1")
    assert out.returncode == 0, out.stderr
    assert "(group 1)" in out.stdout
    assert main.state()["lrs"][1] == pytest.approx(0.004, rel=1e-12)

    out = cli("--runs-dir", d, "ctl", "main", "lr", "0")
    assert out.returncode != 0 and "greater than zero" in out.stderr
    out = cli("--runs-dir", d, "ctl", "main", "step", "x")
    assert out.returncode != 0 and "whole number" in out.stderr

    out = cli(
        "--runs-dir",
        d,
        "ctl",
        "main",
        "tensor",
        "fc1.weight",
        "--expr",
        "x.t()[1:3, ::2]",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)["data"]
    ref = torch.empty(16, 8).t()[1:3, ::2]
    assert (data["shape"], data["stride"], data["storage_offset"]) == (
        list(ref.shape),
        list(ref.stride()),
        ref.storage_offset(),
    )

    out = cli("--runs-dir", d, "status", "main", "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["status"] == "paused" and shown["step"] == s + 3

    assert runs_status(runs_dir, "main") == "paused"

    out = cli("--runs-dir", d, "ctl", "main", "resume")
    assert out.returncode == 0, out.stderr
    assert "ok: resume" in out.stdout and "RUNNING" in out.stdout
    main.wait_step(s + 5)
    wait_for(lambda: runs_status(runs_dir, "main") == "running", 10, "`dltui runs` to say running")


# ---------------------------------------------------------------------------------------------
# engines of their own


def test_eval_without_val_loader_passes_over_the_training_data(noval):
    eng = noval
    try:
        eng.wait_step(3)
        st = eng.client.call("mode", mode="eval").state
        s = st["step"]
        wait_for(lambda: stored_max_step(eng.run_dir, "loss", wire.VAL) == s, 20, "the eval pass")
        assert stored_max_step(eng.run_dir, "acc", wire.VAL) == s

        # The recipe has no val data, so this val point can only come from the training data,
        # which announces a pass made with the model in eval mode.
        def eval_pass_lines() -> list[str]:
            rows = reader_value(eng.run_dir, lambda r: r.console(limit=10**6))
            return [line for *_, line in rows if "model.training=False" in line]

        lines = wait_for(eval_pass_lines, 10, "the eval pass's console line")
        assert lines[0].startswith("ctl_noval: pass over the training data")
        time.sleep(0.3)
        assert eng.state()["step"] == s and eng.state()["mode"] == "eval"
        eng.client.call("mode", mode="train")
        eng.wait_step(s + 2)
    finally:
        eng.kill()


def test_long_run_dir_path_works_and_stop_ends_the_run(long_run):
    eng, run_dir = long_run, long_run.run_dir
    assert len(str(run_dir / wire.CONTROL_SOCKET).encode()) > 120
    try:
        st = eng.client.call("status").state
        assert st["status"] == wire.RUNNING
        eng.wait_step(3)

        # stop: final checkpoint at the final step, status 'stopped', exit 0, socket gone.
        ev0 = eng.barrier()
        r = eng.client.call("stop")
        assert r.data == {"stopping": True} and r.state["status"] == "stopping"
        assert eng.wait_exit() == 0, eng.log()
        assert not eng.sock.exists(), "the socket file was left behind"
        with RunReader(run_dir) as rd:
            meta = rd.meta()
            assert rd.status() == wire.STOPPED
            final = meta["progress"]["step"]
            assert rd.step_range("loss")[1] == final
        ck = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
        assert ck["step"] == final
        kinds = [(e["kind"], e["message"]) for e in events_after(run_dir, ev0)]
        assert (
            wire.EV_CHECKPOINT,
            f"checkpoint 'last' at step {final} (stopped by request)",
        ) in kinds
        assert (wire.EV_STATUS, f"run stopped at step {final}") in kinds
        assert any(k == wire.EV_COMMAND and m.startswith("stop requested") for k, m in kinds)
        with pytest.raises(EngineGone):
            ControlClient(run_dir, timeout=5).request("status")
        assert runs_status(run_dir.parent, run_dir.name) == wire.STOPPED
    finally:
        eng.kill()


def _status_or_none(client: ControlClient) -> dict | None:
    try:
        return client.call("status").state
    except EngineGone:
        return None


def test_stale_socket_after_kill_then_resume_cleans_it(stale):
    eng, run_dir = stale, stale.run_dir
    runs = run_dir.parent
    resumed_pid = None
    try:
        eng.wait_step(3)
        c0 = eng.paused()["step"]
        assert (
            torch.load(Path(eng.client.call("checkpoint").data["path"]), weights_only=False)["step"]
            == c0
        )
        os.killpg(eng.proc.pid, signal.SIGKILL)
        eng.proc.wait(30)
        eng.client.close()
        assert eng.sock.exists(), "kill -9 should leave the socket file behind"

        t0 = time.monotonic()
        with pytest.raises(EngineGone, match="not running"):
            ControlClient(run_dir, timeout=30).request("status")
        assert time.monotonic() - t0 < 5, "a dead engine's socket made the client wait"
        with pytest.raises(ControlError):
            ControlClient(run_dir, timeout=30).call("pause")

        out = cli("--runs-dir", str(runs), "status", "stale", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"] == wire.CRASHED
        out = cli("--runs-dir", str(runs), "status", "stale")
        assert "CRASHED" in out.stdout

        out = cli("--runs-dir", str(runs), "ctl", "stale", "pause")
        assert out.returncode != 0
        assert "not running" in out.stderr and "crashed" in out.stderr

        out = cli(
            "--runs-dir",
            str(runs),
            "train",
            "--detach",
            "--resume",
            "stale",
            str(RECIPES / "ctl_main.py"),
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "run stale started in the background" in out.stdout
        resumed_pid = int(out.stdout.split("(pid ")[1].split(")")[0])
        client = ControlClient(run_dir, timeout=60)
        try:
            # (`dltui train --detach --resume` returns once the new engine answers.)
            st = wait_for(lambda: _status_or_none(client), START_TIMEOUT, "the resumed engine")
            assert st["step"] >= c0 and st["paused"] is False
            wait_for(
                lambda: client.call("status").state["step"] >= c0 + 3, 30, "the resumed run to step"
            )
        finally:
            client.close()
        # The new engine's pid reaches the store a flush (~0.25 s) after it starts stepping; until
        # then readers see the dead engine's pid and say 'crashed' (reported as a race).
        wait_for(
            lambda: reader_value(run_dir, lambda r: r.meta()).get("pid") == resumed_pid,
            10,
            "the resumed engine's pid in the store",
        )
        out = cli("--runs-dir", str(runs), "status", "stale", "--json")
        assert json.loads(out.stdout)["status"] == "running"
        msgs = [e["message"] for e in events_after(run_dir, 0)]
        assert "removed a stale control socket left by a dead engine" in msgs
        assert f"resumed from checkpoint at step {c0}" in msgs
        pts = wait_for(
            lambda: (p := stored_points(run_dir, "loss")) and max(p) >= c0 + 3 and p,
            10,
            "the resumed steps in the store",
        )
        assert all(pts[k] is not None for k in range(c0 + 1, c0 + 3))
    finally:
        eng.kill()
        if resumed_pid is not None:
            try:
                os.killpg(resumed_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_detach_resume_over_a_stale_socket_reports_an_engine_that_fails(tmp_path):
    runs = tmp_path / "runs"
    run_dir = runs / "crashed"
    run_dir.mkdir(parents=True, mode=0o700)
    with sqlite3.connect(run_dir / "run.sqlite") as db:  # a run store, but no checkpoint
        db.executescript(wire.SCHEMA)
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(run_dir / wire.CONTROL_SOCKET))  # what a killed engine leaves behind
    leftover.close()
    out = cli(
        "--runs-dir",
        str(runs),
        "train",
        "--detach",
        "--resume",
        "crashed",
        str(RECIPES / "ctl_main.py"),
    )
    log = run_dir / "engine.log"
    wait_for(
        lambda: log.exists() and "no checkpoint" in log.read_text(),
        START_TIMEOUT,
        "the engine to refuse the resume",
    )
    assert out.returncode == 2, out.stdout
    assert "no checkpoint to resume from" in out.stderr
    assert "started in the background" not in out.stdout
