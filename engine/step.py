"""The optimizer step, complete: accumulation, autocast + GradScaler, clipping, closures, several
named optimizers; and the `ctx` that train_step(batch, ctx) and the epoch hooks are given."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .recipe import AMP, Recipe, needs_closure, updates_itself

RETURNS = (
    "return the loss (a tensor), a dict of scalars with a 'loss' entry, or (loss, output, target)"
)


class StepRefused(Exception):
    """An optimizer was stepped during evaluation; the pass is abandoned, the run goes on."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass
class Result:
    """What one train_step / eval_step call gave back, in one shape."""

    loss: torch.Tensor
    output: Any = None
    target: Any = None
    scalars: dict[str, Any] = field(default_factory=dict)  # the dict-return entries but "loss"


def read_result(value: Any, key: str) -> Result:
    """A step's return value as a Result; a shape we can't read is the recipe's error, named."""
    output = target = None
    if isinstance(value, tuple) and len(value) == 3:
        value, output, target = value
    scalars: dict[str, Any] = {}
    if isinstance(value, dict):
        if "loss" not in value:
            raise TypeError(
                f"`{key}` returned a dict without a 'loss' entry (keys {sorted(value)}); {RETURNS}."
            )
        scalars = {str(k): _scalar(v, f"`{key}`'s {k!r}") for k, v in value.items() if k != "loss"}
        value = value["loss"]
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise TypeError(f"`{key}` returned {_what(value)} as its loss; {RETURNS}.")
    return Result(value.reshape(()), output, target, scalars)


def _scalar(v: Any, where: str) -> Any:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.detach().reshape(()).float()
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    raise TypeError(
        f"{where} is {_what(v)}; each entry of the dict must be one number (or a 0-d tensor)."
    )


def _what(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"a tensor of shape {list(v.shape)}"
    return f"a {type(v).__name__}"


class Stepper:
    """Turns gradients into updates for one run. The loop drives it; so do ctx.backward/step.

    A window is one optimizer step: `accumulate` micro-batches, each backward divided by it.
    fp16 scales the loss (GradScaler), unscales before the layer stats and clipping, and a step
    whose gradients overflowed is skipped (the loop records an event, not a step).
    """

    def __init__(
        self,
        recipe: Recipe,
        device: torch.device,
        before_step: Callable[[], None],
        notice: Callable[..., None],
    ) -> None:
        self.optimizers = recipe.optimizers
        self.schedulers = recipe.schedulers
        self.per_step = recipe.scheduler_interval == "step"
        self.clip = recipe.grad_clip
        self.k = recipe.accumulate
        self.device = device
        self.dtype = AMP.get(recipe.amp) if recipe.amp else None
        self.scaler = torch.amp.GradScaler(device.type) if recipe.amp == "fp16" else None
        self.before_step = before_step
        self.notice = notice
        # A closure optimizer the loop steps itself (a train_step that steps passes its own).
        own = (
            recipe.train_step is not None
            and recipe.train_form == "ctx"
            and updates_itself(recipe.train_step)
        )
        self.closure_driven = (
            len(self.optimizers) == 1 and needs_closure(recipe.optimizer) and not own
        )
        self._needs_closure = {n: needs_closure(o) for n, o in self.optimizers.items()}
        self.training = True
        self.owned = False  # the recipe's train_step steps its optimizers (sticky once seen)
        self._held: set[str] = set()  # schedulers whose schedule ran out, not yet told
        self._told: set[str] = set()  # refusals said in this evaluation pass
        self._held_told: set[str] = set()
        self.begin_window()

    # -- per window / micro-batch ----------------------------------------------------------
    def begin_window(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.stepped: dict[str, list[float]] = {}  # name -> the lrs its step used
        self.skipped: list[str] = []
        self.deferred: list[str] = []
        self.grad_norms: dict[str, torch.Tensor] = {}
        self.scale = 1.0  # k/m for a window cut short by the end of the data
        self.last_micro = True
        self.backward_called = False
        self._hooked = False

    def begin_micro(self, last: bool) -> None:
        self.last_micro, self.backward_called = last, False

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        if not self.training:
            self._tell_once(
                "ctx.backward() during evaluation was ignored (evaluation never trains)."
            )
            return
        if self.k > 1:
            loss = loss / self.k  # the window's gradient is the mean over its micro-batches
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        if self.dtype:
            with torch.autocast(self.device.type, enabled=False):
                loss.backward(**kwargs)
        else:
            loss.backward(**kwargs)
        self.backward_called = True

    def _tell_once(self, message: str, data: dict | None = None) -> None:
        """A refusal during evaluation, said once per pass (not once per batch)."""
        if message not in self._told:
            self._told.add(message)
            self.notice(message, "warning", data)

    def names(self, name: str | None) -> list[str]:
        if name is None:
            return list(self.optimizers)
        if name not in self.optimizers:
            raise KeyError(
                f"ctx.step({name!r}): no optimizer named {name!r}; this recipe's optimizers are "
                f"{', '.join(map(repr, self.optimizers))}."
            )
        return [name]

    def step(self, name: str | None = None, closure: Callable | None = None) -> bool:
        """ctx.step: steps now, or at the end of the window when accumulating."""
        names = self.names(name)
        if not self.training:
            self._tell_once(
                f"eval_step called ctx.step({name!r}) during evaluation: refused (evaluation never "
                "trains); the pass goes on.",
                {"optimizer": name},
            )
            return False
        self.owned = True
        if not self.last_micro:
            self.deferred += [n for n in names if n not in self.deferred]
            return False
        return any([self.step_one(n, closure) for n in names])

    def step_all(self) -> None:
        for n in self.optimizers:
            self.step_one(n)

    def step_one(self, name: str, closure: Callable | None = None) -> bool:
        """Unscale, check for overflow, layer stats (once per window), clip, step."""
        opt = self.optimizers[name]
        if closure is None and self._needs_closure[name]:
            raise TypeError(
                f"optimizer {name!r} ({type(opt).__name__}) needs a closure that recomputes the "
                f"loss: ctx.step({name!r}, closure=fn), fn doing zero_grad, forward, ctx.backward."
            )
        if self.scale != 1.0:
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, self.scale)
        if self.scaler is not None:
            if closure is not None:
                raise TypeError(
                    'fp16 (GradScaler) cannot step a closure optimizer; use amp = "bf16".'
                )
            self.scaler.unscale_(opt)
            # .item(): the same host sync scaler.step() makes to decide; paid once more here.
            found = sum(v.item() for v in self.scaler._found_inf_per_device(opt).values())
            if found:
                self.skipped.append(name)
                return False
        lrs = [float(g["lr"]) for g in opt.param_groups]
        if closure is not None:
            opt.step(self._wrap(name, opt, closure))
        else:
            self._hook_once()
            self._clip(name, opt)
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        self.stepped[name] = lrs
        return True

    def _wrap(self, name: str, opt: torch.optim.Optimizer, closure: Callable) -> Callable:
        def run() -> Any:
            loss = closure()
            self._hook_once()  # after the first backward, before the first update
            self._clip(name, opt)
            return loss

        return run

    def _hook_once(self) -> None:
        if not self._hooked:
            self._hooked = True
            self.before_step()

    def _clip(self, name: str, opt: torch.optim.Optimizer) -> None:
        if self.clip is None:
            return
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if params:  # the total norm before clipping, a device tensor (no host read)
            self.grad_norms[name] = torch.nn.utils.clip_grad_norm_(params, self.clip).detach()

    def finish_window(self, partial_scale: float = 1.0) -> bool:
        """Steps still owed (deferred, or a window cut short), the scaler update, per-step
        schedulers. False when fp16 overflow skipped every update: not a step."""
        self.scale = partial_scale
        for n in self.deferred:
            if n not in self.stepped and n not in self.skipped:
                self.step_one(n)
        if self.scaler is not None and (self.stepped or self.skipped):
            self.scaler.update()
        if self.per_step:
            for n in self.stepped:
                self.step_scheduler(n)
        return bool(self.stepped) or not self.skipped

    # -- schedulers and LRs ----------------------------------------------------------------
    def step_scheduler(self, name: str, metric: float | None = None) -> None:
        s = self.schedulers.get(name)
        if s is None:
            return
        if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if metric is not None:
                s.step(metric)
            return
        total = getattr(s, "total_steps", None)
        if isinstance(s, torch.optim.lr_scheduler.OneCycleLR) and s.last_epoch + 1 >= total:
            # Its schedule is used up: one more step would compute an LR past the cycle's end (and
            # then raise). Hold the last LR, and say so once a step has trained with it.
            if name in self._held:
                self._held.discard(name)
                self._held_told.add(name)
                self.notice(
                    f"scheduler {name!r} (OneCycleLR) is sized for {total} steps and has used them "
                    "all; its last LR holds from here. Size it from ctx.epochs (or ctx.max_steps) "
                    "so --epochs/--max-steps resize it.",
                    "warning",
                    {"optimizer": name},
                )
            elif name not in self._held_told:
                self._held.add(name)
            return
        s.step()

    def lrs_used(self) -> dict[str, list[float]]:
        """Each optimizer's LRs as its step this window used them (now, if it did not step)."""
        return {
            n: self.stepped.get(n) or [float(g["lr"]) for g in o.param_groups]
            for n, o in self.optimizers.items()
        }

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Evaluation: ctx.step/backward are refused, and so is a direct optimizer.step()."""

        def refuse(name: str) -> Callable:
            def hook(opt: Any, args: Any, kwargs: Any) -> None:
                raise StepRefused(name)

            return hook

        handles = [o.register_step_pre_hook(refuse(n)) for n, o in self.optimizers.items()]
        was, self.training = self.training, False
        self._told: set[str] = set()
        try:
            yield
        finally:
            self.training = was
            for h in handles:
                h.remove()


class StepContext:
    """`ctx` in train_step(batch, ctx), eval_step(batch, ctx), on_epoch_start/end(ctx).

    The run's Context fields (epochs and device as they take effect, max_steps, seed, args, ...),
    the model and named optimizers, where the run is (epoch, global_step, batch_idx, phase),
    and backward()/step() that handle amp scaling, accumulation, clipping and evaluation.
    """

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self.phase = "train"  # "train" or "val"
        self.micro = 0  # index of this micro-batch in its accumulation window

    def __getattr__(self, name: str) -> Any:  # seed, args, rank, world_size, script, mode, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._loop.context, name)

    # where the run is
    epochs = property(lambda self: self._loop.epochs)
    max_steps = property(lambda self: self._loop.s.max_steps)
    device = property(lambda self: self._loop.device)
    model = property(lambda self: self._loop.model)
    optimizers = property(lambda self: self._loop.optimizers)
    optimizer = property(lambda self: self._loop.optimizer)
    schedulers = property(lambda self: self._loop.schedulers)
    epoch = property(lambda self: self._loop.current_epoch)  # 0-based, the one under way
    global_step = property(lambda self: self._loop.step)  # optimizer steps done
    batch_idx = property(lambda self: self._loop.batch)  # batches done in this epoch
    accumulate = property(lambda self: self._loop.r.accumulate)
    last_val = property(lambda self: self._loop.last_val)
    training = property(lambda self: self.phase == "train")

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """loss.backward(), scaled for fp16 and divided by `accumulate`."""
        self._loop.stepper.backward(loss, **kwargs)

    def step(self, name: str | None = None, closure: Callable | None = None) -> bool:
        """Step optimizer `name` (every optimizer when None): unscale, clip, step. True if it
        stepped now; False when refused (evaluation), skipped (fp16 overflow) or deferred to
        the end of an accumulation window."""
        return self._loop.stepper.step(name, closure)

    def zero_grad(self, name: str | None = None) -> None:
        for n in self._loop.stepper.names(name):
            self._loop.optimizers[n].zero_grad(set_to_none=True)
