"""The driver: the built-in training loop over a recipe, extended by observer callbacks."""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dltui.run import wire

from .devices import run_device
from .gate import Gate
from .metrics import MetricSet
from .recipe import Recipe
from .step import Result, StepContext, Stepper, StepRefused, read_result


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

    def on_notice(
        self, loop: Loop, message: str, level: str = "warning", data: dict | None = None
    ) -> None:
        """Something the user should know that does not stop the run (a skipped fp16 step, a
        dropped metric, an optimizer step refused during evaluation)."""


def hooks_of(callbacks: list, hook: str, cache: dict) -> list[tuple[Any, Callable]]:
    """(callback, bound method) of each callback that implements `hook`: the no-op methods of
    Callback are left out, so a step pays only for observers that do something. `cache` (the
    driver's) keeps the list until the callbacks change."""
    got = cache.get(hook)
    if got is not None and got[0] == len(callbacks):
        return got[1]
    base = getattr(Callback, hook, None)
    found = []
    for cb in callbacks:
        fn = getattr(cb, hook, None)  # an observer that is no Callback may lack some hooks
        if fn is not None and (base is None or getattr(fn, "__func__", None) is not base):
            found.append((cb, fn))
    cache[hook] = (len(callbacks), found)
    return found


class EngineError(Exception):
    """dltui's own code failed, not the recipe's: `part` names it ("writing a checkpoint"),
    the original exception is the __cause__."""

    def __init__(self, part: str, cause: BaseException) -> None:
        super().__init__(f"{part}: {type(cause).__name__}: {cause}")
        self.part = part
        self.__cause__ = cause


@dataclass
class StepOutput:
    loss: torch.Tensor  # detached, still on the device: reading it is the probe's business
    output: Any
    target: Any
    batch_size: int  # samples: the input's leading dimension, summed over micro-batches
    step_time: float  # seconds, batch fetch to optimizer step done
    data_time: float  # seconds spent waiting for the batch
    wall: float
    lrs: list[float]  # of each param group of the main optimizer, as used by this step
    # Further train scalars of this step: a dict-returning step's other entries (detached device
    # tensors or floats), other optimizers' LRs (wire.lr_name(i, name)), grad_norm[/name] when
    # clipping, tokens_per_s for token inputs.
    scalars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Settings:
    epochs: int | None = None  # None: the recipe's
    max_steps: int | None = None
    seed: int | None = None
    device: str | None = None  # None: the recipe's, else CUDA when present
    checkpoint_dir: Path | None = None
    resume: dict | None = None  # a loaded checkpoint
    context: Any = None  # the run's dltui.Context (None: the recipe's, else defaults)


def to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def _needs_move(x: Any, device: torch.device) -> bool:
    """Does any tensor of this batch live off `device`? (Asked of the first batch: a loader
    yields its batches on one device.)"""
    if isinstance(x, torch.Tensor):
        return x.device != device
    if isinstance(x, (list, tuple)):
        return any(_needs_move(v, device) for v in x)
    if isinstance(x, dict):
        return any(_needs_move(v, device) for v in x.values())
    return False


def batch_size_of(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.shape[0] if x.ndim else 1
    if isinstance(x, (list, tuple)) and x:
        return batch_size_of(x[0])
    if isinstance(x, dict) and x:
        return batch_size_of(next(iter(x.values())))
    return 1


def tokens_of(x: Any) -> int:
    """Tokens in a batch whose input is [B, T] integers (a language model's), else 0."""
    while isinstance(x, (list, tuple, dict)) and x:
        x = x[0] if not isinstance(x, dict) else next(iter(x.values()))
    if (
        isinstance(x, torch.Tensor)
        and x.ndim == 2
        and not x.is_floating_point()
        and x.dtype != torch.bool
    ):
        return x.numel()
    return 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The torch.Generators a DataLoader shuffles with (its own, its sampler's), in a fixed order."""
    found: dict[int, torch.Generator] = {}
    for holder in (
        loader,
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        g = getattr(holder, "generator", None)
        if isinstance(g, torch.Generator):
            found.setdefault(id(g), g)
    return list(found.values())


def rng_state(loader: Any = None) -> dict[str, Any]:
    """Every RNG a training step or a shuffle draws from: torch (CPU and CUDA), Python, NumPy,
    and the loader's own generators."""
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        # As plain data (name, tensor, ints, float): numpy arrays would make the checkpoint
        # unloadable by torch.load's default weights_only=True.
        name, keys, pos, has_gauss, cached = np.random.get_state()
        out["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)
    except ImportError:
        pass
    out["loader"] = [g.get_state() for g in _loader_generators(loader)]
    return out


def set_rng_state(state: dict[str, Any], loader: Any = None) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        try:
            import numpy as np

            name, keys, pos, has_gauss, cached = state["numpy"]
            if isinstance(keys, torch.Tensor):
                keys = keys.numpy().astype(np.uint32)
            np.random.set_state((name, keys, int(pos), int(has_gauss), float(cached)))
        except ImportError:
            pass
    gens = _loader_generators(loader)
    if len(state.get("loader") or []) == len(gens):
        for g, st in zip(gens, state["loader"], strict=True):
            g.set_state(st)


class RecipeExit(Exception):
    """The recipe's code called sys.exit(code) during training: the run ends there, failed
    (stopped for code 0 / None), with a checkpoint; the SystemExit is the __cause__."""

    def __init__(self, code: Any) -> None:
        super().__init__(f"the recipe's code called sys.exit({code!r})")
        self.code = code


class StopRun(Exception):
    """Raised inside the loop to end the run at once (second Ctrl-C)."""


# How a pass over the training data ended.
DONE, EARLY, EMPTY = "done", "early", "empty"
# Epoch-end checkpoints may take this fraction of training time: with short epochs `last.pt` is
# written once every (time to write it) / CHECKPOINT_BUDGET seconds, not at every epoch end. The
# run's final state, a stop, `c` and --max-steps always write one.
CHECKPOINT_BUDGET = 0.002


class Loop:
    """Epochs x batches over a recipe. Reads steering state only from the gate, at boundaries."""

    def __init__(
        self, recipe: Recipe, settings: Settings, callbacks: list[Callback], gate: Gate
    ) -> None:
        import dltui

        self.r = recipe
        self.s = settings
        self.callbacks = callbacks
        self._hooks: dict[str, tuple[int, list]] = {}  # hook -> the callbacks that implement it
        self.gate = gate
        self.context = settings.context or recipe.context or dltui.Context()
        self.epochs = settings.epochs or recipe.epochs
        self.device = run_device(settings.device, recipe.device, recipe.model)
        self.model = recipe.model.to(self.device)
        self.optimizers: dict[str, torch.optim.Optimizer] = dict(recipe.optimizers)
        self.optimizer = next(iter(self.optimizers.values()))  # the run's main optimizer
        self.schedulers: dict[str, Any] = dict(recipe.schedulers)
        self._move_optimizer_state()
        self.metrics = MetricSet(recipe.metrics, recipe.loss_fn, self.device, notify=self.notice)
        self.stepper = Stepper(
            recipe,
            self.device,
            functools.partial(self._emit, "on_before_optimizer_step"),
            self.notice,
        )
        self.ctx = StepContext(self)
        # The common case steps through _plain_window: one batch per step, the built-in step, no
        # autocast, no closure optimizer.
        self._plain = (
            recipe.accumulate == 1
            and recipe.train_step is None
            and self.stepper.dtype is None
            and not self.stepper.closure_driven
        )
        self.step = 0  # optimizer steps done in the whole run
        self.epoch = 0  # epochs completed
        self.current_epoch = 0  # the epoch under way (ctx.epoch), 0-based
        self.batch = 0  # batches done in the current epoch
        self.stepping = False  # inside a step's micro-batches: the step under way is step + 1
        self.epoch_step = 0  # optimizer steps done in the current epoch
        self.best_val_loss = math.inf
        self._ck_cost: float | None = None  # seconds the last checkpoint took to write
        self._ck_at = time.monotonic()  # when it was written (or the run began)
        self._ck_told = False
        self.last_input: Any = None
        self._last_output: Any = None
        self._move: bool | None = None  # do batches need moving to the device? (1st batch)
        self._main = next(iter(self.optimizers))  # the main optimizer's name
        self._tokens: bool | None = None  # are the inputs token ids? (decided on the 1st batch)
        self.last_val: dict[str, float] = {}
        self.epoch_rng: dict[str, Any] | None = None  # the RNGs as the current epoch began
        self.steps_per_epoch = self._steps_per_epoch()
        if settings.resume:
            self._restore(settings.resume)
        self.total_steps = self._total_steps()

    # -- helpers ---------------------------------------------------------------------------
    def _steps_per_epoch(self) -> int | None:
        try:
            n = math.ceil(len(self.r.train_loader) / self.r.accumulate)
        except TypeError:
            n = None  # no __len__: an epoch ends when the data does (or at steps_per_epoch)
        cap = self.r.steps_per_epoch
        return cap if n is None else (n if cap is None else min(n, cap))

    def _total_steps(self) -> int | None:
        total = self.steps_per_epoch * self.epochs if self.steps_per_epoch is not None else None
        if self.s.max_steps is not None:
            total = self.s.max_steps if total is None else min(total, self.s.max_steps)
        return total

    def _move_optimizer_state(self) -> None:
        for opt in self.optimizers.values():
            for state in opt.state.values():
                for k, v in state.items():
                    if isinstance(v, torch.Tensor) and k != "step":
                        state[k] = v.to(self.device)

    def _emit(self, hook: str, *args: Any) -> None:
        for cb, fn in hooks_of(self.callbacks, hook, self._hooks):
            try:
                fn(self, *args)
            except (StopRun, EngineError):
                raise
            except Exception as e:  # an observer is dltui's code: never "the recipe's error"
                part = getattr(cb, "part", None) or type(cb).__name__
                raise EngineError(f"{part} ({hook})", e) from e

    def notice(self, message: str, level: str = "warning", data: dict | None = None) -> None:
        """Tell observers something the user should know; the run goes on."""
        self._emit("on_notice", message, level, data)

    def lrs(self) -> list[float]:
        """The main optimizer's LR of each param group."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def all_lrs(self) -> dict[str, list[float]]:
        """Every optimizer's LRs by name, the main one first."""
        return {n: [float(g["lr"]) for g in o.param_groups] for n, o in self.optimizers.items()}

    def idle(self) -> None:
        """Called while the gate holds training (paused / eval): lets observers catch up."""
        self._emit("on_idle")

    def _forward(self, batch: Any, train: bool) -> Result:
        fn, form = (
            (self.r.train_step, self.r.train_form)
            if train
            else (self.r.eval_step, self.r.eval_form)
        )
        if self.stepper.dtype is None:  # no autocast: no context to enter, step after step
            return self._call(fn, form, batch, train)
        with self.stepper.autocast():
            return self._call(fn, form, batch, train)

    def _call(self, fn: Any, form: str | None, batch: Any, train: bool) -> Result:
        if fn is None:
            x, target = batch
            if train:  # a val batch must not pair with the last train step's output
                self.last_input = x
            output = self.model(x)
            return Result(_one_loss(self.r.loss_fn(output, target)), output, target)
        value = fn(batch, self.ctx) if form == "ctx" else fn(self.model, batch)
        return read_result(value, "train_step" if train else "eval_step")

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> tuple[str, BaseException | None]:
        """Train to the end (or until stopped); returns (status, error)."""
        status, error = wire.FINISHED, None
        self._emit("on_run_start")
        try:
            self._tell_about_the_plan()
            while self.epoch < self.epochs and not self._should_stop():
                self._emit("on_epoch_start")
                self.current_epoch = self.epoch
                if self.r.on_epoch_start is not None:
                    self.r.on_epoch_start(self.ctx)
                ended = self._train_epoch()
                if self.gate.stop_now:
                    break
                if ended == DONE:
                    self._end_epoch()
                elif ended == EMPTY:
                    self.notice(
                        f"train_loader has no batches left; the run ends at step {self.step}.",
                        "info",
                    )
                    self.save_checkpoint("last", reason="data ran out")
                    break
                elif self._max_steps_reached():
                    val_loss = (
                        self.validate().get("loss") if self.r.val_loader is not None else None
                    )
                    self.save_checkpoint("last", reason="max steps")
                    self._keep_if_best(val_loss)
            if self.gate.stop_reason is not None:
                status = wire.STOPPED
                if not self.gate.stop_now:
                    self.save_checkpoint("last", reason=self.gate.stop_reason)
        except (StopRun, KeyboardInterrupt):
            status = wire.STOPPED
        except SystemExit as e:  # sys.exit() in train_step, a hook, a loader: an end, not a crash
            status, error = self._exited(e)
        except Exception as e:
            status, error = wire.FAILED, e
        finally:
            self.gate.close()
        self._emit("on_run_end", status, error)
        return status, error

    def _exited(self, e: SystemExit) -> tuple[str, BaseException | None]:
        """The recipe asked the process to exit: keep a checkpoint of the last whole step, and
        end the run failed (a nonzero status) or stopped (0 / None), never silently."""
        exit_ = RecipeExit(e.code)
        exit_.__cause__ = e
        try:
            self.save_checkpoint("last", reason=f"the recipe called sys.exit({e.code!r})")
        except EngineError as ck_error:
            self.notice(f"no checkpoint after sys.exit: {ck_error}", "warning")
        if e.code in (None, 0):
            self.notice(
                f"the recipe called sys.exit({e.code!r}) at step {self.step + 1}; the run stops.",
                "info",
            )
            return wire.STOPPED, None
        return wire.FAILED, exit_

    def _tell_about_the_plan(self) -> None:
        if self.steps_per_epoch is None and self.step == 0:
            self.notice(
                "train_loader has no length and the recipe sets no steps_per_epoch: an epoch ends "
                "when the data does, so progress and ETA are unknown.",
                "info",
            )
        planned = (self.total_steps or 0) - self.step
        for name, s in self.schedulers.items():
            if self.r.scheduler_interval == "step" and isinstance(
                s, torch.optim.lr_scheduler.OneCycleLR
            ):
                left = s.total_steps - s.last_epoch
                if planned > left:
                    self.notice(
                        f"scheduler {name!r} (OneCycleLR) has {left} steps left but this run plans "
                        f"{planned}; its LR will hold at the end. Size it from ctx.epochs.",
                        "warning",
                        {"optimizer": name},
                    )

    def _max_steps_reached(self) -> bool:
        return self.s.max_steps is not None and self.step >= self.s.max_steps

    def _should_stop(self) -> bool:
        return self.gate.stop_reason is not None or self._max_steps_reached()

    def _train_epoch(self) -> str:
        """One pass over the training data: DONE (the data or steps_per_epoch ran out), EARLY
        (stop or max steps) or EMPTY (not one batch: nothing left to train on)."""
        self.model.train()
        skip, self.batch = self.batch, 0
        if skip == 0:
            # What this epoch's shuffle is drawn from: a mid-epoch checkpoint keeps it, so a
            # resume deals the very same batches instead of a new shuffle.
            self.epoch_rng = rng_state(self.r.train_loader)
            it = iter(self.r.train_loader)
        else:  # a mid-epoch resume: the epoch's own shuffle, then skip the batches already done
            now = rng_state(self.r.train_loader)
            if self.epoch_rng is not None:
                set_rng_state(self.epoch_rng, self.r.train_loader)
            it = iter(self.r.train_loader)
            for _ in itertools.islice(it, skip):
                self.batch += 1
            set_rng_state(now, self.r.train_loader)  # the RNGs as they were at the checkpoint
        first, gate = True, self.gate
        window = self._plain_window if self._plain else self._window
        while True:
            if gate.busy:  # one attribute read when nothing is pending
                gate.boundary(self)
                if gate.stop_reason is not None:
                    return EARLY
            if self._max_steps_reached():
                return EARLY
            if self.r.steps_per_epoch is not None and self.epoch_step >= self.r.steps_per_epoch:
                return DONE
            self.stepping = True
            try:
                out = window(it)
            finally:
                self.stepping = False
            if out is None:
                return EMPTY if first and not skip else DONE
            first = False
            if out is not False:
                self._emit("on_step_end", out)

    def _plain_window(self, it: Any) -> StepOutput | None:
        """_window for the common case, in far fewer calls (it runs at every step): one batch per
        step, the built-in step (model(x), loss_fn(output, target)), no autocast, no closure."""
        st = self.stepper
        st.begin_window()
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return None
        if self._move is None:
            self._move = _needs_move(batch, self.device)
            self._tokens = tokens_of(batch) > 0
        if self._move:
            batch = to_device(batch, self.device)
        t1 = time.perf_counter()
        self.batch += 1
        x, target = batch
        self.last_input = x
        output = self.model(x)
        loss = _one_loss(self.r.loss_fn(output, target))
        loss.backward()
        st.step_all()
        st.finish_window()
        self.step += 1
        self.epoch_step += 1
        self._last_output = output
        t2 = time.perf_counter()
        if len(st.stepped) == 1 and not st.grad_norms and not self._tokens:
            lrs, scalars = st.stepped[self._main], {}
        else:
            tokens = tokens_of(batch) if self._tokens else 0
            lrs, scalars = self._step_scalars(st, tokens, t2 - t0, None, 1)
        size = x.shape[0] if isinstance(x, torch.Tensor) and x.ndim else batch_size_of(batch)
        return StepOutput(
            loss.detach(), output, target, size, t2 - t0, t1 - t0, time.time(), lrs, scalars
        )

    def _step_scalars(
        self, st: Stepper, tokens: int, seconds: float, extras: dict | None, m: int
    ) -> tuple[list[float], dict[str, Any]]:
        """The main optimizer's LRs as this step used them, and the step's further scalars:
        `extras` (summed over `m` micro-batches) as means, the other optimizers' LRs, clipping's
        grad norms, tokens/s."""
        lrs = st.lrs_used()
        scalars = {name: v / m for name, v in extras.items()} if extras else {}
        main = self._main
        if len(lrs) > 1:
            for name, values in lrs.items():
                if name != main:
                    scalars.update({wire.lr_name(i, name): v for i, v in enumerate(values)})
        for name, norm in st.grad_norms.items():
            scalars["grad_norm" if name == main else f"grad_norm/{name}"] = norm
        if tokens and seconds > 0:
            scalars["tokens_per_s"] = tokens / seconds
        return lrs[main], scalars

    def _window(self, it: Any) -> StepOutput | bool | None:
        """One optimizer step over `accumulate` micro-batches. None: no data left; False: fp16
        overflow skipped the update (an event, not a step)."""
        st, k = self.stepper, self.r.accumulate
        st.begin_window()
        t0 = time.perf_counter()
        data_time, m, samples, tokens = 0.0, 0, 0, 0
        loss_sum: torch.Tensor | None = None
        extras: dict[str, Any] | None = None
        res: Result | None = None
        for micro in range(k):
            tf = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            if self._move is None:
                self._move = _needs_move(batch, self.device)
            if self._move:
                batch = to_device(batch, self.device)
            data_time += time.perf_counter() - tf
            m, self.batch, self.ctx.micro = m + 1, self.batch + 1, micro
            samples += batch_size_of(batch)
            if self._tokens is None:  # is the input [B, T] integers (a language model's)?
                self._tokens = tokens_of(batch) > 0
            if self._tokens:
                tokens += tokens_of(batch)
            st.begin_micro(last=micro == k - 1)
            if st.closure_driven:
                res = self._closure_step(batch)
            else:
                res = self._forward(batch, train=True)
                if not st.owned and not st.backward_called:
                    st.backward(res.loss)
            loss = res.loss.detach()
            loss_sum = loss if loss_sum is None else loss_sum + loss
            if res.scalars:
                extras = extras if extras is not None else {}
                for name, v in res.scalars.items():
                    extras[name] = extras.get(name, 0.0) + v
        if m == 0:
            return None
        if not st.owned and not st.closure_driven:
            st.scale = k / m
            st.step_all()
        if not st.finish_window(partial_scale=k / m):
            self.notice(
                f"fp16: gradients overflowed at step {self.step + 1}; the update was skipped and "
                f"the loss scale lowered to {st.scaler.get_scale():g}.",
                "warning",
                {"optimizers": st.skipped},
            )
            return False
        self.step += 1
        self.epoch_step += 1
        if self.r.train_step is not None:
            self.last_input = _first_tensor(batch)
        self._last_output = res.output  # detached when read (last_output): not every step
        t2 = time.perf_counter()
        lrs, scalars = self._step_scalars(st, tokens, t2 - t0, extras, m)
        return StepOutput(
            loss_sum if m == 1 else loss_sum / m,
            res.output,
            res.target,
            samples,
            t2 - t0,
            data_time,
            time.time(),
            lrs,
            scalars,
        )

    @property
    def last_output(self) -> Any:
        """The model's output of the last training step, detached."""
        out = self._last_output
        return out.detach() if isinstance(out, torch.Tensor) else out

    @last_output.setter
    def last_output(self, value: Any) -> None:
        self._last_output = value

    def _closure_step(self, batch: Any) -> Result:
        """A closure optimizer (LBFGS): forward and backward run inside its step, as often as
        it asks; the first evaluation is the step's loss."""
        first: list[Result] = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            self.stepper.backward_called = False
            res = self._forward(batch, train=True)
            if not self.stepper.backward_called:
                self.stepper.backward(res.loss)
            if not first:
                first.append(res)
            return res.loss

        self.stepper.step_one(next(iter(self.optimizers)), closure)
        return first[0]

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        self.epoch_step = 0
        val_loss = None
        if self.r.val_loader is not None:
            val_loss = self.validate().get("loss")
        if self.r.scheduler_interval == "epoch":
            # ReduceLROnPlateau is fed the validation loss (the training loss without validation).
            metric = val_loss if val_loss is not None else self._epoch_train_loss()
            for name in self.schedulers:
                self.stepper.step_scheduler(name, metric)
        if self.r.on_epoch_end is not None:
            self.r.on_epoch_end(self.ctx)
        if self.epoch >= self.epochs or self._epoch_checkpoint_due():
            self.save_checkpoint("last", reason="epoch end")
        self._keep_if_best(val_loss)
        self._emit("on_epoch_end")

    def _epoch_checkpoint_due(self) -> bool:
        """Is an epoch-end checkpoint within CHECKPOINT_BUDGET of training time? (Said once,
        the first time one is left out.)"""
        cost = self._ck_cost
        if cost is None or self.s.checkpoint_dir is None:
            return True
        every = cost / CHECKPOINT_BUDGET
        if time.monotonic() - self._ck_at >= every:
            return True
        if not self._ck_told:
            self._ck_told = True
            self.notice(
                f"epochs are short (writing a checkpoint takes {cost * 1e3:.0f} ms): last.pt is "
                f"written at an epoch end at most every {every:.0f} s, to keep checkpoints under "
                f"{CHECKPOINT_BUDGET:.1%} of training time; the final state, a stop and `c` "
                "always write one.",
                "info",
            )
        return False

    def _keep_if_best(self, val_loss: float | None) -> None:
        if val_loss is not None and val_loss < self.best_val_loss:
            self.best_val_loss = val_loss
            self.save_checkpoint("best", reason=f"val loss {val_loss:.4g}")

    def _epoch_train_loss(self) -> float | None:
        """The mean training loss of the epoch that just ended (self.epoch counts it), from the
        observer that keeps it (the probe)."""
        for cb in self.callbacks:
            mean = getattr(cb, "epoch_train_loss", None)
            v = mean(self, self.epoch - 1) if mean is not None else None
            if v is not None:
                return v
        return None

    @torch.no_grad()
    def validate(self, loader: Any = None) -> dict[str, float]:
        """A pass over the validation data in eval() under no_grad(); records phase 'val'.
        No optimizer steps during it: an attempt is refused with a notice, the run goes on."""
        loader = loader if loader is not None else self.r.val_loader
        was_training = self.model.training
        self.model.eval()
        self.ctx.phase = wire.VAL
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        extras: dict[str, Any] = {}
        try:
            with self.stepper.evaluating():
                for batch in loader:
                    batch = to_device(batch, self.device)
                    res = self._forward(batch, train=False)
                    n = batch_size_of(batch)
                    total += (
                        res.loss.detach().double() * n
                    )  # summed on the device; read once at the end
                    for name, v in res.scalars.items():
                        extras[name] = extras.get(name, 0.0) + v * n
                    count += n
                    if isinstance(res.output, torch.Tensor) and res.target is not None:
                        self.metrics.ensure(res.output, res.target)
                        self.metrics.update_val(res.output, res.target)
                    self.gate.service(self)  # commands keep flowing during a long validation
                    if self.gate.stop_now:
                        raise StopRun()
        except StepRefused as e:
            self.notice(
                f"eval_step stepped optimizer {e.name!r} during evaluation: refused, and this "
                "evaluation pass was abandoned; training goes on. Evaluation must not train: keep "
                "the updates in train_step.",
                "warning",
                {"optimizer": e.name},
            )
            self.metrics.compute_val()  # resets the half-fed val metrics
            return {}
        finally:
            self.model.train(was_training)
            self.ctx.phase = wire.TRAIN
        values = {"loss": float(total) / max(count, 1), **self.metrics.compute_val()}
        values.update({name: float(v) / max(count, 1) for name, v in extras.items()})
        self.last_val = values
        self._emit("on_validation_end", values)
        return values

    def eval_pass(self) -> dict[str, float]:
        """Eval mode's pass: validation data, else an epoch's worth of the training data."""
        if self.r.val_loader is not None:
            return self.validate(self.r.val_loader)
        loader = self.r.train_loader
        if isinstance(loader, Iterator) or self.steps_per_epoch is None:  # a stream, or no end
            self.notice(
                "nothing to evaluate on: the recipe has no val_loader and its train_loader "
                "has no end; define val_loader.",
                "warning",
            )
            return {}
        if self.r.steps_per_epoch is not None:
            loader = itertools.islice(loader, self.steps_per_epoch * self.r.accumulate)
        return self.validate(loader)

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, tag: str, reason: str = "", must: bool = False) -> Path | None:
        """Write checkpoints/<tag>.pt (to a .tmp first, so a failure never leaves half a file).
        If it can't be written (a full disk, a read-only folder) the run is told and goes on from
        the previous checkpoint; `must` (an explicit request) raises EngineError instead."""
        if self.s.checkpoint_dir is None:
            return None
        main = next(iter(self.optimizers))
        scaler = self.stepper.scaler
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),  # the main one, where older readers look
            "scheduler": self.r.scheduler.state_dict() if self.r.scheduler is not None else None,
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "main_optimizer": main,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "epoch_step": self.epoch_step,
            "best_val_loss": self.best_val_loss,
            "rng": rng_state(self.r.train_loader),
            "epoch_rng": self.epoch_rng if self.batch else None,
        }
        path = self.s.checkpoint_dir / f"{tag}.pt"
        tmp = path.with_suffix(".pt.tmp")
        try:
            self.s.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            # Our own file object: a write that runs out of space then carries its errno.
            t0 = time.monotonic()
            with open(tmp, "wb") as f:
                torch.save(state, f)
            os.replace(tmp, path)  # never leaves a half-written checkpoint behind
            self._ck_at = time.monotonic()
            self._ck_cost = self._ck_at - t0
        except Exception as e:  # a full disk, a read-only directory: dltui's part, not the recipe's
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if must or not out_of_space(e):  # a wrong folder will not fix itself: fail
                raise EngineError(f"checkpoint writer (writing {path})", e) from e
            self._checkpoint_failed(path, e)
            return None
        self._emit("on_checkpoint", path, tag, reason)
        return path

    def _checkpoint_failed(self, path: Path, e: BaseException) -> None:
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:,.0f} MiB free"
        except OSError:
            free = "free space unknown"
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        first = (str(cause or e).strip() or type(e).__name__).splitlines()[0]
        kept = " (the previous one is kept)" if path.exists() else ""
        self.notice(
            f"checkpoint not written at step {self.step}: {first} ({free}); training goes on, "
            f"the next checkpoint is tried as usual{kept}. Free some space (disk full?).",
            "error",
            {"path": str(path)},
        )

    def _restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        main = next(iter(self.optimizers))
        opts = ck.get("optimizers") or {main: ck["optimizer"]}
        if list(opts) != list(self.optimizers):
            raise KeyError(
                f"the checkpoint holds the optimizers {', '.join(opts)} but this recipe has "
                f"{', '.join(self.optimizers)}"
            )
        for name, sd in opts.items():
            self.optimizers[name].load_state_dict(sd)
        self._move_optimizer_state()
        scheds = ck.get("schedulers")
        if scheds is None:
            scheds = {main: ck["scheduler"]} if ck.get("scheduler") is not None else {}
        for name, sd in scheds.items():
            if name in self.schedulers and sd is not None:
                self.schedulers[name].load_state_dict(sd)
        if ck.get("scaler") is not None and self.stepper.scaler is not None:
            self.stepper.scaler.load_state_dict(ck["scaler"])
        self.step, self.epoch, self.batch = ck["step"], ck["epoch"], ck.get("batch", 0)
        self.current_epoch = self.epoch
        self.epoch_step = ck.get("epoch_step", math.ceil(self.batch / self.r.accumulate))
        self.best_val_loss = ck.get("best_val_loss", math.inf)
        set_rng_state(ck.get("rng") or {}, self.r.train_loader)
        self.epoch_rng = ck.get("epoch_rng")


def out_of_space(e: BaseException | None) -> bool:
    """Did this fail because the disk (or a quota, or the file-size limit) ran out? torch.save
    wraps the OSError; it is in the chain."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _one_loss(loss: Any) -> torch.Tensor:
    """loss_fn's value, which backward() needs as one number: say so, naming loss_fn, instead of
    autograd's "grad can be implicitly created only for scalar outputs" from deep inside."""
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss
    what = (
        f"a tensor of shape {list(loss.shape)}"
        if isinstance(loss, torch.Tensor)
        else (f"a {type(loss).__name__}")
    )
    raise TypeError(
        f"`loss_fn` returned {what}; it must return one number per batch (a 0-d tensor). A loss "
        "with reduction='none' needs .mean() (or reduction='mean')."
    )


def _first_tensor(x: Any) -> Any:
    while isinstance(x, (list, tuple, dict)) and x:
        x = x[0] if not isinstance(x, dict) else next(iter(x.values()))
    return x if isinstance(x, torch.Tensor) else None
