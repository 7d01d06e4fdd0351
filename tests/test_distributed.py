"""torchrun (issue 10): 2 ranks on CPU with gloo are one run, steered at the same step everywhere.

Two real launches through the CLI (`dltui train --nproc-per-node 2 --detach`): a recipe run that
several tests steer in order (pause / step 3, LR, eval, then SIGTERM to rank 1), and a DDP script
run that is stopped with `ctl stop`. Each ends with no process left.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
from conftest import REPO, TEST_RECIPES, events_of, run_cli

from dltui.run.options import launch_error, parse, torchrun_argv
from dltui.run.ranks import straggler
from dltui.run.reader import RunReader, pid_alive

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)

WAIT_S = 45.0
PG_TIMEOUT_S = 10.0
SCRIPT = REPO / "tests" / "scripts" / "ddp_script.py"


@dataclass
class DistRun:
    run_dir: Path
    cwd: Path

    def cli(self, *args: Any) -> Any:
        done = run_cli(*args, cwd=self.cwd)
        assert done.returncode == 0, done.stderr
        return done

    def ctl(self, *words: str) -> dict:
        return json.loads(self.cli("ctl", self.run_dir.name, *words, "--json").stdout)

    def status(self) -> dict:
        return json.loads(self.cli("status", self.run_dir.name, "--json").stdout)

    def meta(self) -> dict:
        with RunReader(self.run_dir) as r:
            return r.meta()

    def until(self, what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def ranks(self) -> dict[int, dict]:
        return {r["rank"]: r for r in self.status()["ranks"]}

    def commands(self, cmd: str) -> dict[int, list[dict]]:
        """The command events of `cmd`, by rank (each rank records the step it applied it at)."""
        out: dict[int, list[dict]] = {}
        for ev in events_of(self.run_dir, "command"):
            data = ev["data"] or {}
            if data.get("cmd") == cmd:
                out.setdefault(data.get("rank", 0), []).append(ev)
        return out

    def applied(self, cmd: str, n: int = 1) -> dict[int, list[dict]]:
        """Wait until both ranks have recorded `cmd` n times; its events by rank."""

        def both() -> dict[int, list[dict]] | None:
            got = self.commands(cmd)
            return got if all(len(got.get(r, [])) >= n for r in (0, 1)) else None

        return self.until(f"both ranks to apply {cmd!r} ({n})", both)

    def pids(self) -> set[int]:
        """The launcher (torchrun) and every rank."""
        meta = self.meta()
        found = {meta.get("pid"), meta.get("launcher_pid")}
        found |= {r.get("pid") for r in meta.get("ranks") or []}
        return {p for p in found if isinstance(p, int)}

    def wait_gone(self, pids: set[int]) -> None:
        self.until("every process to end", lambda: not any(pid_alive(p) for p in pids))


def start(tmp: Path, file: Path, *opts: str) -> DistRun:
    runs = tmp / "runs"
    done = run_cli(
        "train", "--nproc-per-node", "2", "--detach", "--runs-dir", runs, *opts, file, cwd=tmp
    )
    assert done.returncode == 0, done.stderr + done.stdout
    (run_dir,) = [d for d in runs.iterdir() if d.is_dir()]  # listed once, for both ranks
    return DistRun(run_dir, tmp)


def kill_all(run: DistRun, pids: set[int]) -> None:
    for p in pids:
        if pid_alive(p):
            os.kill(p, signal.SIGKILL)


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory: pytest.TempPathFactory):
    # A short process-group timeout: a pause longer than it must not trip it (ranks wait
    # between steps, outside collectives).
    run = start(
        tmp_path_factory.mktemp("ddp"),
        TEST_RECIPES / "ddp_recipe.py",
        *("--dist-timeout", str(PG_TIMEOUT_S)),
    )
    pids: set[int] = set()
    try:
        run.until(
            "both ranks to train",
            lambda: [r.get("status") for r in run.meta().get("ranks") or []] == ["running"] * 2,
        )
        pids = run.pids()
        yield run
    finally:
        kill_all(run, pids | run.pids())


def test_one_run_both_ranks_advancing(recipe_run: DistRun) -> None:
    st = recipe_run.status()
    assert st["world_size"] == 2 and st["status"] == "running"
    first = recipe_run.ranks()
    assert sorted(first) == [0, 1]
    assert {r["device"] for r in first.values()} == {"cpu"}
    recipe_run.until(
        "both ranks to advance",
        lambda: all(r["step"] > first[k]["step"] for k, r in recipe_run.ranks().items()),
    )
    console = [line for _, _, _, line in RunReader(recipe_run.run_dir).console()]
    assert "recipe loaded on rank 0 of 2" in console
    assert "[rank 1] recipe loaded on rank 1 of 2" in console  # rank 1's, tagged


def test_pause_then_step_3_moves_both_ranks_by_3(recipe_run: DistRun) -> None:
    recipe_run.ctl("pause")
    paused = recipe_run.applied("pause")
    at = {rank: evs[-1]["step"] for rank, evs in paused.items()}
    assert at[0] == at[1], at  # the same step on both ranks
    p = at[0]
    held_since = time.monotonic()
    recipe_run.until(
        "both ranks held", lambda: {r["step"] for r in recipe_run.ranks().values()} == {p}
    )
    time.sleep(max(0.0, PG_TIMEOUT_S + 1 - (time.monotonic() - held_since)))  # past the timeout
    reply = recipe_run.ctl("step", "3")
    assert reply["ok"] and reply["state"]["step"] == p + 3
    ranks = recipe_run.until(
        "both ranks at the 3rd step",
        lambda: (r := recipe_run.ranks()) and all(x["step"] == p + 3 for x in r.values()) and r,
    )
    assert all(x["status"] == "running" for x in ranks.values())  # held, not ended
    assert recipe_run.status()["status"] == "paused"
    steps = recipe_run.applied("step")
    assert [e["step"] for e in steps[0]] == [e["step"] for e in steps[1]] == [p]


def test_lr_change_lands_on_both_ranks_at_one_step(recipe_run: DistRun) -> None:
    recipe_run.ctl("resume")  # running: the change is agreed for the next step
    reply = recipe_run.ctl("lr", "*0.5")
    assert reply["ok"], reply
    lr = recipe_run.applied("lr")
    (e0,), (e1,) = lr[0], lr[1]
    assert e0["step"] == e1["step"]
    assert e0["data"]["after"] == e1["data"]["after"] == [0.05]
    recipe_run.until(
        "both ranks to report the new LR",
        lambda: all(r["lrs"] == [0.05] for r in recipe_run.ranks().values()),
    )


def test_eval_switch_on_both_ranks(recipe_run: DistRun) -> None:
    recipe_run.ctl("mode", "eval")
    modes = recipe_run.applied("mode")
    step = modes[0][0]["step"]
    assert modes[1][0]["step"] == step
    with RunReader(recipe_run.run_dir) as r:
        recipe_run.until("the val pass", lambda: r.last("loss", "val"))
    held = recipe_run.ranks()
    assert {x["step"] for x in held.values()} == {step}  # training held on both
    recipe_run.ctl("mode", "train")
    back = recipe_run.applied("mode", 2)
    assert back[0][1]["step"] == back[1][1]["step"] == step


def test_sigterm_to_one_rank_stops_both_with_one_checkpoint(recipe_run: DistRun) -> None:
    pids = recipe_run.pids()
    os.kill(_rank_pid(recipe_run, 1), signal.SIGTERM)
    recipe_run.until("the run to stop", lambda: recipe_run.meta().get("status") == "stopped")
    recipe_run.wait_gone(pids)
    try:
        stops = recipe_run.applied("stop")
    except AssertionError:
        raise AssertionError(events_of(recipe_run.run_dir)[-12:]) from None
    (s0,), (s1,) = stops[0], stops[1]
    assert s0["step"] == s1["step"]
    assert "rank 1" in s0["message"] and "SIGTERM" in s0["message"]
    cks = events_of(recipe_run.run_dir, "checkpoint")
    assert [e["step"] for e in cks if "SIGTERM" in e["message"]] == [s0["step"]]
    assert (recipe_run.run_dir / "checkpoints" / "last.pt").exists()
    assert all(r["step"] == s0["step"] for r in recipe_run.meta()["ranks"])


def test_dashboard_system_panel_shows_the_ranks(recipe_run: DistRun) -> None:
    """The real dashboard on the (now ended) distributed run: its System panel's Ranks view."""
    from dltui.tui.app import make_app
    from dltui.tui.widgets.system import SystemPanel

    async def look() -> str:
        app = make_app(recipe_run.run_dir)
        async with app.run_test(size=(160, 45)) as pilot:
            panel = app.query_one(SystemPanel)
            deadline = time.monotonic() + 20
            while "rank 1" not in (text := str(panel.render())):
                assert time.monotonic() < deadline, text
                await pilot.pause(0.05)
            return text

    text = asyncio.run(look())
    assert "2 ranks" in text and "slowest rank" in text
    assert "rank 0" in text and "rank 1" in text


def test_straggler_and_rank_lines() -> None:
    from dltui.tui.widgets.ranks import rank_lines

    ranks = [
        {"rank": 1, "step": 10, "lrs": [0.1], "host": "a", "device": "cuda:1", "step_time_s": 0.05},
        {"rank": 0, "step": 10, "lrs": [0.1], "host": "a", "device": "cuda:0", "step_time_s": 0.04},
    ]
    s = straggler(ranks)
    assert (s.rank, s.fastest_rank, s.lagging) == (1, 0, True)
    assert s.as_json()["ratio"] == 1.25
    lines = [str(t) for t in rank_lines({"ranks": ranks, "world_size": 2})]
    assert lines[0].startswith("2 ranks  slowest rank 1 50.0 ms/step, fastest rank 0 40.0 ms")
    assert lines[1].startswith(" rank 0") and lines[2].startswith(" rank 1")  # rank order
    assert rank_lines({"ranks": ranks[:1]}) == [] and rank_lines({}) == []
    assert straggler(ranks[:1]) is None


def _rank_pid(run: DistRun, rank: int) -> int:
    return next(r["pid"] for r in run.meta()["ranks"] if r["rank"] == rank)


def test_script_run_lr_and_stop(tmp_path: Path) -> None:
    """A DDP script (its own process group): LR at one step on both, `ctl stop` ends both."""
    run = start(tmp_path, SCRIPT)
    pids: set[int] = set()
    try:
        run.until("both ranks to step", lambda: all(r["step"] > 0 for r in run.ranks().values()))
        pids = run.pids()
        assert len(pids) == 3
        assert run.ctl("lr", "*0.5")["ok"]
        lr = run.applied("lr")
        assert lr[0][0]["step"] == lr[1][0]["step"]
        stopped = run.ctl("stop")
        assert stopped["ok"]
        run.wait_gone(pids)
        stops = run.applied("stop")
        assert stops[0][0]["step"] == stops[1][0]["step"]
        assert run.meta()["status"] == "stopped"
        cks = events_of(run.run_dir, "checkpoint")
        assert [e["step"] for e in cks] == [stops[0][0]["step"]]  # written once, by rank 0
    finally:
        kill_all(run, pids)


# -- the launcher's options (no engine) ------------------------------------------------------


def test_torchrun_command_line() -> None:
    from dltui.tui.cli import build_parser

    p = build_parser()
    one = p.parse_args(["train", "--nproc-per-node", "2", "f.py"])
    assert torchrun_argv(one, "py") == [
        *("py", "-m", "dltui.engine.distributed", "--nproc-per-node", "2", "--standalone"),
        *("-m", "dltui.engine"),
    ]
    two = p.parse_args(
        ["train", "--nproc-per-node", "4", "--nnodes", "2", "--node-rank", "1"]
        + ["--rdzv-endpoint", "node0:29400", "f.py"]
    )
    argv = torchrun_argv(two, "py")
    assert argv[argv.index("--master-addr") + 1] == "node0"
    assert argv[argv.index("--master-port") + 1] == "29400"
    assert argv[argv.index("--node-rank") + 1] == "1"
    assert launch_error(two) is None
    bad = p.parse_args(["train", "--nproc-per-node", "2", "--nnodes", "2", "f.py"])
    assert "--rdzv-endpoint" in launch_error(bad)
    assert parse(["--run-dir", "x", "f.py"]).recipe == "f.py"


def test_nnodes_without_endpoint_is_one_line(tmp_path: Path) -> None:
    f = TEST_RECIPES / "ddp_recipe.py"
    done = run_cli("train", "--nproc-per-node", "2", "--nnodes", "2", f, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--rdzv-endpoint HOST:PORT" in done.stderr
    assert not (tmp_path / "runs").exists()


# -- the agreed-step mechanism, in process (a real TCPStore and Gate; no ranks) ---------------


@pytest.fixture
def agent(tmp_path: Path):
    import socket

    from dltui.engine.distributed import Agent, RankStore, World

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    master = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    world = World(rank=1, world_size=2, local_rank=1, addr="127.0.0.1", port=port)
    a = Agent(world, tmp_path, RankStore(tmp_path, world), probe=None)
    yield a
    del master


def test_a_command_for_a_later_step_holds_the_gate_there_then_applies(agent) -> None:
    from types import SimpleNamespace

    from dltui.engine.gate import Gate

    gate = Gate()
    loop = SimpleNamespace(step=5, gate=gate, lrs=lambda: [0.1])
    applied: list[int] = []
    agent.at(loop, 7, lambda lp: applied.append(lp.step), None)
    assert (gate.paused, gate.step_target, applied) == (True, 7, [])  # runs on to step 7
    loop.step = 6
    agent.on_idle(loop)
    assert applied == []
    loop.step = 7
    agent.on_idle(loop)  # the gate holds at 7 and calls on_idle: the command applies
    assert applied == [7] and (gate.paused, gate.step_target) == (False, None)  # its own state


def test_a_rank_past_the_step_applies_late_and_says_so(agent) -> None:
    """Ranks that never meet in a collective (a script without DDP) can pass the agreed step:
    the command applies there, with an alert (it was dropped silently before)."""
    from types import SimpleNamespace

    from dltui.engine.gate import Gate

    loop = SimpleNamespace(step=9, gate=Gate(), lrs=lambda: [0.1])
    applied: list[int] = []
    agent.at(loop, 7, lambda lp: applied.append(lp.step), None)
    assert applied == [9]
    _, events = agent.store.take()
    assert any("after step 7 where it was due" in e[4] for e in events)


def test_a_bad_recipe_under_torchrun_is_one_line(tmp_path: Path) -> None:
    """Every rank finds the same mistake: one says it, torchrun adds no traceback, exit 2."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch\nmodel = torch.nn.Linear(2, 2)\noptimizer = 3\n"
        "loss_fn = torch.nn.MSELoss()\ntrain_loader = []\n"
    )
    done = run_cli("train", "--nproc-per-node", "2", "--headless", bad.name, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip() == "dltui: bad.py: `optimizer` is an int, not a torch.optim.Optimizer."
    )
    assert not any((tmp_path / "runs").iterdir())  # the run that never began left nothing


def test_the_agent_costs_a_step_nothing(agent) -> None:
    """No per-step hook: the loop calls only observers that implement one (loop.hooks_of)."""
    from dltui.engine.loop import hooks_of

    for hook in ("on_before_optimizer_step", "on_step_end"):
        assert hooks_of([agent], hook, {}) == []
    assert [cb for cb, _ in hooks_of([agent], "on_idle", {})] == [agent]
