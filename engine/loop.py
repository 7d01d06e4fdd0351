"""The driver: the built-in training loop over a recipe, extended by observer callbacks."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import wire
from .gate import Gate
from .metrics import MetricSet
from .recipe import Recipe


class Callback:
    """Observer hooks (like Lightning's Callback). The probe, printer and store hang off these."""

    def on_run_start(self, loop: Loop) -> None: ...
    def on_epoch_start(self, loop: Loop) -> None: ...
    def on_before_optimizer_step(self, loop: Loop) -> None: ...
    def on_step_end(self, loop: Loop, out: StepOutput) -> None: ...
    def on_validation_end(self, loop: Loop, values: dict[str, float]) -> None: ...
    def on_epoch_end(self, loop: Loop) -> None: ...
    def on_checkpoint(self, loop: Loop, path: Path, tag: str, reason: str) -> None: ...
    def on_idle(self, loop: Loop) -> None: ...
    def on_run_end(self, loop: Loop, status: str, error: BaseException | None) -> None: ...


@dataclass
class StepOutput:
    loss: torch.Tensor  # detached, still on the device: reading it is the probe's business
    output: Any
    target: Any
    batch_size: int
    step_time: float  # seconds, batch fetch to optimizer step done
    data_time: float  # seconds spent waiting for the batch
    wall: float
    lrs: list[float]  # of each param group, as used by this step


@dataclass
class Settings:
    epochs: int | None = None  # None: the recipe's
    max_steps: int | None = None
    seed: int | None = None
    device: str | None = None  # None: the recipe's, else CUDA when present
    checkpoint_dir: Path | None = None
    resume: dict | None = None  # a loaded checkpoint


def to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def batch_size_of(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.shape[0] if x.ndim else 1
    if isinstance(x, (list, tuple)) and x:
        return batch_size_of(x[0])
    if isinstance(x, dict) and x:
        return batch_size_of(next(iter(x.values())))
    return 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


class StopRun(Exception):
    """Raised inside the loop to end the run at once (second Ctrl-C)."""


class Loop:
    """Epochs x batches over a recipe. Reads steering state only from the gate, at boundaries."""

    def __init__(self, recipe: Recipe, settings: Settings, callbacks: list[Callback], gate: Gate) -> None:
        self.r = recipe
        self.s = settings
        self.callbacks = callbacks
        self.gate = gate
        self.epochs = settings.epochs or recipe.epochs
        dev = settings.device or recipe.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(dev)
        self.model = recipe.model.to(self.device)
        self.optimizer = recipe.optimizer
        self._move_optimizer_state()
        self.metrics = MetricSet(recipe.metrics, recipe.loss_fn, self.device)
        self.step = 0  # optimizer steps done in the whole run
        self.epoch = 0  # epochs completed
        self.batch = 0  # batches done in the current epoch
        self.best_val_loss = math.inf
        self.last_input: Any = None
        self.last_output: Any = None
        self.last_val: dict[str, float] = {}
        try:
            self.steps_per_epoch: int | None = len(recipe.train_loader)
        except TypeError:
            self.steps_per_epoch = None
        if settings.resume:
            self._restore(settings.resume)
        self.total_steps = self._total_steps()

    # -- helpers ---------------------------------------------------------------------------
    def _total_steps(self) -> int | None:
        total = self.steps_per_epoch * self.epochs if self.steps_per_epoch is not None else None
        if self.s.max_steps is not None:
            total = self.s.max_steps if total is None else min(total, self.s.max_steps)
        return total

    def _move_optimizer_state(self) -> None:
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    state[k] = v.to(self.device)

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def idle(self) -> None:
        """Called while the gate holds training (paused / eval): lets observers catch up."""
        self._emit("on_idle")

    def _forward(self, batch: Any, step_fn: Callable | None) -> tuple[torch.Tensor, Any, Any]:
        if step_fn is not None:
            loss, output, target = step_fn(self.model, batch)
        else:
            x, target = batch
            self.last_input = x
            output = self.model(x)
            loss = self.r.loss_fn(output, target)
        return loss, output, target

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> tuple[str, BaseException | None]:
        """Train to the end (or until stopped); returns (status, error)."""
        status, error = wire.FINISHED, None
        self._emit("on_run_start")
        try:
            while self.epoch < self.epochs and not self._should_stop():
                self._emit("on_epoch_start")
                completed = self._train_epoch()
                if self.gate.stop_now:
                    break
                if completed:
                    self._end_epoch()
                elif self._max_steps_reached():
                    if self.r.val_loader is not None:
                        self.validate()
                    self.save_checkpoint("last", reason="max steps")
            if self.gate.stop_reason is not None:
                status = wire.STOPPED
                if not self.gate.stop_now:
                    self.save_checkpoint("last", reason=self.gate.stop_reason)
        except (StopRun, KeyboardInterrupt):
            status = wire.STOPPED
        except Exception as e:
            status, error = wire.FAILED, e
        finally:
            self.gate.close()
        self._emit("on_run_end", status, error)
        return status, error

    def _max_steps_reached(self) -> bool:
        return self.s.max_steps is not None and self.step >= self.s.max_steps

    def _should_stop(self) -> bool:
        return self.gate.stop_reason is not None or self._max_steps_reached()

    def _train_epoch(self) -> bool:
        """One pass over the training data; False if it ended early (stop or max steps)."""
        self.model.train()
        skip, self.batch = self.batch, 0  # a mid-epoch resume skips the batches already done
        it = iter(self.r.train_loader)
        sched_per_step = self.r.scheduler is not None and self.r.scheduler_interval == "step"
        while True:
            self.gate.boundary(self)
            if self._should_stop():
                return False
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return True
            if self.batch < skip:
                self.batch += 1
                continue
            batch = to_device(batch, self.device)
            t1 = time.perf_counter()
            loss, output, target = self._forward(batch, self.r.train_step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._emit("on_before_optimizer_step")
            self.optimizer.step()
            lrs = self.lrs()  # the lrs this step used, before the scheduler moves them
            if sched_per_step:
                self.r.scheduler.step()
            self.step += 1
            self.batch += 1
            self.last_output = output.detach() if isinstance(output, torch.Tensor) else output
            t2 = time.perf_counter()
            out = StepOutput(loss.detach(), output, target, batch_size_of(target), t2 - t0, t1 - t0, time.time(), lrs)
            self._emit("on_step_end", out)

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        val_loss = None
        if self.r.val_loader is not None:
            val_loss = self.validate().get("loss")
        sched = self.r.scheduler
        if sched is not None and self.r.scheduler_interval == "epoch":
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                # Fed the validation loss (the training loss when there is no validation data).
                metric = val_loss if val_loss is not None else self._epoch_train_loss()
                if metric is not None:
                    sched.step(metric)
            else:
                sched.step()
        self.save_checkpoint("last", reason="epoch end")
        if val_loss is not None and val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            self.save_checkpoint("best", reason=f"val loss {val_loss:.4g}")
        self._emit("on_epoch_end")

    def _epoch_train_loss(self) -> float | None:
        for cb in self.callbacks:
            v = getattr(cb, "epoch_train_loss", None)
            if v is not None:
                return v
        return None

    @torch.no_grad()
    def validate(self, loader: Any = None) -> dict[str, float]:
        """A pass over the validation data in eval() under no_grad(); records phase 'val'."""
        loader = loader or self.r.val_loader or self.r.train_loader
        was_training = self.model.training
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = 0
        try:
            for batch in loader:
                batch = to_device(batch, self.device)
                loss, output, target = self._forward(batch, self.r.eval_step)
                n = batch_size_of(target)
                total += loss.detach().double() * n  # summed on the device; read once at the end
                count += n
                self.metrics.ensure(output, target)
                self.metrics.update_val(output, target)
                self.gate.service(self)  # commands keep flowing during a long validation
                if self.gate.stop_now:
                    raise StopRun()
        finally:
            self.model.train(was_training)
        values = {"loss": float(total) / max(count, 1), **self.metrics.compute_val()}
        self.last_val = values
        self._emit("on_validation_end", values)
        return values

    def eval_pass(self) -> dict[str, float]:
        """Eval mode's pass: validation data, else the training data."""
        return self.validate(self.r.val_loader or self.r.train_loader)

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, tag: str, reason: str = "") -> Path | None:
        if self.s.checkpoint_dir is None:
            return None
        self.s.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        sched = self.r.scheduler
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "best_val_loss": self.best_val_loss,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }
        path = self.s.checkpoint_dir / f"{tag}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # never leaves a half-written checkpoint behind
        self._emit("on_checkpoint", path, tag, reason)
        return path

    def _restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self._move_optimizer_state()
        if ck.get("scheduler") is not None and self.r.scheduler is not None:
            self.r.scheduler.load_state_dict(ck["scheduler"])
        self.step, self.epoch, self.batch = ck["step"], ck["epoch"], ck.get("batch", 0)
        self.best_val_loss = ck.get("best_val_loss", math.inf)
        rng = ck.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "python" in rng:
            random.setstate(rng["python"])
