"""The probe: what is observed at every optimizer step, at a cost-bounded interval, and alerts.

Per step it records loss, lr of each group, step/data time and samples/s. Layer stats,
histograms and the training metric run at intervals chosen from their measured cost so that
together they stay within ~2% of training time (or as forced by flags).

The per-step record is one tuple appended to a list: the step's values (the loss still a
tensor) are read and turned into store rows in batches, every FLUSH_S of wall time, so the
training thread pays one append per step and on CUDA one device-to-host copy per batch.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from dltui.run import wire

from .loop import Callback, Loop, StepOutput
from .stats import LayerStats
from .store import RunStore

WARMUP_STEPS = 20  # steps measured before the intervals are chosen
# Fractions of step time. Together 0.25%, leaving room within the 2% target (>= 0.98 of a bare
# loop) for the fixed per-step cost: recording loss/lr/timings, the store writer's share of the
# GIL, and the noise of a shared machine. (Stats every ~1 s of training is plenty for a person.)
BUDGET = {"stats": 0.0015, "hist": 0.0005, "metric": 0.0005}
# Warm-up steps at which each is measured; the first sample is cold and is not used.
WARMUP_AT = {"stats": (1, 7, 13, 19), "hist": (1, 10, 19), "metric": (2, 6, 11, 16)}
# After the warm-up the intervals are chosen again every RECHOOSE_S from the recent step times and
# the recent calls' costs: a warm-up on a loaded machine (or a model that gets slower or faster)
# does not fix them for the whole run. An interval changes when its ideal value leaves
# [interval / 3, 2 x interval] (no flapping between neighbours); each change is an info event.
RECHOOSE_S = 60.0
RECENT = 9  # calls of each part kept for its cost, once the warm-up is over
SPIKE_FACTOR = 10.0  # a layer's grad norm this far above its running mean is an alert
SPIKE_HISTORY = 5  # stats samples of a layer before its mean is trusted (early training is wild)
META_EVERY_S = 0.5
# Per-step records are read and handed to the store at most this often (every step during the
# warm-up and with --pause-on-anomaly, whose hold must land right after the step). The store
# writer commits every 0.25 s, so readers see a step within ~0.35 s.
FLUSH_S = 0.1


class StatRow(NamedTuple):
    """One parameter's layer_stats row as the store takes it (None: missing or not finite)."""

    name: str
    w_norm: float | None
    w_mean: float | None
    w_std: float | None
    w_maxabs: float | None
    g_norm: float | None
    g_mean: float | None
    g_std: float | None
    g_maxabs: float | None
    zero_frac: float | None
    nonfinite: float | None
    update_ratio: float | None


assert StatRow._fields[1:] == wire.LAYER_STAT_COLUMNS, "StatRow must follow the store's columns"


def nice_ceil(x: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is >= x."""
    n = 1
    while True:
        for m in (1, 2, 5):
            if n * m >= x:
                return n * m
        n *= 10


class Deferred:
    """Device scalars read back a step or more later: no host sync on CUDA, immediate on CPU."""

    MAX_IN_FLIGHT = 256

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.q: deque[tuple[Any, torch.Tensor, Any]] = deque()

    def push(
        self, values: list[torch.Tensor] | torch.Tensor, tag: Any
    ) -> list[tuple[Any, list[float]]]:
        """Queue device values (0-d tensors, or one 1-D tensor); returns what is ready (tag, values)."""
        if not self.cuda:  # on the CPU a read is a plain memory access, not a sync
            if isinstance(values, torch.Tensor):
                return [(tag, values.tolist())]
            return [(tag, [v.item() for v in values])]
        if not isinstance(values, torch.Tensor):
            values = torch.stack([v.detach().float().reshape(()) for v in values])
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        ev = torch.cuda.Event()
        # On the values' own device: the current device's stream would not order a copy from
        # another GPU (a run on cuda:1 could read the pinned buffer before the copy landed).
        ev.record(torch.cuda.current_stream(values.device))
        self.q.append((ev, host, tag))
        if len(self.q) > self.MAX_IN_FLIGHT:  # the GPU is far behind: wait for the oldest only
            self.q[0][0].synchronize()
        return self.ready()

    def ready(self, wait: bool = False) -> list[tuple[Any, list[float]]]:
        out = []
        while self.q and (wait or self.q[0][0].query()):
            ev, host, tag = self.q.popleft()
            if wait:
                ev.synchronize()
            out.append((tag, host.tolist()))
        return out


class Probe(Callback):
    def __init__(
        self,
        store: RunStore,
        *,
        stats_every: int | None = None,
        hist_every: int | None = None,
        metric_every: int | None = None,
        pause_on_anomaly: bool = False,
    ) -> None:
        self.store = store
        self.forced = {"stats": stats_every, "hist": hist_every, "metric": metric_every}
        self.every = {k: v or 1 for k, v in self.forced.items()}
        # measured seconds per call of each part (the warm-up's, then the RECENT last)
        self.cost: dict[str, deque[float]] = {}
        self.step_times: deque[float] = deque(maxlen=512)  # recent step times (s)
        self._rechoose_at = math.inf  # wall time of the next choice (after the warm-up's)
        self.pause_on_anomaly = pause_on_anomaly
        self.latest: dict[str, float] = {}  # newest value of each train scalar (for printers)
        # epoch (0-based) -> [sum, count] of its finite train losses read so far
        self._epoch_loss: dict[int, list] = {}
        self._ring: list[tuple] = []  # steps not yet read: see _flush
        self._flush_at = -math.inf  # wall time of the next flush (-inf: at every step)
        self._base = 0  # the step count this probe started at (a resumed run's checkpoint step)
        self._next_due: float = 0  # the first step at which an interval part may be due
        self._grad_mean: dict[str, tuple[float, int]] = {}
        self._loss_bad = False
        self._next_meta = 0.0
        self.stats: LayerStats | None = None
        self.deferred: Deferred | None = None
        self._stats_due = False
        self._stats_t = 0.0
        self._lr_names: list[str] = []
        self._best_val = math.inf
        # Script mode with several optimizers: the update ratio spans a whole iteration (every
        # optimizer stepped), so after_step() waits for the next step of the run's optimizer.
        self.late_update = False
        self._after_pending: int | None = None
        # Called with (loop, wall) after each flush (every FLUSH_S while steps come): observers
        # that act on the newest values at intervals (the headless printer), not every step.
        self.after_flush: list[Callable[[Any, float], None]] = []

    # -- set-up ----------------------------------------------------------------------------
    def on_run_start(self, loop: Loop) -> None:
        self.deferred = Deferred(loop.device)
        self._base = self._next_due = loop.step  # the warm-up counts from here (a resume too)
        if loop.model is not None:
            self.stats = LayerStats(loop.model)
            self.store.params(
                [
                    (n, list(p.shape), p.numel(), p.requires_grad)
                    for n, p in loop.model.named_parameters()
                ]
            )
        self.store.set_meta(intervals=self._intervals())

    def _intervals(self) -> dict[str, Any]:
        return {
            "stats_every": self.every["stats"],
            "hist_every": self.every["hist"],
            "metric_every": self.every["metric"],
            "chosen": "auto" if None in self.forced.values() else "flags",
            "measured_cost_s": {k: round(self._cost_of(k), 6) for k, v in self.cost.items() if v},
        }

    def _due(self, what: str, step: int) -> bool:
        """Is `what` due at this (1-based) step? During warm-up (the first WARMUP_STEPS steps
        of this process, a resumed run's too): at its WARMUP_AT steps."""
        if self.forced[what] is None and step - self._base <= WARMUP_STEPS:
            return step - self._base in WARMUP_AT[what]
        return step % self.every[what] == 0

    def _next_due_after(self, step: int) -> float:
        """The first step after `step` at which _due may say yes for a part that runs here: layer
        stats and histograms when there is a model, the train metric when the warm-up measured
        it (steps with a target: a script's have none) or its interval is forced."""
        if step + 1 - self._base <= WARMUP_STEPS:
            return step + 1
        parts = [] if self.stats is None else ["stats", "hist"]
        if "metric" in self.cost or self.forced["metric"] is not None:
            parts.append("metric")
        return min(((step // self.every[p] + 1) * self.every[p] for p in parts), default=math.inf)

    def _measured(self, what: str, seconds: float) -> None:
        got = self.cost.get(what)
        if got is None:
            got = self.cost[what] = deque(maxlen=len(WARMUP_AT[what]) + RECENT)
        got.append(seconds)

    def _cost_of(self, what: str) -> float:
        """The median of the recent calls' cost (the warm-up's first call, cold, left out)."""
        samples = list(self.cost[what])
        return _median(samples[-RECENT:] if len(samples) > RECENT else samples[1:] or samples)

    def _choose_intervals(self, loop: Loop, first: bool = True) -> None:
        """Each automatic interval from its part's cost and the step time (medians: robust to
        stalls), within its BUDGET share of training time. `first`: the warm-up's choice;
        later ones change an interval only when it is far off (see RECHOOSE_S)."""
        step_time = _median(list(self.step_times) or [1e-3])
        before = dict(self.every)
        for what, frac in BUDGET.items():
            if self.forced[what] is None and self.cost.get(what):
                ideal = self._cost_of(what) / max(frac * step_time, 1e-9)
                if first or not before[what] / 3 <= ideal <= 2 * before[what]:
                    self.every[what] = nice_ceil(ideal)
        if self.forced["hist"] is None:  # histograms are a lower-rate view than stats
            self.every["hist"] = max(self.every["hist"], 10 * self.every["stats"])
        self._rechoose_at = time.time() + RECHOOSE_S
        if first and not self.pause_on_anomaly:  # from here steps are read in batches
            self._flush_at = 0.0
        if not first and self.every == before:
            return
        self._next_due = self._next_due_after(loop.step)
        iv = self._intervals()
        self.store.set_meta(intervals=iv)
        self.store.event(
            wire.EV_INFO,
            step=loop.step,
            message=f"probe intervals{'' if first else ' changed'}: layer stats every "
            f"{iv['stats_every']} steps, histograms every {iv['hist_every']}, train metric every "
            f"{iv['metric_every']} (step {step_time * 1e3:.2f} ms; budget "
            f"{sum(BUDGET.values()):.2%} of training time)",
        )

    # -- per step --------------------------------------------------------------------------
    def on_epoch_start(self, loop: Loop) -> None:
        self._flush(loop)
        loop.metrics.reset_train()

    def epoch_train_loss(self, loop: Loop, epoch: int) -> float | None:
        """The mean finite training loss of `epoch` (0-based), every step of it read (on CUDA
        this waits for the copies in flight: once per epoch, never per step)."""
        self._flush(loop, wait=True)
        got = self._epoch_loss.get(epoch)
        return got[0] / got[1] if got and got[1] else None

    def on_before_optimizer_step(self, loop: Loop) -> None:
        if self._after_pending is not None:
            self._stats_after(loop, self._after_pending)
        step = loop.step + 1
        if self.stats is None or step < self._next_due:
            return
        self._stats_due = self._due("stats", step)
        if self._stats_due:
            t = time.perf_counter()
            self.stats.before_step()
            self._stats_t = time.perf_counter() - t

    def on_step_end(self, loop: Loop, out: StepOutput) -> None:
        step = loop.step
        extras = out.scalars or None
        if step >= self._next_due:  # an interval part may be due (or the warm-up is on)
            extras = self._at_interval(loop, out, step, extras)
        self._ring.append(
            (
                step,
                loop.epoch,
                out.wall,
                out.loss,
                out.step_time,
                out.batch_size,
                out.data_time,
                out.lrs,
                extras,
            )
        )
        if out.wall >= self._flush_at:
            self._flush(loop)

    def step_done(
        self,
        loop: Any,
        step: int,
        wall: float,
        loss: Any,
        step_time: float | None,
        batch_size: int,
        lrs: list[float],
    ) -> bool:
        """Script mode's hot path: a plain step (no extras, no output to measure) recorded
        without a StepOutput. False when an interval part may be due at this step: then the
        driver hands on_step_end the whole StepOutput instead."""
        if step >= self._next_due:
            return False
        self._ring.append((step, loop.epoch, wall, loss, step_time, batch_size, None, lrs, None))
        if wall >= self._flush_at:
            self._flush(loop)
        return True

    def _at_interval(self, loop: Loop, out: StepOutput, step: int, extras: dict | None):
        """The parts of a step that run at intervals: the train metric (its values join the
        step's extras, returned), layer stats, histograms, and the warm-up's measurements."""
        if out.target is not None and self._due("metric", step):
            t = time.perf_counter()
            reason = loop.metrics.ensure(out.output, out.target)
            if reason:
                self.store.event(wire.EV_INFO, f"metric: {reason}", step=step)
            extras = {**(extras or {}), **loop.metrics.batch_values(out.output, out.target)}
            self._measured("metric", time.perf_counter() - t)
        if self._stats_due:
            self._stats_due = False
            if self.late_update:
                self._after_pending = step
            else:
                self._stats_after(loop, step)
        if self.stats is not None and self._due("hist", step):
            t = time.perf_counter()
            for name, kind, lo, hi, counts in self.stats.histograms():
                self.store.histogram(step, name, kind, lo, hi, counts)
            self._measured("hist", time.perf_counter() - t)
        if step - self._base == WARMUP_STEPS:
            self._choose_intervals(loop)
        self._next_due = self._next_due_after(step)
        return extras

    def _flush(self, loop: Loop, wait: bool = False) -> None:
        """Read the steps recorded since the last flush and hand them to the store: on the CPU
        at once (a plain memory read each), on CUDA as one copy of every value, read back when
        it has landed (`wait`: now). Also the progress meta, every META_EVERY_S, and then the
        after_flush observers."""
        ring = self._ring
        if ring:
            self._ring = []
            tensors = []  # the loss of each step, then each step's device extras
            for rec in ring:
                tensors.append(rec[3])
                if rec[8]:
                    tensors += [v for v in rec[8].values() if _on_device(v)]
            if not self.deferred.cuda:
                self._steps_read(loop, ring, [t.item() for t in tensors])
            else:
                dev = tensors[0].device  # (a value elsewhere joins it: a copy, still async)
                flat = torch.stack([t.detach().float().reshape(()).to(dev) for t in tensors])
                for tag, values in self.deferred.push(flat, ("steps", ring)):
                    self._record_step(loop, tag, values)
        if wait:
            for tag, values in self.deferred.ready(wait=True):
                self._record_step(loop, tag, values)
        wall = time.time()
        if self._flush_at != -math.inf:
            self._flush_at = wall + FLUSH_S
        if wall >= self._rechoose_at:
            self._choose_intervals(loop, first=False)
        now = time.monotonic()
        if now >= self._next_meta:
            self._next_meta = now + META_EVERY_S
            self.publish(loop)
        for fn in self.after_flush:
            fn(loop, wall)

    def _steps_read(self, loop: Loop, ring: list[tuple], values: list[float]) -> None:
        """Store rows of the steps in `ring`, their device values read back (in _flush's order):
        the epoch's mean loss, the alert for a loss that is not finite, the printers' latest
        values. Per step on the training thread, in batches: locals, no calls it can spare."""
        i = 0
        names = self._lr_names
        append_time, latest = self.step_times.append, self.latest
        rows: list[tuple[int, int, float, dict]] = []  # to the store in one record
        put = rows.append
        acc_epoch, acc = None, None
        scal: dict[str, Any] = {}
        for step, epoch, wall, _, st, bs, dt, lrs, extras in ring:
            loss = values[i]
            i += 1
            scal = {"loss": loss}
            if st is not None:  # None: not known (a script's first step)
                append_time(st)
                scal["step_time"] = st
                scal["samples_per_s"] = bs / st if st > 0 else 0.0
            if dt is not None:  # None: a script loads its own data, unseen
                scal["data_time"] = dt
            if len(names) != len(lrs):
                names = self._lr_names = [wire.lr_name(j) for j in range(len(lrs))]
            scal.update(zip(names, lrs, strict=True))
            if extras:  # a dict-returning step's extra losses, other optimizers' LRs, metrics
                for k, v in extras.items():
                    if _on_device(v):
                        scal[k] = values[i]
                        i += 1
                    else:
                        scal[k] = float(v)  # a CPU tensor is a plain memory read
                latest.update(scal)  # (steps without extras: the last one's, below, is newest)
            if math.isfinite(loss):
                if epoch != acc_epoch:
                    acc, acc_epoch = self._epoch_acc(epoch), epoch
                acc[0] += loss
                acc[1] += 1
                self._loss_bad = False
            elif not self._loss_bad:
                self._loss_bad = True
                self._alert(loop, step, f"loss is {loss} at step {step}", {"loss": str(loss)})
            put((step, epoch, wall, scal))
        latest.update(scal)
        self.store.scalar_steps(wire.TRAIN, rows)

    def _epoch_acc(self, epoch: int) -> list:
        """[sum, count] of `epoch`'s finite train losses; a new epoch forgets the one before the
        last (no longer asked for)."""
        acc = self._epoch_loss.get(epoch)
        if acc is None:
            self._epoch_loss = {e: v for e, v in self._epoch_loss.items() if e >= epoch - 1}
            acc = self._epoch_loss[epoch] = [0.0, 0]
        return acc

    def _stats_after(self, loop: Loop, step: int) -> None:
        self._after_pending = None
        t = time.perf_counter()
        raw = self.stats.after_step()
        if raw is not None:
            for tag, values in self.deferred.push(raw[0], ("stats", step, raw[1])):
                self._record_step(loop, tag, values)
        self._measured("stats", self._stats_t + time.perf_counter() - t)

    def log(self, loop: Loop, phase: str, scalars: dict[str, Any]) -> None:
        """dltui.log(...): extra scalars at the current step; tensors read back deferred."""
        host: dict[str, float] = {}
        dev: dict[str, torch.Tensor] = {}
        for k, v in scalars.items():
            if isinstance(v, torch.Tensor):
                if v.numel() != 1:
                    raise ValueError(
                        f"dltui.log: {k} has {v.numel()} elements; log one number per name."
                    )
                if v.device.type == "cpu":
                    host[k] = float(v)  # a plain memory read, no sync
                else:
                    dev[k] = v.detach()
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                host[k] = float(v)
            else:
                raise TypeError(
                    f"dltui.log: {k} is {type(v).__name__}; log numbers or 1-element tensors."
                )
        if phase == wire.VAL:  # rare: read at once and treat like a validation result
            values = {**host, **{k: float(v) for k, v in dev.items()}}
            for cb in loop.callbacks:
                cb.on_validation_end(loop, values)
            return
        if self.deferred is None:
            self.deferred = Deferred(loop.device)
        # Inside a recipe's train_step the step under way is loop.step + 1.
        step = loop.step + 1 if getattr(loop, "stepping", False) else loop.step
        tag = ("log", step, loop.epoch, time.time(), list(dev), host)
        ready = self.deferred.push(list(dev.values()), tag) if dev else [(tag, [])]
        for t, values in ready:
            self._record_step(loop, t, values)

    def on_notice(
        self, loop: Loop, message: str, level: str = "warning", data: dict | None = None
    ) -> None:
        kind = wire.EV_ALERT if level in ("warning", "error") else wire.EV_INFO
        self.store.event(kind, message, step=loop.step, level=level, data=data)

    def publish(self, loop: Loop) -> None:
        """Progress for readers (the dashboard's header, `dltui status`)."""
        self.store.set_meta(
            progress={
                "step": loop.step,
                "epoch": loop.epoch,
                "batch": loop.batch,
                # optimizer steps in the epoch under way (run/progress.py's batch)
                "epoch_step": getattr(loop, "epoch_step", loop.batch),
                "steps_per_epoch": loop.steps_per_epoch,
                "total_steps": loop.total_steps,
                "epochs": loop.epochs,
                "lrs": loop.lrs(),
                "mode": loop.gate.mode,
                "optimizers": loop.all_lrs(),
                "paused": loop.gate.paused,
                "best_val_loss": _finite_or_none(loop.best_val_loss),
            }
        )

    def _record_step(self, loop: Loop, tag: tuple, values: list[float]) -> None:
        if tag[0] == "steps":
            self._steps_read(loop, tag[1], values)
            return
        if tag[0] == "stats":
            self._record_stats(loop, tag[1], tag[2], values)
            return
        if tag[0] == "log":
            _, step, epoch, wall, names, host = tag
            scal = {**host, **dict(zip(names, values, strict=True))}
            self.latest.update(scal)
            self.store.scalars(step, epoch, wire.TRAIN, wall, scal)

    def _record_stats(self, loop: Loop, step: int, have: list, values: list[float]) -> None:
        rows = []
        for name, raw in zip(self.stats.names, self.stats.rows(values, have), strict=True):
            row = StatRow(name, *(v if math.isfinite(v) else None for v in raw))
            rows.append(row)
            g = row.g_norm
            mean, seen = self._grad_mean.get(name, (0.0, 0))
            # An infinite gradient norm is an alert; NaN is a missing gradient, or a NaN loss
            # the loss alert has already reported (once, not once per layer and interval).
            if g is None and math.isinf(raw[wire.LAYER_STAT_COLUMNS.index("g_norm")]):
                self._alert(
                    loop, step, f"gradient of {name} is not finite at step {step}", {"layer": name}
                )
            elif g is not None and seen >= SPIKE_HISTORY and mean > 0 and g > SPIKE_FACTOR * mean:
                self._alert(
                    loop,
                    step,
                    f"gradient norm spike in {name} at step {step}: {g:.3g} "
                    f"({g / mean:.0f}x its recent mean {mean:.3g})",
                    {"layer": name, "g_norm": g},
                )
            if g is not None:
                self._grad_mean[name] = (g if not seen else 0.8 * mean + 0.2 * g, seen + 1)
        self.store.layer_stats(step, rows)

    def _alert(self, loop: Loop, step: int, message: str, data: dict) -> None:
        if self.pause_on_anomaly and not loop.gate.paused:
            loop.gate.hold()
            message += " (run paused: --pause-on-anomaly)"
            data["paused"] = True
        self.store.event(wire.EV_ALERT, message, step=step, level="warning", data=data)

    def on_validation_end(self, loop: Loop, values: dict[str, float]) -> None:
        self.store.scalars(loop.step, loop.epoch, wire.VAL, time.time(), values)
        loss = values.get("loss")
        if loss is not None and math.isfinite(loss) and loss < self._best_val:
            self._best_val = loss
            best = {
                "step": loop.step,
                "epoch": loop.epoch,
                **{f"val_{k}": v for k, v in values.items()},
            }
            self.store.set_meta(best=best)

    def on_checkpoint(self, loop: Loop, path: Any, tag: str, reason: str) -> None:
        self._flush(loop)  # the store holds the steps up to the checkpoint
        self.store.event(
            wire.EV_CHECKPOINT,
            f"checkpoint '{tag}' at step {loop.step} ({reason})",
            step=loop.step,
            data={"path": str(path), "tag": tag, "epoch": loop.epoch},
        )

    def on_idle(self, loop: Loop) -> None:
        self._flush(loop)
        for tag, values in self.deferred.ready():
            self._record_step(loop, tag, values)

    def on_run_end(self, loop: Loop, status: str, error: BaseException | None) -> None:
        if self._after_pending is not None:
            self._stats_after(loop, self._after_pending)
        self._flush(loop, wait=True)
        self.publish(loop)


def _on_device(v: Any) -> bool:
    """A tensor off the CPU: read back deferred (a CPU value is a plain memory read)."""
    return isinstance(v, torch.Tensor) and v.device.type != "cpu"


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
