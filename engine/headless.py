"""Plain progress lines for runs without a dashboard (nohup, sbatch, CI, --headless)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .loop import Callback, Loop
from .probe import Probe


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3e}" if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5) else f"{v:.4f}"
    return str(v)


class HeadlessPrinter(Callback):
    """Prints a status line every `every` seconds, one per epoch, and a final summary."""

    def __init__(
        self, probe: Probe, run_dir: Path, every: float = 5.0, out: TextIO | None = None
    ) -> None:
        self.probe = probe
        self.run_dir = run_dir
        self.every = every
        self.out = out or sys.__stdout__
        self._next_wall = 0.0  # time.time() of the next status line
        self._t0 = time.monotonic()
        self._mark = (0.0, 0)  # (time, step) at the last status line
        self._rate: float | None = None
        # The status line is looked at after each of the probe's flushes (the newest values are
        # the flushed ones), not at every step: a step pays nothing for it.
        probe.after_flush.append(self._tick)

    def _print(self, line: str) -> None:
        try:
            print(line, file=self.out, flush=True)
        except (OSError, ValueError):  # the terminal is gone; the store still has everything
            pass

    def on_run_start(self, loop: Loop) -> None:
        self._t0 = time.monotonic()
        self._mark = (self._t0, loop.step)
        total = loop.total_steps if loop.total_steps is not None else "?"
        if loop.epochs is None:  # a script: it decides its own epochs
            names = ", ".join(getattr(loop, "optimizers", {})) or "none yet"
            self._print(
                f"[dltui] run {self.run_dir.name}: script {loop.r.path} on {loop.device}, "
                f"optimizers: {names}; steer it with `dltui ctl {self.run_dir.name} ...`"
            )
        else:
            self._print(
                f"[dltui] run {self.run_dir.name}: {loop.r.path} on {loop.device}, "
                f"{loop.epochs} epochs, {total} steps"
                + (f" (resuming at step {loop.step})" if loop.step else "")
            )
        self._next_wall = time.time() + self.every

    def _line(self, loop: Loop) -> str:
        lat = self.probe.latest
        now = time.monotonic()
        if now > self._mark[0] and loop.step > self._mark[1]:
            recent = (loop.step - self._mark[1]) / (now - self._mark[0])  # steps/s since last line
            self._rate = recent if self._rate is None else 0.5 * self._rate + 0.5 * recent
        self._mark = (now, loop.step)
        rate = self._rate or 0.0
        eta = (loop.total_steps - loop.step) / rate if loop.total_steps and rate > 0 else None
        total = loop.total_steps if loop.total_steps is not None else "?"
        parts = [f"epoch {min(loop.epoch + 1, loop.epochs)}/{loop.epochs}"] if loop.epochs else []
        parts += [f"step {loop.step}/{total}", f"loss {fmt_num(lat.get('loss'))}"]
        for name in loop.metrics.train or {}:
            if name in lat:
                parts.append(f"{name} {fmt_num(lat[name])}")
        if "lr/0" in lat:
            parts.append(f"lr {lat['lr/0']:.3g}")
        if "samples_per_s" in lat:
            parts.append(f"{lat['samples_per_s']:,.0f} samples/s")
        parts.append(f"ETA {fmt_duration(eta)}")
        return "[dltui] " + "  ".join(parts)

    def _tick(self, loop: Loop, wall: float) -> None:
        if wall >= self._next_wall:
            self._next_wall = wall + self.every
            self._print(self._line(loop))

    def on_validation_end(self, loop: Loop, values: dict[str, float]) -> None:
        vals = "  ".join(f"{k} {fmt_num(v)}" for k, v in values.items())
        epoch = loop.epoch + 1 if loop.batch else loop.epoch  # mid-epoch: the one under way
        where = f"epoch {epoch}/{loop.epochs} " if loop.epochs else ""
        self._print(f"[dltui] {where}step {loop.step}: val {vals}")

    def on_run_end(self, loop: Loop, status: str, error: BaseException | None) -> None:
        elapsed = time.monotonic() - self._t0
        best = loop.best_val_loss
        lines = [
            f"[dltui] {status}: {loop.step} steps"
            + (f", {loop.epoch} epochs" if loop.epochs else "")
            + f" in {fmt_duration(elapsed)}",
            f"[dltui]   last train loss {fmt_num(self.probe.latest.get('loss'))}"
            + (f", best val loss {fmt_num(best)}" if math.isfinite(best) else ""),
        ]
        if loop.last_val:
            lines.append(
                "[dltui]   last val: "
                + "  ".join(f"{k} {fmt_num(v)}" for k, v in loop.last_val.items())
            )
        lines.append(f"[dltui]   run store: {self.run_dir / 'run.sqlite'}")
        for line in lines:
            self._print(line)
