"""Signals and process lifetime of a real engine (DESIGN.md, "Process model and lifetime").

SIGHUP is ignored by a detached engine; SIGINT finishes the step, checkpoints and stops (twice:
stops at once); SIGTERM checkpoints then exits; SIGKILL leaves a sound store that reads as
crashed; --pause-on-anomaly holds the run on a NaN loss or a gradient spike.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dltui.run import wire
from dltui.run.client import ControlClient, EngineGone
from dltui.run.reader import RunReader, pid_alive

sys.path.append(str(Path(__file__).parent / "recipes"))
from ctl_harness import (  # noqa: E402  (tests/recipes holds the shared harness)
    CLI,
    ENV,
    RECIPES,
    START_TIMEOUT,
    Engine,
    cli,
    events_after,
    prestart,
    reader_value,
    stored_points,
    wait_events,
    wait_for,
)

# Step 1 is quick (by then the signal handlers are installed); from step 2 on every step sleeps
# 1 s, so a signal sent just after a step begins lands in the middle of it.
SLOW = {"CTL_SLOW_FROM": "2", "CTL_SLOW_S": "1.0"}


class DetachedCli:
    """`dltui train --detach ctl_main.py`, started in the background with the other engines."""

    def __init__(self, runs: Path) -> None:
        self.runs = runs
        runs.mkdir(parents=True)
        self.out, self.err = runs.parent / "detach.out", runs.parent / "detach.err"
        argv = [*CLI, "--runs-dir", str(runs), "train", "--detach", str(RECIPES / "ctl_main.py")]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=ENV
            )

    def wait(self) -> subprocess.CompletedProcess:
        rc = self.proc.wait(START_TIMEOUT)
        return subprocess.CompletedProcess(
            self.proc.args, rc, self.out.read_text(), self.err.read_text()
        )

    def kill(self) -> None:
        """End the CLI if still running, and the engine it started (its own session)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        m = re.search(r"\(pid (\d+)\)", self.out.read_text())
        if m:
            try:
                os.killpg(int(m.group(1)), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module", autouse=True)
def pool(request, tmp_path_factory):
    """Every engine this module's selected tests need, started together (see ctl_harness)."""
    runs = tmp_path_factory.mktemp("life") / "runs"
    engines = prestart(
        request,
        {
            "hup": lambda: Engine("ctl_main.py", runs / "hup"),
            "int_once": lambda: Engine("ctl_main.py", runs / "int-once", env=SLOW),
            "int_twice": lambda: Engine("ctl_main.py", runs / "int-twice", env=SLOW),
            "int_late": lambda: Engine(
                "ctl_main.py", runs / "int-late", env={**SLOW, "CTL_SLOW_PRINTS": "20000"}
            ),
            "detached": lambda: DetachedCli(runs.parent / "detach-runs"),
            "anomaly": lambda: Engine(
                "ctl_anomaly.py", runs / "anomaly", "--pause-on-anomaly", "--stats-every", "1"
            ),
        },
    )
    yield engines
    for eng in engines.values():
        eng.kill()


@pytest.fixture
def hup(pool) -> Engine:
    return pool["hup"].wait_up()


@pytest.fixture
def int_once(pool) -> Engine:
    return pool["int_once"].wait_up()


@pytest.fixture
def int_twice(pool) -> Engine:
    return pool["int_twice"].wait_up()


@pytest.fixture
def int_late(pool) -> Engine:
    return pool["int_late"].wait_up()


@pytest.fixture
def detached(pool) -> DetachedCli:
    return pool["detached"]


@pytest.fixture
def anomaly(pool) -> Engine:
    return pool["anomaly"].wait_up()


def inside_a_long_step(eng: Engine) -> int:
    """Wait until the engine has just begun a long step; returns the steps done before it.

    The recipe prints "step N sleeps" as step N begins. The step in progress now may be nearly
    over, so wait for the one after it: a signal sent as soon as that one begins lands early in
    its second.
    """
    step = eng.state()["step"] + 2
    wait_for(lambda: f"ctl_main: step {step} sleeps" in eng.log(), 30, f"step {step} to begin")
    assert eng.state()["step"] == step - 1, "missed the start of the step"
    return step - 1


def load_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def final_state(run_dir: Path) -> tuple[str, int, int]:
    """(status, the engine's last published step, the last step with a stored loss)."""
    with RunReader(run_dir) as r:
        meta = r.meta()
        return r.status(meta), meta["progress"]["step"], r.step_range("loss")[1]


def assert_clean_stop(eng: Engine, reason: str) -> int:
    """Exit 0, status stopped, socket gone, final checkpoint at the final step; returns it."""
    code = eng.wait_exit()
    assert code == 0, eng.log()
    assert not eng.sock.exists(), "the socket file was left behind"
    status, published, last_loss = final_state(eng.run_dir)
    assert status == wire.STOPPED
    assert published == last_loss, "the last step's scalars are missing"
    assert load_checkpoint(eng.run_dir)["step"] == last_loss
    msgs = [(e["kind"], e["step"], e["message"]) for e in events_after(eng.run_dir, 0)]
    assert (
        wire.EV_CHECKPOINT,
        last_loss,
        f"checkpoint 'last' at step {last_loss} ({reason})",
    ) in msgs
    assert (wire.EV_STATUS, last_loss, f"run stopped at step {last_loss}") in msgs
    return last_loss


def test_detached_engine_ignores_sighup_and_sigterm_checkpoints_then_exits(hup):
    eng = hup
    eng.wait_step(2)
    os.kill(eng.proc.pid, signal.SIGHUP)
    s = eng.state()["step"]
    eng.wait_step(s + 5)  # still training after the hang-up
    assert eng.proc.poll() is None
    assert eng.state()["status"] == wire.RUNNING

    os.kill(eng.proc.pid, signal.SIGTERM)
    final = assert_clean_stop(eng, "terminated (SIGTERM)")
    assert final >= s + 5


def test_sigint_once_finishes_the_step_checkpoints_and_stops(int_once):
    eng = int_once
    done = inside_a_long_step(eng)
    os.kill(eng.proc.pid, signal.SIGINT)
    final = assert_clean_stop(eng, "interrupted (SIGINT)")
    assert final == done + 1, "SIGINT should let the step in progress finish, and no more"
    assert "stopping after this step" in eng.log()


def test_sigint_twice_stops_at_once(int_twice):
    eng = int_twice
    done = inside_a_long_step(eng)
    os.kill(eng.proc.pid, signal.SIGINT)
    # Wait until the first one has been handled: two signals before it would count as one.
    wait_for(lambda: "stopping after this step" in eng.log(), 5, "the first SIGINT's message")
    os.kill(eng.proc.pid, signal.SIGINT)
    assert eng.wait_exit() == 0, eng.log()
    status, published, last_loss = final_state(eng.run_dir)
    assert status == wire.STOPPED
    assert last_loss == done, "the second SIGINT should not let the step in progress finish"
    assert not (eng.run_dir / "checkpoints" / "last.pt").exists(), "stop-now still checkpointed"
    kinds = [e["kind"] for e in events_after(eng.run_dir, 0)]
    assert wire.EV_CHECKPOINT not in kinds and wire.EV_STATUS in kinds
    assert not eng.sock.exists()


def test_second_sigint_during_shutdown_still_ends_cleanly(int_late):
    """A second Ctrl-C after the last step (while the engine writes its end) changes nothing."""
    eng = int_late
    inside_a_long_step(eng)
    os.kill(eng.proc.pid, signal.SIGINT)
    # The step ends by printing 20,000 lines: the store has plenty to write as the run ends.
    wait_for(lambda: "says 19999" in eng.log(), 60, "the last step to finish")
    os.kill(eng.proc.pid, signal.SIGINT)
    code = eng.wait_exit()
    status = final_state(eng.run_dir)[0]
    log = eng.log()
    tb = log[log.find("Traceback") :][:2500] if "Traceback" in log else ""
    assert (code, status, tb) == (0, wire.STOPPED, ""), tb


def test_train_detach_returns_at_once_in_its_own_session_and_sigkill_leaves_a_sound_store(detached):
    out, runs = detached.wait(), detached.runs
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"run (\S+) started in the background \(pid (\d+)\)", out.stdout)
    assert m, out.stdout
    run_id, pid = m.group(1), int(m.group(2))
    try:
        assert f"dltui attach {run_id}" in out.stdout
        run_dir = runs / run_id
        assert pid_alive(pid), "the engine did not outlive `dltui train --detach`"
        assert os.getsid(pid) == pid != os.getsid(0), "the engine is not in a session of its own"
        meta = wait_for(
            lambda: (m := reader_value(run_dir, lambda r: r.meta())).get("pid") and m,
            10,
            "the engine's meta",
        )
        assert meta["detached"] is True and meta["pid"] == pid

        client = ControlClient(run_dir, timeout=60)
        try:
            wait_for(
                lambda: client.call("status").state["step"] >= 3, 30, "the detached run to step"
            )
        finally:
            client.close()

        wait_for(lambda: max(stored_points(run_dir, "loss"), default=0) >= 3, 10, "stored steps")
        os.kill(pid, signal.SIGKILL)
        # Its parent (the CLI) is gone, so init reaps it; until then kill(pid, 0) still succeeds.
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20, "init to reap the killed engine")
        with RunReader(run_dir) as r:
            assert r.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert r.meta()["status"] == wire.RUNNING  # never closed...
            assert r.status() == wire.CRASHED  # ...so a reader derives 'crashed'
            assert r.step_range("loss")[1] >= 3
        assert (run_dir / wire.CONTROL_SOCKET).exists()
        try:
            ControlClient(run_dir, timeout=5).request("status")
            raise AssertionError("a killed engine answered")
        except EngineGone:
            pass
        out = cli("--runs-dir", str(runs), "runs", "--json")
        assert out.returncode == 0, out.stderr
        assert {r["id"]: r["status"] for r in json.loads(out.stdout)}[run_id] == wire.CRASHED
        out = cli("--runs-dir", str(runs), "runs")
        assert re.search(rf"{re.escape(run_id)}\s+crashed", out.stdout), out.stdout
    finally:
        detached.kill()


def test_pause_on_anomaly_nan_loss_and_gradient_spike(anomaly):
    eng = anomaly
    try:
        # NaN loss at step 10: the run holds right after that step.
        wait_for(lambda: eng.state()["paused"], 30, "the NaN loss to pause the run")
        st = eng.state()
        assert st["step"] == 10 and st["paused"] is True
        time.sleep(0.3)
        assert eng.state()["step"] == 10
        alert = wait_events(eng.run_dir, 0, wire.EV_ALERT, 1)[0]
        assert alert["step"] == 10 and "at step 10" in alert["message"]
        assert "loss is nan" in alert["message"] and "paused" in alert["message"]
        assert alert["level"] == "warning" and alert["data"]["paused"] is True
        loss = stored_points(eng.run_dir, "loss")
        assert loss[10] is None or loss[10] != loss[10]  # NaN is stored as NULL

        # A spike in fc2.weight's gradient at step 30 holds it again and names the layer.
        first = alert["id"]
        eng.client.call("resume")
        wait_for(
            lambda: eng.state()["step"] >= 30 and eng.state()["paused"],
            30,
            "the spike to pause the run",
        )
        assert eng.state()["step"] == 30
        spikes = wait_events(eng.run_dir, first, wire.EV_ALERT, 1)
        assert [e["data"]["layer"] for e in spikes] == ["fc2.weight"], spikes
        spike = spikes[0]
        assert (
            spike["step"] == 30
            and "gradient norm spike in fc2.weight at step 30" in spike["message"]
        )
        assert spike["data"]["paused"] is True
        # Readers (`dltui status`, the dashboard) see it too, once the progress is published.
        wait_for(
            lambda: reader_value(eng.run_dir, lambda r: r.status()) == "paused", 5, "status paused"
        )
    finally:
        eng.kill()
