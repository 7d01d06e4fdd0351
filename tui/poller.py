"""What the dashboard knows about a run, read from its store in one cheap poll (no Textual here).

The app's poller worker calls RunPoller.poll() a few times a second on a thread and posts the
returned snapshot only when something changed. A poll reads a handful of small meta keys, the
events after the last one seen and, once a second, the newest system sample: never a whole
history, so its cost does not grow with the run.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dltui.run import wire
from dltui.run.reader import RunNotFound, RunReader, pid_alive
from dltui.run.status import RunStatus

# The display states are RunStatus (run/status.py); these names stay for the modules that import
# them from here.
STARTING, RUNNING, PAUSED, EVAL = (
    RunStatus.STARTING,
    RunStatus.RUNNING,
    RunStatus.PAUSED,
    RunStatus.EVAL,
)
FINISHED, FAILED, STOPPED, CRASHED = (
    RunStatus.FINISHED,
    RunStatus.FAILED,
    RunStatus.STOPPED,
    RunStatus.CRASHED,
)

# Meta keys read on every poll; the rest (model summary, hparams) is read once: it can be large.
VOLATILE_KEYS = ("status", "progress", "heartbeat", "started", "ended", "pid", "host")
# Small keys a script's engine fills in once the script runs (its optimizers at the first step,
# `eval` once it calls dltui.on_eval), and the sampler's GPU description and processes (data,
# not a note to parse): read on every poll, kept in snapshot.meta.
STEERING_KEYS = (
    "driver",
    "steering",
    "optimizers",
    "models",
    "learner",  # what the Run panel shows: a script's is found at its first step
    wire.META_GPUS,
    wire.META_GPU_PROCESSES,
    "ranks",  # a torchrun run's ranks (engine/distributed.py), renewed every half second
)
FIRST_EVENTS = 2000  # read when the dashboard opens: enough to find commands among checkpoints
MAX_EVENTS = 100  # the events list shows the newest few; memory stays flat over a long run
MAX_MARKERS = 1000  # command events drawn on the plots
SYSTEM_HISTORY = 120  # samples per system metric kept for the sparklines (~2 minutes at 1 Hz)
RATE_WINDOW_S = 120.0  # the ETA's rate: steps over the last two minutes of training (not of pauses)
RATE_MIN_SPAN_S = 10.0  # below this much training watched, the rate comes from the step times
SAMPLES_TAU_S = 10.0  # samples/s is smoothed with this time constant (one step's is noisy)


@dataclass
class RunSnapshot:
    """The whole current picture of a run, as the header, system panel and events list need it."""

    run_dir: Path
    run_id: str
    state: RunStatus = RunStatus.STARTING
    status: str = "starting"  # the reader's word: running, paused, finished, crashed...
    detail: str = ""  # why the state is what it is, when that needs saying
    meta: dict[str, Any] = field(default_factory=dict)  # the slow-changing keys, read once
    progress: dict[str, Any] = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None  # end of the run's clock: 'ended', or the last heartbeat if crashed
    samples_per_s: float | None = None
    steps_per_s: float | None = None
    events: tuple[dict, ...] = ()
    markers: tuple[tuple[int, float, str], ...] = ()  # (step, wall, message) of command events
    system: dict[str, float] = field(default_factory=dict)
    system_history: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # Change counters: a pane refetches only when the one for its data moves.
    scalars_seen: int = 0  # the store's newest scalar row id (plots)
    layer_step: int = 0  # the newest layer-stats step (Layers tab)
    event_id: int = 0  # the newest event id (events list, Layers' spike alerts)
    console_id: int = 0  # the newest console line id (Console tab)
    optimizer_lrs: dict[str, list[float]] = field(default_factory=dict)  # name -> LR per group
    version: int = 0

    @property
    def live(self) -> bool:
        """True while an engine is there to steer."""
        return self.state.live

    @property
    def gpu_note(self) -> str | None:
        """Why the run has no GPU readings (the sampler's meta['gpus']['note']), else None."""
        gpus = self.meta.get(wire.META_GPUS)
        return gpus.get("note") if isinstance(gpus, dict) else None

    @property
    def step(self) -> int:
        return int(self.progress.get("step") or 0)

    @property
    def lrs(self) -> list[float]:
        """The run's own optimizer's LR per group, as used by the last recorded step."""
        if self.optimizer_lrs:
            return list(next(iter(self.optimizer_lrs.values())))
        return list(self.progress.get("lrs") or [])

    @property
    def next_lrs(self) -> list[float]:
        """The LR per group the next step will use (the engine's progress; a scheduler may
        already have moved it past the last recorded step's, or past its own end)."""
        return list(self.progress.get("lrs") or [])

    @property
    def is_script(self) -> bool:
        """The user's own script (its own loop), rather than a recipe run by dltui's loop."""
        return self.meta.get("driver") == wire.DRIVER_SCRIPT

    @property
    def optimizers(self) -> list[dict[str, Any]]:
        """[{"name", "type", "groups"}, ...], the run's own optimizer first; [] until known."""
        opts = self.meta.get("optimizers")
        return (
            [o for o in opts if isinstance(o, dict) and "name" in o]
            if isinstance(opts, list)
            else []
        )

    def supports(self, steering: str) -> bool:
        """Whether the run takes this control (wire.STEERING_KEYS); runs that don't say: all."""
        table = self.meta.get("steering")
        return bool(table.get(steering, True)) if isinstance(table, dict) else True

    @property
    def total_steps(self) -> int | None:
        """The run's length in steps; None when it is not known (a script, an endless loader)."""
        total = self.progress.get("total_steps")
        return int(total) if total else None

    @property
    def eta_s(self) -> float | None:
        total = self.total_steps
        if not total or not self.steps_per_s or self.state is not RunStatus.RUNNING:
            return None
        return max(0, total - self.step) / self.steps_per_s


class RunPoller:
    """Reads one run's store; poll() returns a new snapshot when anything shown has changed."""

    def __init__(self, run_dir: Path, engine_pid: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.engine_pid = engine_pid
        self.reader: RunReader | None = None
        self.snap = RunSnapshot(run_dir=self.run_dir, run_id=self.run_dir.name)
        self._events: deque[dict] = deque(maxlen=MAX_EVENTS)
        self._markers: deque[tuple[int, float, str]] = deque(maxlen=MAX_MARKERS)
        self._last_event = 0
        self._sys_wall = 0.0
        self._sys_rowid = 0
        self._sys_hist: dict[str, deque[float]] = {}
        self._rate: deque[tuple[float, int]] = deque()
        self._samples: tuple[float, float] | None = None  # (monotonic time, smoothed samples/s)
        self._sig: tuple | None = None
        self._primed = False

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def _open(self) -> RunReader | None:
        if self.reader is None:
            try:
                self.reader = RunReader(self.run_dir)
            except RunNotFound:
                return None
            if not self._primed:  # a reopen after a read error must not replay the history
                self._primed = True
                self._first_read(self.reader)
        return self.reader

    def _first_read(self, r: RunReader) -> None:
        for ev in r.events(kind=wire.EV_COMMAND, limit=MAX_MARKERS):  # the first 1000 commands
            self._add_marker(ev)
        for ev in r.last_events(FIRST_EVENTS):  # routine checkpoints fold: older commands stay
            self._keep(ev)
        self._last_event = self._events[-1]["id"] if self._events else 0

    def _keep(self, ev: dict) -> None:
        """Add an event to the list; a routine checkpoint replaces the one before it with its tag
        (carrying the count in 'repeats'), so epochs of checkpoints never push a user's
        commands out of the MAX_EVENTS kept."""
        if routine_checkpoint(ev):
            tag = _tag(ev)
            for i, old in enumerate(self._events):
                if routine_checkpoint(old) and _tag(old) == tag:
                    del self._events[i]
                    ev = {**ev, "repeats": int(old.get("repeats", 1)) + 1}
                    break
        self._events.append(ev)

    def _add_marker(self, ev: dict) -> None:
        if ev["kind"] == wire.EV_COMMAND and ev["step"] is not None:
            self._markers.append((int(ev["step"]), float(ev["wall"]), ev["message"]))

    def poll(self) -> RunSnapshot | None:
        """Read what changed; a new snapshot if anything did, else None."""
        r = self._open()
        if r is None:
            return self._not_started()
        meta = self._volatile_meta(r)
        if not self.snap.meta and "status" in meta:
            full = r.meta()
            self.snap.meta = {k: v for k, v in full.items() if k not in VOLATILE_KEYS}
        late = {k: meta[k] for k in STEERING_KEYS if k in meta}  # a script fills these in late
        status = r.status(meta) if "status" in meta else "starting"
        progress = meta.get("progress") or {}
        state = RunStatus.of(status, progress) if "status" in meta else RunStatus.STARTING
        self._read_events(r)
        self._read_system(r)
        step = int(progress.get("step") or 0)
        self._note_rate(step, state)
        ended = meta.get("ended")
        if state == CRASHED and ended is None:
            ended = meta.get("heartbeat")
        # max(rowid) is O(1) in SQLite: the cheapest way to know a plot has something new to show.
        scalars = r.db.execute("SELECT coalesce(max(rowid), 0) FROM scalars").fetchone()[0]
        # max() over an indexed column / the integer key: one B-tree descent each, any run length
        layer_step = r.db.execute("SELECT coalesce(max(step), 0) FROM layer_stats").fetchone()[0]
        console_id = r.db.execute("SELECT coalesce(max(id), 0) FROM console").fetchone()[0]
        sig = (
            state,
            json.dumps(progress, sort_keys=True),
            self._last_event,
            self._sys_wall,
            ended,
            scalars,
            layer_step,
            console_id,
            json.dumps(late, sort_keys=True),
        )
        if sig == self._sig:
            return None
        self._sig = sig
        s = self.snap
        if self.snap.meta:
            s.meta = {**s.meta, **late}
        s.optimizer_lrs = _optimizer_lrs(r, s.optimizers, progress)
        s.state, s.status, s.progress, s.scalars_seen = state, status, progress, scalars
        s.layer_step, s.console_id, s.event_id = layer_step, console_id, self._last_event
        s.detail = _detail(state, self._events)
        s.started, s.ended = meta.get("started"), ended
        s.samples_per_s = self._samples_per_s(r, state)
        s.steps_per_s = self._steps_per_s(r)
        s.events = tuple(self._events)
        s.markers = tuple(self._markers)
        s.system_history = {k: tuple(v) for k, v in self._sys_hist.items()}
        s.version += 1
        return _copy(s)

    def _not_started(self) -> RunSnapshot | None:
        """No store yet: the engine is still importing torch and the recipe, or it died doing so."""
        s = self.snap
        if self.engine_pid is not None and not pid_alive(self.engine_pid):
            state, detail = (
                CRASHED,
                f"the engine (pid {self.engine_pid}) exited before the run started",
            )
        else:
            state, detail = STARTING, "waiting for the engine to create the run store"
        if (state, detail) == (s.state, s.detail) and s.version:
            return None
        s.state, s.detail = state, detail
        s.version += 1
        return _copy(s)

    def _volatile_meta(self, r: RunReader) -> dict[str, Any]:
        keys = VOLATILE_KEYS + STEERING_KEYS
        marks = ",".join("?" * len(keys))
        rows = r.db.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", keys)
        return {k: json.loads(v) for k, v in rows}

    def _read_events(self, r: RunReader) -> None:
        while True:
            new = r.events(after_id=self._last_event, limit=500)
            for ev in new:
                self._keep(ev)
                self._add_marker(ev)
            if new:
                self._last_event = new[-1]["id"]
            if len(new) < 500:
                return

    def _read_system(self, r: RunReader) -> None:
        """Append the system rows written since the last poll to each metric's short history.

        One range query on the table's rowid (always cheap) instead of RunReader.system_latest(),
        whose max(wall) scans the whole table: a day-long run has ~700k system rows.
        """
        top = r.db.execute("SELECT max(rowid) FROM system").fetchone()[0]
        if top is None or top == self._sys_rowid:
            return
        lo = self._sys_rowid or max(0, top - SYSTEM_HISTORY * 64)  # 64 names per sample is plenty
        wall, latest = None, {}
        for w, name, value in r.db.execute(
            "SELECT wall, name, value FROM system WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
            (lo, top),
        ):
            if w != wall:  # a sample's rows share one wall time and are written together
                wall, latest = w, {}
            latest[name] = value
            if value is not None:
                self._sys_hist.setdefault(name, deque(maxlen=SYSTEM_HISTORY)).append(value)
        self._sys_rowid, self._sys_wall = top, wall or self._sys_wall
        self.snap.system = latest

    def _note_rate(self, step: int, state: RunStatus) -> None:
        """Remember (time, step) while training runs; a pause or eval pass starts the window
        again, so the rate after a resume is not diluted by the time spent held."""
        now = time.monotonic()
        if state is not RunStatus.RUNNING:
            self._rate.clear()
            return
        if not self._rate or self._rate[-1][1] != step:
            self._rate.append((now, step))
        while len(self._rate) > 2 and now - self._rate[0][0] > RATE_WINDOW_S:
            self._rate.popleft()

    def _samples_per_s(self, r: RunReader, state: RunStatus) -> float | None:
        """The newest samples/s, smoothed over ~SAMPLES_TAU_S; None while training is held."""
        if state is not RunStatus.RUNNING:
            self._samples = None
            return None
        last = r.last("samples_per_s")
        value = last[1] if last else None
        if value is None or not math.isfinite(value):
            return self._samples[1] if self._samples else None
        now = time.monotonic()
        if self._samples is None:
            self._samples = (now, value)
        else:
            t0, avg = self._samples
            a = 1.0 - math.exp(-(now - t0) / SAMPLES_TAU_S)
            self._samples = (now, avg + a * (value - avg))
        return self._samples[1]

    def _steps_per_s(self, r: RunReader) -> float | None:
        """Steps per second over the last half minute watched; before that, from step times."""
        if len(self._rate) >= 3:
            (t0, s0), (t1, s1) = self._rate[0], self._rate[-1]
            if t1 - t0 >= RATE_MIN_SPAN_S and s1 > s0:
                return (s1 - s0) / (t1 - t0)
        st, dt = r.last("step_time"), r.last("data_time")
        total = (st[1] or 0.0 if st else 0.0) + (dt[1] or 0.0 if dt else 0.0)
        return 1.0 / total if total > 0 else None


def routine_checkpoint(ev: dict) -> bool:
    """A checkpoint the loop takes by itself (epoch end, a new best, the end of the run), not one
    the user asked for (its reason is 'requested')."""
    return ev["kind"] == wire.EV_CHECKPOINT and not ev["message"].endswith("(requested)")


def _tag(ev: dict) -> str:
    data = ev.get("data")
    return str(data.get("tag", "")) if isinstance(data, dict) else ""


def _recorded_lrs(r: RunReader, groups: int, optimizer: str | None = None) -> list[float]:
    """The LR per group of the last recorded step (`lr/<i>` or `lr/<optimizer>/<i>` points):
    what a step used, unlike the progress' LRs, which the next step will use."""
    lrs = []
    for g in range(groups):
        last = r.last(wire.lr_name(g, optimizer))
        if last is None or last[1] is None:
            break
        lrs.append(float(last[1]))
    return lrs


def _optimizer_lrs(
    r: RunReader, optimizers: list[dict[str, Any]], progress: dict[str, Any]
) -> dict[str, list[float]]:
    """Each optimizer's LR per group at the last recorded step (a couple of indexed lookups,
    only when something moved); the progress' LRs until a step has been recorded."""
    out: dict[str, list[float]] = {}
    own = [float(x) for x in progress.get("lrs") or []]
    for i, opt in enumerate(optimizers):
        if i == 0:
            out[opt["name"]] = _recorded_lrs(r, len(own)) or own
        else:
            out[opt["name"]] = _recorded_lrs(r, int(opt.get("groups") or 0), opt["name"])
    if not optimizers and own:  # a recipe names no optimizers: its own under ""
        out[""] = _recorded_lrs(r, len(own)) or own
    return out


def _detail(state: str, events: deque[dict]) -> str:
    """A line on why a run ended, from its last error or status event."""
    if state == CRASHED:
        return "the engine is gone (killed or lost); everything recorded is still here"
    if state in (FAILED, STOPPED, FINISHED):
        for ev in reversed(events):
            if ev["kind"] in (wire.EV_ERROR, wire.EV_STATUS):
                return ev["message"]
    return ""


def _copy(s: RunSnapshot) -> RunSnapshot:
    """A shallow copy for the UI thread: the poller keeps mutating its own."""
    return RunSnapshot(**{k: getattr(s, k) for k in s.__dataclass_fields__})
