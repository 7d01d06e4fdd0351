"""The control gate: steering state the loop reads at step boundaries (never calls into the loop).

Other threads (the control server, signal handlers) submit work with `submit()`; the training
thread runs it at the next boundary, so every change lands between two optimizer steps.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

POLL_S = 0.05


class Gate:
    """`busy` is the loop's one read per step: False means nothing is queued, training is neither
    paused nor in eval, and no stop is asked for, so boundary() has nothing to do. Every change
    to that state sets it (under the lock); only boundary() clears it, once it has found nothing
    left to do."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: deque[tuple[Callable[[Any], Any], Future]] = deque()
        self.busy = False
        self._paused = False
        self._step_target: int | None = None  # while paused, run until loop.step reaches this
        self._mode = "train"  # or "eval": training held, validation passes run
        self._eval_requested = False  # an eval pass is owed
        self._stop_reason: str | None = None
        self.stop_now = False  # skip the final checkpoint (second SIGINT)
        self.alive = True  # False once the loop has ended: submit() then fails fast

    def _state(name: str) -> property:  # noqa: N805 - a property factory, run in the class body
        attr = "_" + name

        def get(self: Gate) -> Any:
            return getattr(self, attr)

        def set_(self: Gate, value: Any) -> None:
            with self._cond:
                setattr(self, attr, value)
                self.busy = True  # boundary() looks at it at the next step

        return property(get, set_)

    paused = _state("paused")
    step_target = _state("step_target")
    mode = _state("mode")
    eval_requested = _state("eval_requested")
    stop_reason = _state("stop_reason")
    del _state

    def _settle(self) -> None:
        """Clear `busy` if there is nothing left for boundary() to do (training thread)."""
        with self._cond:
            self.busy = bool(
                self._pending
                or self._paused
                or self._step_target is not None
                or self._mode != "train"
                or self._eval_requested
                or self._stop_reason is not None
            )

    # -- from any thread -------------------------------------------------------------------
    def submit(self, fn: Callable[[Any], Any]) -> Future:
        """Run fn(loop) on the training thread at the next boundary; the future gets its result."""
        fut: Future = Future()
        with self._cond:
            if not self.alive:
                fut.set_exception(RuntimeError("the run has ended"))
                return fut
            self._pending.append((fn, fut))
            self.busy = True
            self._cond.notify_all()
        return fut

    def request_stop(self, reason: str, now: bool = False) -> None:
        with self._cond:
            self._stop_reason = self._stop_reason or reason
            self.stop_now = self.stop_now or now
            self.busy = True
            self._cond.notify_all()

    # -- from the training thread ----------------------------------------------------------
    def service(self, loop: Any) -> None:
        """Run every submitted command now (between steps or between validation batches)."""
        while self._pending:
            with self._cond:
                if not self._pending:
                    return
                fn, fut = self._pending.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(loop))
            except BaseException as e:  # the command's error goes back to its caller
                fut.set_exception(e)

    def boundary(self, loop: Any) -> None:
        """Called by the loop before each optimizer step when `busy`: apply commands, hold while
        paused/eval. (Calling it when not busy is harmless: it returns at once.)"""
        self.service(loop)
        while self._stop_reason is None:
            if self._mode == "eval":
                if self._eval_requested:
                    self.eval_requested = False
                    loop.eval_pass()
                    continue
            elif not self._paused:
                break
            elif self._step_target is not None and loop.step < self._step_target:
                return  # a `step N` under way: busy stays set, the next boundary counts again
            else:
                self.step_target = None
            with self._cond:
                if not self._pending and self._stop_reason is None:
                    self._cond.wait(POLL_S)
            self.service(loop)
            loop.idle()
        self._settle()

    def steps_left(self, step: int) -> int:
        """Steps of a `step N` still to run (0 once they are done and the loop is held again)."""
        return max(0, self.step_target - step) if self.step_target is not None else 0

    def hold(self) -> None:
        """Pause at the next boundary (training thread only)."""
        self.paused, self.step_target = True, None

    def close(self) -> None:
        """The loop has ended: fail whatever is still queued."""
        with self._cond:
            self.alive = False
            pending, self._pending = list(self._pending), deque()
        for _, fut in pending:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("the run has ended"))
