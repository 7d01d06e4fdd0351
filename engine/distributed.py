"""torchrun: a distributed run is one dltui run (rank 0 owns the store and socket; every rank
applies each command at the same step).

Design (README "Several GPUs and nodes (torchrun)" says it for users):

- `dltui train --nproc-per-node N FILE` runs `python -m torch.distributed.run ... -m dltui.engine
  --run-dir RUN ...`: the launcher picks the run directory and every rank gets it. Rank 0 creates
  it, owns its store, lock and control socket. The other ranks write nothing there.
- Side channel: the rendezvous TCPStore torchrun already runs (MASTER_ADDR:MASTER_PORT), under the
  prefix "dltui/". It is used only from background threads, and from the training thread only when
  a command is being decided: no collective and no syscall per step.
- Reports: every REPORT_S each rank > 0 sets "rank/R" (step, LRs, step time, host, device,
  memory) and queues its console lines, alerts and applied commands in "out/R/K"; rank 0's
  collector thread records them (meta "ranks", console lines tagged "[rank R]", events).
- Commands: rank 0's control server takes them as always, but a steering command (pause,
  resume, step, lr, mode, checkpoint, stop) is decided on rank 0's training thread at a step
  boundary s: it applies at S = s when every rank is held there (paused or in eval: none can pass
  s), else at S = s + 1. Rank 0 publishes "cmd/N" = (S, command) and waits until every rank's
  follower thread has acknowledged it; a follower acknowledges after queueing the command in its
  own gate. Under DDP no rank can finish step s + 1 before rank 0 has started it (the gradient
  all-reduce needs all ranks), so every rank meets S with the command already queued. A rank
  short of S runs on to S and holds there (the gate's own step target), applies the command, and
  goes on: the same command at the same step everywhere, one TCPStore round trip per command.
- Pauses wait in the gate, between steps, outside any collective: no gloo/NCCL timeout fires
  however long a pause lasts.
- Stop: from `ctl stop`, or SIGINT/SIGTERM to any rank (a rank > 0 asks rank 0), is a command
  like the others: every rank stops at the same step, rank 0 writes the one checkpoint.
- Recipes (engine/ddp.py): the engine inits the process group (NCCL on CUDA, else gloo) before
  the recipe is loaded, gives the loaders a DistributedSampler unless the recipe did (set_epoch
  each epoch) and wraps the model in DDP for its forward only (the loop, checkpoints and stats keep the plain
  module: checkpoints load with or without torchrun). Resume: rank 0 reads the checkpoint and
  broadcasts it. Scripts keep their own init_process_group and DDP.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from dltui.run import wire
from dltui.run.reader import DB_NAME

from .ddp import sampler_of

PREFIX = "dltui/"
REPORT_S = 0.5  # how often ranks report and rank 0 records them
FOLLOW_POLL_S = 0.01  # how often a rank > 0 looks for a new command (a background thread)
ACK_TIMEOUT_S = 30.0  # how long rank 0 waits for every rank to queue a command
FINAL_WAIT_S = 10.0  # at the end, how long rank 0 waits for the other ranks' last reports
STORE_TIMEOUT_S = 60.0
FORWARDED = (wire.EV_COMMAND, wire.EV_ALERT, wire.EV_ERROR)  # a rank's events rank 0 records
STEERING = ("pause", "resume", "step", "lr", "mode", "checkpoint", "stop")


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job (from torchrun's environment)."""

    rank: int
    world_size: int
    local_rank: int
    addr: str
    port: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def world_from_env(env: Any = None) -> World | None:
    """The torchrun job this engine is a rank of, or None outside torchrun (torch-free)."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" not in env or "RANK" not in env or "MASTER_ADDR" not in env:
        return None
    return World(
        rank=int(env["RANK"]),
        world_size=int(env.get("WORLD_SIZE", "1")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        addr=env["MASTER_ADDR"],
        port=int(env["MASTER_PORT"]),
    )


def connect(world: World) -> Any:
    """A client of torchrun's rendezvous store, keys under "dltui/" (one per thread: a blocking
    wait holds its connection)."""
    import torch.distributed as dist

    store = dist.TCPStore(
        world.addr,
        world.port,
        is_master=False,
        timeout=timedelta(seconds=STORE_TIMEOUT_S),
        wait_for_workers=False,
    )
    return dist.PrefixStore(PREFIX, store)


def _has(store: Any, key: str) -> bool:
    return bool(store.check([key]))


# -- ranks > 0: a store that reports to rank 0 --------------------------------------------------
class RankStore:
    """A rank > 0's stand-in for the run store: nothing is written here; console lines and the
    events rank 0 should record are queued for the reporter thread."""

    def __init__(self, run_dir: Path, world: World) -> None:
        self.path = Path(run_dir) / DB_NAME
        self.world = world
        self.status_written: str | None = None
        self.trouble = None
        self.device: str | None = None
        self._lock = threading.Lock()
        self._console: deque = deque(maxlen=10_000)
        self._events: deque = deque(maxlen=1_000)
        self.closed = threading.Event()
        self.system_latest: dict[str, float] = {}

    def start(self) -> None: ...
    def flush(self, timeout: float = 30.0) -> None: ...
    def params(self, rows: Any) -> None: ...
    def layer_stats(self, step: int, rows: Any) -> None: ...
    def histogram(self, *args: Any) -> None: ...
    def scalars(self, *args: Any) -> None: ...
    def scalar_steps(self, *args: Any) -> None: ...
    def system(self, wall: float, values: dict) -> None:
        self.system_latest = values  # the sampler's, ~1 Hz: this rank's GPU goes in its report

    def truncate_after(self, step: int) -> None: ...

    def set_meta(self, **values: Any) -> None:
        if isinstance(values.get("device"), str) and values["device"] != "?":
            self.device = values["device"]

    def event(
        self,
        kind: str,
        message: str,
        step: int | None = None,
        level: str = "info",
        data: Any = None,
    ) -> None:
        if kind in FORWARDED or level in ("warning", "error"):
            with self._lock:
                self._events.append([time.time(), step, kind, level, message, data])

    def console(self, stream: str, line: str, wall: float | None = None) -> None:
        with self._lock:
            self._console.append([wall or time.time(), stream, line])

    def take(self) -> tuple[list, list]:
        with self._lock:
            c, e = list(self._console), list(self._events)
            self._console.clear()
            self._events.clear()
        return c, e

    def close(self, status: str | None = None, **meta: Any) -> None:
        self.status_written = status
        self.closed.set()


# -- the agent: the same on every rank ---------------------------------------------------------
@dataclass
class _Pending:
    at: int
    fn: Any
    fut: Future | None  # rank 0: the control server's reply waits on it


class Agent:
    """Applies commands at an agreed step (every rank), reports this rank, and on rank 0 decides
    and records. A loop callback (engine/loop.py's hooks, torch-free here): on_idle (the gate's
    held loop), on_epoch_start (set_epoch), on_run_end. It has no per-step hook at all, so the
    loop (hooks_of) never calls it during a step; the other no-ops are there for callers that
    call every callback's hook directly."""

    part = "distributed agent"

    def __init__(self, world: World, run_dir: Path, store: Any, probe: Any) -> None:
        self.world = world
        self.run_dir = Path(run_dir)
        self.store = store  # the RunStore on rank 0, a RankStore elsewhere
        self.probe = probe
        self.loop: Any = None
        self.server: Any = None
        self.pending: list[_Pending] = []
        self.saved: tuple[bool, int | None] | None = None  # the gate's own state while we hold
        self.seq = 0
        self.host = socket.gethostname()
        self.status = wire.RUNNING
        self.final: dict[int, dict] = {}
        self.dead: set[int] = set()  # ranks found gone without a word
        self._seen = dict.fromkeys(range(1, world.world_size), 0)  # rank 0: outputs recorded
        self.stop_asked: str | None = None  # rank > 0: a stop to ask rank 0 for
        self.stopping = False  # rank 0: a stop of every rank is decided or on its way
        self.ranks: list[dict] = []  # rank 0: every rank's latest report
        self._nudge = threading.Event()  # report now (a command was applied)
        self._report_lock = threading.Lock()
        self._final_sent = False
        self._alive = True
        self._threads: list[threading.Thread] = []
        self._chan = connect(world)  # the training thread's (commands) and the end's

    # -- hooks ---------------------------------------------------------------------------------
    def on_run_start(self, loop: Any) -> None:
        self.loop = loop

    def on_validation_end(self, loop: Any, values: dict) -> None: ...
    def on_epoch_end(self, loop: Any) -> None: ...
    def on_checkpoint(self, loop: Any, path: Any, tag: str, reason: str) -> None: ...
    def on_notice(self, loop: Any, message: str, level: str = "", data: Any = None) -> None: ...

    def on_epoch_start(self, loop: Any) -> None:
        sampler = sampler_of(getattr(getattr(loop, "r", None), "train_loader", None))
        if sampler is not None:
            sampler.set_epoch(loop.epoch)

    def on_idle(self, loop: Any) -> None:
        if self.pending:
            self.apply_due(loop)

    def on_run_end(self, loop: Any, status: str, error: BaseException | None) -> None:
        self.status = status
        for p in self.pending:
            if p.fut is not None and not p.fut.done():
                p.fut.set_exception(RuntimeError("the run ended before the command's step"))
        self.pending.clear()
        self.saved = None
        if self.world.leader:
            self._final_collect(loop, status, error)
        else:
            self._report(final=True, error=error)

    # -- applying at an agreed step (training thread) -------------------------------------------
    def held(self, gate: Any) -> bool:
        """Every rank is held at this boundary (none can pass it): paused, or in eval."""
        paused, target = self.saved if self.saved is not None else (gate.paused, gate.step_target)
        return gate.mode == "eval" or (paused and target is None)

    def at(self, loop: Any, step: int, fn: Any, fut: Future | None) -> Any:
        """Run fn(loop) at `step`: now if this is it, else hold the gate there and run it then."""
        self.apply_due(loop)  # earlier commands first
        if loop.step >= step:
            if loop.step > step:
                self._late(loop, step)
            self._nudge.set()
            return fn(loop)
        gate = loop.gate
        if self.saved is None:
            self.saved = (gate.paused, gate.step_target)
        gate.paused, gate.step_target = True, step  # the gate runs on to `step` and holds
        self.pending.append(_Pending(step, fn, fut))
        return fut

    def apply_due(self, loop: Any) -> None:
        """Commands whose step has come: the gate gets its own state back, then each applies."""
        due = [p for p in self.pending if p.at <= loop.step]
        if not due:
            return
        self.pending = [p for p in self.pending if p.at > loop.step]
        gate = loop.gate
        if self.saved is not None:
            gate.paused, gate.step_target = self.saved
            self.saved = None
            if self.pending:  # later ones still to come (not expected: S only grows by one)
                self.saved = (gate.paused, gate.step_target)
                gate.paused, gate.step_target = True, min(p.at for p in self.pending)
        for p in due:
            try:
                if p.at < loop.step:
                    self._late(loop, p.at)
                result = p.fn(loop)
            except BaseException as e:
                if p.fut is not None:
                    p.fut.set_exception(e)
                else:
                    self.store.event(
                        wire.EV_ERROR,
                        f"rank {self.world.rank}: a command failed at step {loop.step}: {e}",
                        step=loop.step,
                        level="error",
                    )
                continue
            if p.fut is not None:
                p.fut.set_result(result)
        self._nudge.set()

    def _late(self, loop: Any, step: int) -> None:
        """This rank passed the agreed step before it heard of the command: its ranks do not meet
        in a collective every step (no DDP). Applied now, late, and said."""
        self.store.event(
            wire.EV_ALERT,
            f"rank {self.world.rank} applies a command at step {loop.step}, after step {step} "
            "where it was due: the ranks do not wait for each other every step (no DDP?)",
            step=loop.step,
            level="warning",
            data={"due": step},
        )

    # -- rank 0: deciding -------------------------------------------------------------------------
    def decide(self, loop: Any, req: dict, fn: Any) -> Any:
        """On rank 0's training thread at a boundary: choose the step, tell every rank, wait until
        each has it queued, then apply here at that step (a Future when it is the next one)."""
        self.apply_due(loop)
        at = loop.step if self.held(loop.gate) else loop.step + 1
        self.seq += 1
        n = self.seq
        if self.world.world_size > 1:
            self._chan.set(f"cmd/{n}", json.dumps({"at": at, "req": req}))
            missing = self._wait_acks(n)
            if missing:
                self.store.event(
                    wire.EV_ALERT,
                    f"ranks {', '.join(map(str, missing))} did not take '{req['cmd']}' within "
                    f"{ACK_TIMEOUT_S:g} s (ended, or hung?); it applies on the others at step {at}",
                    step=loop.step,
                    level="warning",
                    data={"ranks": missing},
                )
        return self.at(loop, at, fn, Future() if at != loop.step else None)

    def _wait_acks(self, n: int) -> list[int]:
        keys = [f"ack/{n}/{r}" for r in range(1, self.world.world_size)]
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._chan.check(keys):
                return []
            time.sleep(0.002)
        return [r for r, k in enumerate(keys, 1) if not _has(self._chan, k)]

    def request_stop(self, reason: str) -> None:
        """Stop every rank at one step (from a signal handler or a thread; never blocks)."""
        if not self.world.leader:
            self.stop_asked = self.stop_asked or reason
            return
        if self.server is not None:
            self.server.stop_all(reason)

    # -- reports -------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """This rank now: what `status --json` lists per rank."""
        loop = self.loop
        latest = getattr(self.probe, "latest", {}) or {}
        rep: dict[str, Any] = {
            "rank": self.world.rank,
            "local_rank": self.world.local_rank,
            "host": self.host,
            "pid": os.getpid(),
            "step": getattr(loop, "step", 0),
            "lrs": _safe(lambda: loop.lrs(), []) if loop is not None else [],
            "device": str(getattr(loop, "device", None) or "?"),
            "step_time_s": latest.get("step_time"),
            "data_time_s": latest.get("data_time"),
            "memory_rss": _rss(),
            "status": self.status if loop is not None else wire.STARTING,
            "wall": time.time(),
        }
        device = getattr(loop, "device", None)
        cuda = _cuda_memory(device)
        if cuda is not None:
            rep["cuda_allocated"] = cuda
        sampled = getattr(self.store, "system_latest", None)  # a rank > 0's own GPU readings
        if sampled and getattr(device, "type", None) == "cuda":
            d = device.index or 0
            rep["gpu"] = {
                k: v for k, v in sampled.items() if k.startswith((f"cuda{d}.", f"gpu{d}."))
            }
        return rep

    def _report(self, final: bool = False, error: BaseException | None = None) -> None:
        """Rank > 0: this rank's report, console lines and events, and a stop to ask for. The
        last one (final) is never followed by another: the reporter thread stops first."""
        with self._report_lock:
            if self._final_sent:
                return
            self._final_sent = final
            self._send_report(final, error)

    def _send_report(self, final: bool, error: BaseException | None) -> None:
        chan = self._chan if final else self._rchan
        rep = self.report()
        if final:
            rep["final"] = True
            if error is not None:
                rep["error"] = f"{type(error).__name__}: {error}"
        if self.stop_asked:
            rep["stop"] = self.stop_asked
        lines, events = self.store.take()
        r = self.world.rank
        if lines or events:
            k = chan.add(f"outn/{r}", 1)
            chan.set(f"out/{r}/{k}", json.dumps({"console": lines, "events": events}, default=str))
        chan.set(f"rank/{r}", json.dumps(rep, default=str))

    # -- threads -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.world.leader:
            self._spawn(self._collector, "dltui-ranks")
        else:
            self._rchan = connect(self.world)
            self._spawn(self._follower, "dltui-follow")
            self._spawn(self._reporter, "dltui-report")

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        self._alive = False
        for t in self._threads:
            t.join(timeout=STORE_TIMEOUT_S / 10)

    def _follower(self) -> None:
        """Rank > 0: take each command rank 0 decided, queue it for its step, acknowledge."""
        chan = connect(self.world)
        n = 1
        while self._alive:
            # A poll, not store.wait(): a wait that times out logs a C++ warning each time.
            try:
                if not _has(chan, f"cmd/{n}"):
                    time.sleep(FOLLOW_POLL_S)
                    continue
            except Exception:  # the store went away (the launcher ended): nothing more comes
                return
            try:
                msg = json.loads(chan.get(f"cmd/{n}"))
                self.server.follow(msg["at"], msg["req"])
            except Exception as e:  # never silent: rank 0 records it
                self.store.event(
                    wire.EV_ERROR,
                    f"rank {self.world.rank}: command {n} could not be taken: {e!r}",
                    level="error",
                )
            chan.set(f"ack/{n}/{self.world.rank}", "1")
            n += 1

    def _reporter(self) -> None:
        while self._alive and not self.store.closed.is_set():
            try:
                self._report()
            except Exception:  # the store went away (rank 0's launcher ended): nothing to tell
                return
            self._nudge.wait(REPORT_S)
            self._nudge.clear()

    def _collector(self) -> None:
        """Rank 0: record the other ranks' reports, console lines and events."""
        chan = connect(self.world)
        while self._alive:
            try:
                self._collect(chan)
            except Exception as e:
                self.store.event(wire.EV_INFO, f"ranks: {e!r}", level="warning")
            self._nudge.wait(REPORT_S)
            self._nudge.clear()

    def _collect(self, chan: Any) -> list[dict]:
        seen = self._seen  # of each rank's queued outputs, those recorded (and deleted)
        ranks = [self.report()]
        for r in seen:
            key = f"rank/{r}"
            if _has(chan, key):
                rep = json.loads(chan.get(key))
                if not rep.get("final") and r not in self.dead and self._gone(rep):
                    rep = json.loads(chan.get(key))  # its last report may have come meanwhile
                    if not rep.get("final"):
                        self._died(r, rep)
                ranks.append(rep)
                if rep.get("final"):
                    self.final[r] = rep
                if rep.get("stop"):
                    self.request_stop(rep["stop"])
            top = int(chan.add(f"outn/{r}", 0))
            while seen[r] < top and _has(chan, f"out/{r}/{seen[r] + 1}"):
                seen[r] += 1
                key = f"out/{r}/{seen[r]}"
                out = json.loads(chan.get(key))
                chan.delete_key(key)
                for wall, stream, line in out["console"]:
                    self.store.console(stream, f"[rank {r}] {line}", wall)
                for _wall, step, kind, level, message, data in out["events"]:
                    data = {**(data if isinstance(data, dict) else {}), "rank": r}
                    self.store.event(kind, f"rank {r}: {message}", step, level, data)
        self.ranks = ranks
        self.store.set_meta(world_size=self.world.world_size, ranks=ranks)
        return ranks

    def _gone(self, rep: dict) -> bool:
        """A rank on this host whose process is gone without its last report (SIGKILL, OOM)."""
        if rep.get("host") != self.host or not isinstance(rep.get("pid"), int):
            return False
        try:
            os.kill(rep["pid"], 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    def _died(self, r: int, rep: dict) -> None:
        """Said at once, from this thread: rank 0 itself is likely stuck in a collective waiting
        for the dead rank (its signal handlers can't run there) until torchrun kills it."""
        self.dead.add(r)
        self.store.event(
            wire.EV_ERROR,
            f"rank {r} (pid {rep['pid']}) died at step {rep.get('step')} without a word (killed? "
            "out of memory?); the other ranks cannot go on, torchrun ends them",
            step=rep.get("step"),
            level="error",
            data={"rank": r},
        )
        self.store.set_meta(status=wire.FAILED, ended=time.time(), failed_rank=r)
        self.store.flush()

    def _final_collect(self, loop: Any, status: str, error: BaseException | None) -> None:
        """Rank 0 at its end: the other ranks' last reports, and which rank failed, if one did."""
        self._alive = False
        for t in self._threads:
            t.join(timeout=REPORT_S * 4)
        deadline = time.monotonic() + FINAL_WAIT_S
        try:
            while True:
                self._collect(self._chan)
                if len(self.final) >= self.world.world_size - 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        except Exception:  # the store is gone: the launcher has ended
            pass
        failed = {r: rep for r, rep in self.final.items() if rep.get("status") == wire.FAILED}
        missing = sorted(set(range(1, self.world.world_size)) - set(self.final) - self.dead)
        for r, rep in sorted(failed.items()):
            self.store.event(
                wire.EV_ERROR,
                f"rank {r} failed at step {rep.get('step')}: {rep.get('error') or 'see its console'}",
                step=rep.get("step"),
                level="error",
                data={"rank": r},
            )
        if missing and (status != wire.FINISHED or error is not None):
            self.store.event(
                wire.EV_ERROR,
                f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} ended "
                "without a word (killed?)",
                step=getattr(loop, "step", None),
                level="error",
                data={"ranks": missing},
            )


def _safe(fn: Any, default: Any) -> Any:
    try:
        return fn()
    except Exception:
        return default


def _rss() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def _cuda_memory(device: Any) -> int | None:
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    return int(torch.cuda.memory_allocated(device))


# -- the control server of a distributed run ----------------------------------------------------
def control_server(run_dir: Path, gate: Any, store: Any, driver: Any, agent: Agent) -> Any:
    """Rank 0: the run's control server, steering every rank. Elsewhere: the follower's server
    (no socket), applying rank 0's commands through the same code."""
    from .control import APPLY_TIMEOUT_S, ControlServer

    class DistControlServer(ControlServer):
        def __init__(self) -> None:
            super().__init__(run_dir, gate, store, driver)
            self._local = threading.local()

        def start(self) -> None:
            if agent.world.leader:
                super().start()
            agent.start()

        def close(self) -> None:
            agent.close()
            if agent.world.leader:
                super().close()

        def state(self) -> dict[str, Any]:
            return {**super().state(), "world_size": agent.world.world_size, "ranks": agent.ranks}

        def _dispatch(self, req: wire.Request) -> Any:
            self._local.req = {"cmd": req.cmd, "args": req.args}
            if req.cmd == "stop":
                reason = req.args.get("reason") or "stopped by request"
                return self._at_boundary(lambda loop: self._stop(loop, str(reason)))
            return super()._dispatch(req)

        def _stop(self, loop: Any, reason: str) -> dict:
            if self.gate.stop_reason is None:
                self.gate.request_stop(reason)
                self._event(f"stop at step {loop.step} ({reason})", {"cmd": "stop"})
            return {"stopping": True}

        def _event(self, message: str, data: dict) -> None:
            data = {**data, "rank": agent.world.rank, "lrs": _safe(self.loop.lrs, [])}
            self.store.event(wire.EV_COMMAND, message, step=self.loop.step, data=data)

        def _at_boundary(self, fn: Any) -> Any:
            req = getattr(self._local, "req", None)
            follow_at = getattr(self._local, "at", None)
            if req is None or req["cmd"] not in STEERING:
                return super()._at_boundary(fn)
            if follow_at is not None:  # a rank > 0 taking rank 0's command: queue it, no wait
                self.gate.submit(lambda loop: agent.at(loop, follow_at, fn, None))
                return None
            fut = self.gate.submit(lambda loop: agent.decide(loop, req, fn))
            result = fut.result(timeout=APPLY_TIMEOUT_S)
            if isinstance(result, Future):
                result = result.result(timeout=APPLY_TIMEOUT_S)
            return result

        def follow(self, at: int, req: dict) -> None:
            """Rank > 0 (the follower thread): queue rank 0's command for step `at`."""
            self._local.at = at
            try:
                self._dispatch(wire.Request(cmd=req["cmd"], args=req.get("args") or {}))
            finally:
                self._local.at = None

        def stop_all(self, reason: str) -> None:
            """Rank 0, from a signal handler or a thread: every rank stops at one step."""
            req = {"cmd": "stop", "args": {"reason": reason}}
            if not agent.stopping and self.gate.stop_reason is None:
                agent.stopping = True
                self.gate.submit(
                    lambda loop: agent.decide(loop, req, lambda lp: self._stop(lp, reason))
                )

    server = DistControlServer()
    agent.server = server
    return server


def install_signals(agent: Agent, gate: Any, detached: bool) -> None:
    """SIGINT/SIGTERM on any rank stop every rank at one step (rank 0 decides it; the others
    ask it); a second SIGINT stops this rank at once. torchrun sends SIGTERM to every rank."""
    interrupts = 0

    def stop(signum: int, frame: Any) -> None:
        nonlocal interrupts
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                gate.request_stop(f"interrupted twice ({name})", now=True)
                raise KeyboardInterrupt
        what = "interrupted" if signum == signal.SIGINT else "terminated"
        agent.request_stop(f"{what} ({name}) on rank {agent.world.rank}")

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN if detached else stop)


def follower_begin(args: Any, world: World) -> Any:
    """A rank > 0's start: no run directory of its own, its console queued for rank 0."""
    from . import console
    from .main import Begun, UsageError

    run_dir = args.resume or args.run_dir
    if run_dir is None:
        raise UsageError("a distributed rank needs --run-dir (dltui train picks it)")
    store = RankStore(run_dir, world)
    tees = console.capture(store)
    args.headless = False  # rank 0 prints the status lines
    return Begun(Path(run_dir), store, tees, False, None, os.open(os.devnull, os.O_RDONLY))


# -- the launcher -----------------------------------------------------------------------------
def launch(argv: list[str]) -> int:
    """torchrun itself (torch.distributed.run's main), ending as the engine would: with the
    failing rank's exit status and without torchrun's traceback (each rank has already said what
    went wrong, in one line, and the run records it); 128+N after signal N."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    # torchrun's own per-process lines ("failed (exitcode: 2)", "sending SIGTERM") repeat what
    # the ranks and the run store say; its OMP banner goes with setting what it would set.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        torchrun(argv)
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        code = failure.exitcode
        return code if isinstance(code, int) and 0 < code < 256 else 1
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":  # `python -m dltui.engine.distributed TORCHRUN-ARGS`: dltui train's
    sys.exit(launch(sys.argv[1:]))
