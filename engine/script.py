"""Script mode: run the user's own training script as __main__, observed through torch's hooks.

The script runs unchanged on the training thread. dltui sees it through:
- the global optimizer step pre/post hooks: steps, LRs, the control gate (pause, step N, LR
  factor, eval, checkpoint, stop) at each step of the run's optimizer (the first one created);
- `torch.autograd.backward`, wrapped: the scalar tensor backward() is called on is the loss
  (with GradScaler, the unscaled one), averaged over the backward calls of one optimizer step;
- the modules that own the optimizers' parameters, found by name in the script's frames.
Nothing here draws from torch's random generator or changes torch's global settings.
"""

from __future__ import annotations

import math
import sys
import time
import weakref
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from dltui.run import wire
from dltui.run.scriptfile import run_as_main

from .discover import ModelSet, ParamView, find_models, named_objects
from .gate import Gate
from .loop import Callback, StepOutput, hooks_of

PROMOTE_AFTER = 50  # another optimizer's steps before it replaces a run optimizer that never steps
# The model's forward pre-hook (the batch size, the input the Tensors tab shows) is on for the first
# INPUT_WARMUP steps, then for one step in INPUT_EVERY and whenever the gate has work (a paused or
# stepped run sees its current input): any hook sends every forward of the module through torch's
# slow call path, ~12 µs a step here, and turning it on and off costs a few µs more. Between
# sampled steps the batch size is the last one seen (a running run's Tensors tab input: at most
# INPUT_EVERY steps old, a few a second).
INPUT_WARMUP = 20
INPUT_EVERY = 64


UNSEEN = -1  # a backward call's loss whose divisor was not looked for (see _record_backward)


class StopScript(BaseException):
    """Raised at a step boundary to end the script (`stop`, Ctrl-C, --max-steps).

    A BaseException, so the script's own `except Exception:` does not swallow it."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _divisor(t: torch.Tensor) -> float | None:
    """k when t was computed as `x / k` (or `x * (1/k)`) with k a plain number, else None."""
    fn = t.grad_fn
    if fn is None:
        return None
    name = type(fn).__name__
    if name not in ("DivBackward0", "MulBackward0"):
        return None
    o = getattr(fn, "_saved_other", None)
    if (
        not isinstance(o, torch.Tensor)
        or o.numel() != 1
        or o.device.type != "cpu"
        or o.requires_grad
    ):
        return None  # a device tensor would need a host sync to read
    k = float(o)
    if name == "MulBackward0":
        k = 1.0 / k if k != 0 else 0.0
    return round(k) if k >= 1 and abs(k - round(k)) < 1e-6 else None


def _scalar32(x: torch.Tensor) -> torch.Tensor:
    """x as a 0-d float32 tensor: x itself when it is one already (the usual loss)."""
    if x.dtype != torch.float32:
        x = x.float()
    return x if x.dim() == 0 else x.reshape(())


class Session:
    """What `import dltui` talks to inside an engine: dltui.log, dltui.context, dltui.on_eval."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.driver: Any = None  # the ScriptRun or Loop, once it exists
        self.probe: Any = None
        self.eval_fn: Any = None
        self.pending: list[tuple[str, dict]] = []  # logs before the driver exists

    def log(self, phase: str, scalars: dict) -> None:
        if phase not in (wire.TRAIN, wire.VAL):
            raise ValueError(f"dltui.log: phase is {phase!r}; use 'train' or 'val'.")
        if self.probe is None:
            self.pending.append((phase, dict(scalars)))
            return
        self.probe.log(self.driver, phase, scalars)

    def attach(self, driver: Any, probe: Any) -> None:
        """The run is wired: logs go to the probe from now on (earlier ones are replayed)."""
        self.driver, self.probe = driver, probe
        pending, self.pending = self.pending, []
        for phase, scalars in pending:
            probe.log(driver, phase, scalars)

    def on_eval(self, fn: Any) -> None:
        if not callable(fn):
            raise TypeError(f"dltui.on_eval needs a function, got {type(fn).__name__}")
        self.eval_fn = fn
        if self.driver is not None and hasattr(self.driver, "eval_registered"):
            self.driver.eval_registered()


class ScriptRun:
    """The driver for a script: presents the loop's interface (step, lrs(), model, gate, ...)
    to the probe, printers, commands and control server."""

    def __init__(
        self,
        path: Path,
        argv: list[str],
        *,
        callbacks: list[Callback],
        gate: Gate,
        session: Session,
        store: Any,
        probe: Any,
        max_steps: int | None = None,
        checkpoint_dir: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.argv = argv  # the script's sys.argv
        self.callbacks = callbacks
        self._hooks: dict[str, tuple[int, list]] = {}  # hook -> the callbacks that implement it
        self._others: tuple[int, list] = (-1, [])  # see _step_observers
        self.gate = gate
        self.session = session
        self.store = store
        self.probe = probe
        self.max_steps = max_steps
        self._stop_at = math.inf if max_steps is None else max_steps
        self.checkpoint_dir = checkpoint_dir
        self.r = SimpleNamespace(path=self.path, scheduler=None, val_loader=None)
        self.metrics = SimpleNamespace(train=None)
        self.step = 0
        self.epoch = 0
        self.batch = 0
        self.epochs: int | None = None
        self.steps_per_epoch: int | None = None
        self.total_steps = max_steps
        self.device = torch.device("cpu")
        self.model: nn.Module | ParamView | None = None
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedulers: dict[str, Any] = {}
        self.best_val_loss = math.inf
        self.last_val: dict[str, float] = {}
        self.last_input: Any = None
        self.last_output: Any = None
        self.factors: dict[int, list[float]] = {}  # id(optimizer) -> LR factor per group
        self._names: dict[int, str] = {}  # id(optimizer) -> name
        self._created: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> order
        self._n_created = 0
        self._saved_lrs: dict[int, list[Any]] = {}
        self._losses: list[tuple[torch.Tensor, int | None]] = []  # (loss, its divisor)
        self._scaled: tuple[Any, torch.Tensor] | None = None  # (scaler.scale(loss) result, loss)
        self._scalers: weakref.WeakSet = weakref.WeakSet()
        self._lrs_used: list[float] = []
        self._other_steps = 0
        self._stepped = 0  # optimizer steps of any optimizer (a GradScaler skip adds none)
        self._n_skipped = 0
        self._fwd_n = 0
        self._fwd_batch = 0
        self._fwd_hook: Any = None  # the forward pre-hook's handle while it is on
        self._per_backward = False  # one forward per backward (accumulation): as last sampled
        self._nan: torch.Tensor | None = None
        self._accumulating = True  # the last step had several backward calls (first: unknown)
        self._t_last = time.perf_counter()
        self._started = False
        self._fwd_model: nn.Module | None = None
        self._handles: list[Any] = []
        self._undo: list[tuple[Any, str, Any]] = []
        self.exit_code = 0

    # -- the loop's interface --------------------------------------------------------------
    def lrs(self) -> list[float]:
        return self._lrs_of(self.optimizer) if self.optimizer is not None else []

    def all_lrs(self) -> dict[str, list[float]]:
        return {n: self._lrs_of(o) for n, o in self.optimizers.items()}

    def _lrs_of(self, opt: torch.optim.Optimizer) -> list[float]:
        """The LRs the next step uses: the script's own, times the user's factor."""
        f = self.factors.get(id(opt))
        saved = self._saved_lrs.get(id(opt))  # inside a step: the script's values are saved
        out = []
        for i, g in enumerate(opt.param_groups):
            lr = float(g["lr"])
            if saved is None and f is not None:
                lr *= f[i]
            out.append(lr)
        return out

    def idle(self) -> None:
        for cb in self.callbacks:
            cb.on_idle(self)

    def _emit(self, hook: str, *args: Any) -> None:
        for _, fn in hooks_of(self.callbacks, hook, self._hooks):
            fn(self, *args)

    # -- running the script ----------------------------------------------------------------
    def run(self) -> tuple[str, BaseException | None]:
        """Run the script to its end; returns (status, error). Sets self.exit_code."""
        self._install()
        status, error = wire.FINISHED, None
        old_argv, old_path0 = sys.argv, sys.path[0] if sys.path else None
        sys.argv = list(self.argv)
        folder = str(self.path.resolve().parent)
        if sys.path:
            sys.path[0] = folder
        else:
            sys.path.insert(0, folder)
        try:
            run_as_main(self.path)
        except StopScript as s:
            status = s.status
        except SystemExit as e:
            code = e.code
            if code is None or code == 0:
                self.exit_code = 0
            elif isinstance(code, int):
                self.exit_code = code
                status = wire.FAILED
            else:  # sys.exit("message"): Python prints it and exits 1
                print(code, file=sys.stderr)
                self.exit_code = 1
                status = wire.FAILED
            if status == wire.FAILED:
                error = e
        except KeyboardInterrupt:
            status = wire.STOPPED
        except Exception as e:
            status, error = wire.FAILED, e
            self.exit_code = 1
        finally:
            self._uninstall()
            sys.argv = old_argv
            if old_path0 is not None and sys.path and sys.path[0] == folder:
                sys.path[0] = old_path0
            self.gate.close()
        if (
            self.gate.stop_reason is not None
            and status == wire.FINISHED
            and not self._max_steps_reached()
        ):
            status = wire.STOPPED
        if not self._started:
            self._start(None)  # so printers and the store still see a run start and end
        self._emit("on_run_end", status, error)
        return status, error

    def _install(self) -> None:
        self._handles = [
            register_optimizer_step_pre_hook(self._pre_hook),
            register_optimizer_step_post_hook(self._post_hook),
        ]
        run = self
        orig_backward = torch.autograd.backward
        orig_init = torch.optim.Optimizer.__init__
        scaler_cls = torch.amp.GradScaler
        orig_scale = scaler_cls.scale
        orig_scaler_step = scaler_cls.step

        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(tensors, torch.Tensor) and tensors.numel() == 1:
                run._record_backward(tensors)
            return orig_backward(tensors, *args, **kwargs)

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            orig_init(self, *args, **kwargs)
            run._n_created += 1
            run._created[self] = run._n_created

        def scale(self: Any, outputs: Any) -> Any:
            out = orig_scale(self, outputs)
            run._scalers.add(self)
            if isinstance(outputs, torch.Tensor) and out is not outputs:
                run._scaled = (out, outputs)
            return out

        def scaler_step(self: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            before = run._stepped
            out = orig_scaler_step(self, optimizer, *args, **kwargs)
            if run._stepped == before and self.is_enabled():  # inf/NaN gradients: step skipped
                run._skipped(optimizer)
            return out

        for obj, attr, new in (
            (torch.autograd, "backward", backward),
            (torch.optim.Optimizer, "__init__", init),
            (scaler_cls, "scale", scale),
            (scaler_cls, "step", scaler_step),
        ):
            self._undo.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, new)

    def _uninstall(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._input_hook(False)
        for obj, attr, old in reversed(self._undo):
            setattr(obj, attr, old)
        self._undo = []

    # -- hooks (the training thread, inside the script's optimizer.step()) -------------------
    def _record_backward(self, t: torch.Tensor) -> None:
        sc = self._scaled
        if sc is not None:
            self._scaled = None
            if sc[0] is t:
                t = sc[1]  # scaler.scale(loss).backward(): the loss, not loss x scale
        losses = self._losses
        # The divisor is looked for only where accumulation is possible: a step's later backward
        # calls, and its first while the last steps had several (reading grad_fn is not free).
        losses.append((t.detach(), _divisor(t) if losses or self._accumulating else UNSEEN))

    def _pre_hook(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._stepped += 1
        if opt is self.optimizer and self._started:
            # The run's optimizer, every step: the hot path (issue 14), one comparison for the gate.
            if self.step >= self._stop_at or self.gate.busy:
                self._boundary()
        else:
            self._first_or_other(opt)
        if self.factors:
            self._apply_factors(opt)
        if opt is self.optimizer:
            self._lrs_used = [float(g["lr"]) for g in opt.param_groups]
            for _, fn in hooks_of(self.callbacks, "on_before_optimizer_step", self._hooks):
                fn(self)

    def _first_or_other(self, opt: torch.optim.Optimizer) -> None:
        """The first step of the run (discovery, then the boundary), or a step of an optimizer
        that is not the run's (its LRs and loss, recorded at the run's current step)."""
        if not self._started:
            self._start(sys._getframe(2), opt)
        elif id(opt) not in self._names:  # created after the run's first step
            self._add_optimizer(opt, sys._getframe(2))
            self._publish_models()
        if opt is self.optimizer:
            self._boundary()
            return
        self._other_steps += 1
        if self.step == 0 and self._other_steps > PROMOTE_AFTER:
            self._promote(opt)
        name = self._names[id(opt)]
        extra: dict[str, Any] = {
            wire.lr_name(i, name): lr for i, lr in enumerate(self._lrs_of(opt))
        }
        if self._losses:
            extra[f"loss/{name}"] = self._mean_loss()
        self.probe.log(self, wire.TRAIN, extra)  # at this iteration's step: the run's stepped first

    def _apply_factors(self, opt: torch.optim.Optimizer) -> None:
        """The user's LR factors on this step only: the script's own values are saved and put
        back by _post_hook."""
        f = self.factors.get(id(opt))
        if f is None:
            return
        groups = opt.param_groups
        self._saved_lrs[id(opt)] = [g["lr"] for g in groups]
        for g, x in zip(groups, f, strict=False):
            if x != 1.0:
                g["lr"] = g["lr"] * x if not isinstance(g["lr"], torch.Tensor) else g["lr"].mul_(x)

    def _skipped(self, opt: torch.optim.Optimizer) -> None:
        """GradScaler skipped this optimizer's step (inf/NaN gradients): not a step; its losses
        and batches are dropped, so they don't blend into the next step's numbers."""
        self._losses = []
        self._fwd_n = 0
        self._scaled = None
        name = self._names.get(id(opt), "the optimizer")
        self._n_skipped += 1
        if self._n_skipped <= 20 or self._n_skipped % 100 == 0:  # fp16 warm-up skips a few in a row
            self.store.event(
                wire.EV_INFO,
                f"GradScaler skipped a step of '{name}' after step {self.step} "
                f"(inf/NaN gradients; {self._n_skipped} skipped so far)",
                step=self.step,
                level="warning",
            )

    def _post_hook(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._saved_lrs:
            self._restore_lrs(opt)
        if opt is not self.optimizer:
            return
        now = time.perf_counter()
        step_time = now - self._t_last if self.step else None  # the first: unknown
        self.step = step = self.step + 1
        self.batch += 1
        n = len(self._losses)
        loss = self._mean_loss() if n else self._nan_loss()
        if self._fwd_hook is not None:  # this step's forwards were counted
            self._per_backward = n == self._fwd_n and n > 0
            self._fwd_n = 0
        batch_size = self._fwd_batch * n if self._per_backward and n > 1 else self._fwd_batch
        sample = step < INPUT_WARMUP or step % INPUT_EVERY == 0 or self.gate.busy
        if sample is (self._fwd_hook is None):
            self._input_hook(sample)
        wall, lrs, batch_size = time.time(), self._lrs_used, max(batch_size, 1)
        # The probe is fed directly (no StepOutput) unless an interval part may be due; other
        # observers of on_step_end (a benchmark's, a test's) get the StepOutput.
        fed = self.probe.step_done(self, step, wall, loss, step_time, batch_size, lrs)
        others = self._step_observers()
        if others or not fed:
            out = StepOutput(loss, None, None, batch_size, step_time, None, wall, lrs)
            if not fed:
                self.probe.on_step_end(self, out)
            for fn in others:
                fn(self, out)
        self._t_last = time.perf_counter()  # the script's own time from here to its next step

    def _step_observers(self) -> list:
        """on_step_end of the observers other than the probe (kept until the callbacks change)."""
        n, got = self._others
        if n != len(self.callbacks):
            found = hooks_of(self.callbacks, "on_step_end", self._hooks)
            got = [fn for cb, fn in found if cb is not self.probe]
            self._others = (len(self.callbacks), got)
        return got

    def _restore_lrs(self, opt: torch.optim.Optimizer) -> None:
        """After a step with the user's LR factors applied: the script sees its own LRs again."""
        saved = self._saved_lrs.pop(id(opt), None)
        if saved is None:
            return
        for g, lr, x in zip(opt.param_groups, saved, self.factors.get(id(opt), ()), strict=False):
            if isinstance(lr, torch.Tensor):
                lr.div_(x)
            else:
                g["lr"] = lr

    def _nan_loss(self) -> torch.Tensor:
        """The loss of a step with no scalar backward() seen (torch.autograd.grad, a non-scalar
        backward): NaN, one shared tensor on the device (readers never write it)."""
        nan = self._nan
        if nan is None or nan.device != self.device:
            nan = self._nan = torch.full((), math.nan, device=self.device)
        return nan

    def _mean_loss(self) -> torch.Tensor:
        """The mean loss of the backward calls since the last step, on the device (no sync).

        Gradient accumulation written as `loss = loss / accum_steps` (nanoGPT) divides each
        micro-batch's loss by the number of backward calls; then the undivided loss is averaged,
        so the number is the one the script prints, not 1/accum_steps of it."""
        ls, self._losses = self._losses, []
        n = len(ls)
        self._accumulating = n > 1
        if n == 1:
            return _scalar32(ls[0][0])
        # (n > 1 here.) A first micro-batch not looked at (the steps before had one backward
        # each) is taken to be divided like the others.
        undo = all(k == n or (i == 0 and k == UNSEEN) for i, (_, k) in enumerate(ls))
        vals = [_scalar32(x) * n if undo else _scalar32(x) for x, _ in ls]
        return torch.stack(vals).mean()

    def _boundary(self) -> None:
        """Before each step of the run's optimizer: commands, pause, eval, stop."""
        if self._max_steps_reached():
            self.save_checkpoint("last", reason="max steps")
            raise StopScript(wire.FINISHED, f"--max-steps {self.max_steps} reached")
        if not self.gate.busy:  # one attribute read when nothing is pending
            return
        self.gate.boundary(self)
        if self.gate.stop_reason is not None:
            if not self.gate.stop_now:
                self.save_checkpoint("last", reason=self.gate.stop_reason)
            raise StopScript(wire.STOPPED, self.gate.stop_reason)

    def _max_steps_reached(self) -> bool:
        return self.max_steps is not None and self.step >= self.max_steps

    # -- discovery ----------------------------------------------------------------------------
    def _start(
        self, frame: FrameType | None, stepping: torch.optim.Optimizer | None = None
    ) -> None:
        """At the first optimizer step: find every optimizer created so far and their models."""
        self._started = True
        alive = sorted(((n, o) for o, n in list(self._created.items())), key=lambda x: x[0])
        objs = named_objects(frame) if frame is not None else []
        for _, o in alive:
            self._add_optimizer(o, None, objs)
        if stepping is not None and id(stepping) not in self._names:
            self._add_optimizer(stepping, None, objs)
        if self.optimizers:
            self.optimizer = next(iter(self.optimizers.values()))
        self._publish_models()
        from .learner import script_learner  # loaders, loss, schedulers found: once

        self.store.set_meta(learner=script_learner(self, objs))
        self._emit("on_run_start")

    def _publish_models(self) -> None:
        from .main import model_summary, optimizer_meta

        if self.model is None:
            return
        self.store.set_meta(
            model=model_summary(self.model),
            device=str(self.device),
            optimizers=optimizer_meta(self),
            models=list(self.models),
        )

    def _add_optimizer(
        self, opt: torch.optim.Optimizer, frame: FrameType | None, objs: list | None = None
    ) -> None:
        if objs is None:
            objs = named_objects(frame)
        name = next((n for n, o in objs if o is opt), None) or f"optimizer{len(self.optimizers)}"
        while name in self.optimizers:
            name += "_"
        self._names[id(opt)] = name
        self.optimizers[name] = opt
        if self.optimizer is None:
            self.optimizer = opt
        for m_name, m in find_models(opt, objs):
            if all(m is not x for x in self.models.values()):
                while m_name in self.models:
                    m_name += "_"
                self.models[m_name] = m
        self._rebuild_model()

    def _rebuild_model(self) -> None:
        if not self.models:
            return
        if len(self.models) == 1:
            self.model = next(iter(self.models.values()))
        else:
            named = [
                (f"{mn}.{pn}", p) for mn, m in self.models.items() for pn, p in m.named_parameters()
            ]
            self.model = ModelSet(self.models, named)
        first = next(iter(self.models.values()))
        p = next(first.parameters(), None)
        if p is not None:
            self.device = p.device
        if self._fwd_model is None:  # the run's model: its inputs are the batches (Tensors tab)
            self._fwd_model = first
            self._input_hook(True)
        if self.probe is not None:
            self.probe.late_update = len(self.optimizers) > 1

    def _input_hook(self, on: bool) -> None:
        """The run model's forward pre-hook on or off (see INPUT_EVERY)."""
        if on and self._fwd_hook is None and self._fwd_model is not None:
            self._fwd_hook = self._fwd_model.register_forward_pre_hook(self._forward_pre)
        elif not on and self._fwd_hook is not None:
            self._fwd_hook.remove()
            self._fwd_hook = None

    def _forward_pre(self, module: nn.Module, args: Any) -> None:
        if args and isinstance(args[0], torch.Tensor) and torch.is_grad_enabled():
            x = args[0]
            self.last_input = x
            if self._fwd_n == 0:
                self._fwd_batch = x.shape[0] if x.ndim else 1
            self._fwd_n += 1

    def _promote(self, opt: torch.optim.Optimizer) -> None:
        """The first optimizer created never steps: the run follows this one instead."""
        name = self._names[id(opt)]
        self.optimizers = {name: opt, **{n: o for n, o in self.optimizers.items() if o is not opt}}
        self.optimizer = opt
        self.store.event(
            wire.EV_INFO,
            f"the run follows optimizer '{name}' (the first one created never stepped)",
        )

    # -- steering ---------------------------------------------------------------------------
    def optimizer_named(self, name: str | None) -> torch.optim.Optimizer:
        from .commands import CommandError

        if name is None:
            return self.optimizer
        if name not in self.optimizers:
            raise CommandError(
                f"there is no optimizer {name!r}; this run has {', '.join(self.optimizers)}."
            )
        return self.optimizers[name]

    def steer_lr(
        self, op: str, v: float, group: int | None, optimizer: str | None
    ) -> dict[str, Any]:
        """An LR change as a factor applied around each step: it holds even when the script sets
        param_group['lr'] itself every iteration (nanoGPT's schedule) or a scheduler moves it."""
        from .commands import CommandError, check_lr

        opt = self.optimizer_named(optimizer)
        name = self._names[id(opt)]
        groups = opt.param_groups
        if group is not None and not 0 <= group < len(groups):
            raise CommandError(
                f"there is no param group {group}; '{name}' has groups 0..{len(groups) - 1}."
            )
        chosen = range(len(groups)) if group is None else [group]
        before = self._lrs_of(opt)
        f = list(self.factors.get(id(opt), [1.0] * len(groups)))
        for i in chosen:
            script_lr = float(groups[i]["lr"])
            new = before[i] * v if op == "mul" else v
            check_lr(new, i)
            if script_lr <= 0:
                raise CommandError(
                    f"group {i}'s learning rate is {script_lr} as the script sets it; a factor can't change that."
                )
            f[i] = new / script_lr
        self.factors[id(opt)] = f
        after = self._lrs_of(opt)
        which = ("all groups" if group is None else f"group {group}") + (
            f" of '{name}'" if len(self.optimizers) > 1 else ""
        )
        msg = (
            f"lr {', '.join(f'{before[i]:.4g}' for i in chosen)} -> {', '.join(f'{after[i]:.4g}' for i in chosen)}"
            f" ({which}) at step {self.step}; the script's own LR is scaled by "
            f"{', '.join(f'{f[i]:.4g}' for i in chosen)} from now on"
        )
        return {
            "before": before,
            "after": after,
            "group": group,
            "optimizer": name,
            "factors": f,
            "message": msg,
        }

    def eval_unavailable(self) -> str | None:
        if self.session.eval_fn is None:
            return (
                "this script has no evaluation dltui can call. Add `import dltui` and "
                "`dltui.on_eval(evaluate)` where `evaluate()` returns a dict like {'loss': 0.3}."
            )
        return None

    def eval_registered(self) -> None:
        self.store.set_meta(steering=self.steering())

    def steering(self) -> dict[str, bool]:
        return {
            "pause": True,
            "step": True,
            "lr": True,
            "eval": self.session.eval_fn is not None,
            "checkpoint": True,
            "stop": True,
            "resume": False,
        }

    def eval_pass(self) -> dict[str, float]:
        """`e`: the script's registered evaluation under eval() and no_grad(), then back to training."""
        fn = self.session.eval_fn
        self.gate.mode = "train"  # one pass, then training goes on
        if fn is None:
            return {}
        modes = [(m, m.training) for top in self.models.values() for m in top.modules()]
        for top in self.models.values():
            top.eval()
        try:
            with torch.no_grad():
                result = fn()
        except Exception as e:
            from .recipe import user_traceback

            self.store.event(
                wire.EV_ERROR,
                f"the script's on_eval function raised {e!r}; training goes on",
                step=self.step,
                level="error",
                data={"traceback": user_traceback(e)},
            )
            return {}
        finally:
            for m, was in modes:
                m.training = was
        values = _floats(result)
        if values is None:
            self.store.event(
                wire.EV_INFO,
                f"on_eval returned {type(result).__name__}, not a dict of numbers",
                step=self.step,
                level="warning",
            )
            return {}
        self.last_val = values
        loss = values.get("loss")
        if loss is not None and loss < self.best_val_loss:
            self.best_val_loss = loss
        self._emit("on_validation_end", values)
        return values

    def validate(self, loader: Any = None) -> dict[str, float]:
        return self.eval_pass()

    def save_checkpoint(self, tag: str, reason: str = "", must: bool = False) -> Path | None:
        """The state_dicts of the found models, optimizers, LR schedulers and GradScalers.
        (`must`, as the recipe loop takes it: a failure here always raises.)"""
        if self.checkpoint_dir is None or not self.models:
            return None
        import os

        objs = named_objects(sys._getframe(1))
        scheds = {}
        for n, o in objs:
            if isinstance(
                o, torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
            ):
                if any(o.optimizer is opt for opt in self.optimizers.values()) and n not in scheds:
                    scheds[n] = o
        scalers = {n: o for n, o in objs if isinstance(o, torch.amp.GradScaler)}
        for i, s in enumerate(self._scalers):
            if all(s is not x for x in scalers.values()):
                scalers[f"scaler{i}"] = s
        main_model = next(iter(self.models.values()))
        state = {
            "model": main_model.state_dict(),
            "models": {n: m.state_dict() for n, m in self.models.items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in scheds.items()},
            "scalers": {n: s.state_dict() for n, s in scalers.items()},
            "lr_factors": {self._names[k]: v for k, v in self.factors.items() if k in self._names},
            "step": self.step,
            "script": str(self.path),
            "argv": self.argv,
        }
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"{tag}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        self._emit("on_checkpoint", path, tag, reason)
        return path


def _floats(result: Any) -> dict[str, float] | None:
    if isinstance(result, (int, float, torch.Tensor)):
        result = {"loss": result}
    if not isinstance(result, dict):
        return None
    out = {}
    for k, v in result.items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out
