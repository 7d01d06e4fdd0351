"""The run header: name, state, script or recipe, epoch/batch/step, LRs, progress bar, times, speed."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widget import Widget

from dltui.run.progress import position
from dltui.run.status import RunStatus

from ..poller import (
    CRASHED,
    EVAL,
    FAILED,
    FINISHED,
    PAUSED,
    RUNNING,
    STARTING,
    STOPPED,
    RunSnapshot,
)
from .format import fmt_duration, fmt_num, join_lines


def state_word(state: str) -> Text:
    """The state as drawn: the word always, the colour only repeating it (NO_COLOR sees the word)."""
    st = RunStatus.of(str(state))
    return Text(f" {st.label} ", st.style)


class RunHeader(Widget):
    """Two lines at the top of every tab, repainted by the app's frame clock (tick())."""

    DEFAULT_CSS = """
    RunHeader { height: 2; width: 1fr; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, run_name: str, *, ascii: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.run_name = run_name
        self.ascii = ascii
        self.snap: RunSnapshot | None = None
        self._dirty = False
        self._second = 0
        self._hint_for: str | None = None
        self.hint: str | None = None  # a crashed, failed or stopped run: what to do next

    def tick(self) -> None:
        """Repaint if the snapshot changed, or once a second while live (the elapsed time)."""
        second = int(time.time())
        if self._dirty or (self.snap is not None and self.snap.live and second != self._second):
            self._dirty, self._second = False, second
            self.refresh()

    def show(self, snap: RunSnapshot) -> None:
        first, self.snap, self._dirty = self.snap is None, snap, True
        if snap.state != self._hint_for:  # looked up once per state (it checks for a checkpoint)
            self._hint_for, self.hint = snap.state, next_step(snap)
        if first:
            self.tick()  # first paint: don't wait for the clock

    def render(self) -> Text:
        s = self.snap
        width = self.size.width or 80
        if s is None:
            return Text.assemble((f"{self.run_name} ", "bold"), state_word(STARTING))
        return join_lines([self._line1(s, width), self._line2(s, width)])

    def _line1(self, s: RunSnapshot, width: int) -> Text:
        p = s.progress
        # (words, style, rank): what does not fit is dropped by rank, highest first, and the rest
        # keep their order. At 80 columns the words that say what the run is doing stay (read-
        # only, the LR, the epoch); the batch and the device go first.
        parts: list[tuple[str, str, int]] = []
        if not s.live:
            parts.append(("read-only", "italic", 0))
        if s.is_script:  # its own loop: dltui sees steps, never its epochs or batches
            parts.append(("script", "italic", 1))
        if p:
            total = s.total_steps
            if not s.is_script:  # one definition of epoch/batch (run/progress.py), as the CLI's
                at = position(p)
                parts.append((at.epoch_text, "", 3))
                parts.append((at.batch_text, "", 5))
            # a script's only counter is the step: it outranks the LR there
            parts.append((f"step {s.step}/{total or '?'}", "dim", 2 if s.is_script else 4))
            lrs = lr_words(s)
            if lrs:
                parts.append((lrs, "", 3 if s.is_script else 2))
        device = s.meta.get("device")
        if device and device != "?":
            parts.append((str(device), "dim", 6))
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(s.run_id, "bold")
        text.append(" ")
        text.append_text(state_word(s.state))
        room = width - len(text)
        kept: set[int] = set()
        for i in sorted(range(len(parts)), key=lambda i: parts[i][2]):
            need = 2 + len(parts[i][0])
            if need <= room:
                kept.add(i)
                room -= need
        for i, (word, style, _) in enumerate(parts):
            if i in kept:
                text.append("  ")
                text.append(word, style or None)
        return text

    def _line2(self, s: RunSnapshot, width: int) -> Text:
        total, step = s.total_steps, s.step
        frac = min(1.0, step / total) if total else 0.0
        now = s.ended if s.ended is not None else time.time()
        elapsed = (now - s.started) if s.started else None
        # No total (a script, an endless loader): no bar, no percent and no ETA are invented.
        tail = [f"{frac * 100:5.1f}%"] if total else ["total unknown"]
        tail.append(f"elapsed {fmt_duration(elapsed)}")
        if s.live and total:
            tail.append(f"ETA {'paused' if s.state in (PAUSED, EVAL) else fmt_duration(s.eta_s)}")
        if not total and s.live and s.steps_per_s and s.state == RUNNING:
            tail.append(f"{fmt_num(s.steps_per_s)} steps/s")
        if s.live and s.state.held:  # no rate is made up while nothing trains
            tail.append("samples/s paused")
        elif s.samples_per_s:
            tail.append(f"{fmt_num(s.samples_per_s)} samples/s")
        if self.hint:  # ended badly: why, and how to go on (--resume), before the numbers
            command = self.hint.rsplit(": ", 1)[-1]  # `dltui train --resume RUN FILE`
            for words in ([s.detail, self.hint], [s.detail, command], [command]):
                words = [w for w in words if w]
                if len("  ".join(words)) <= width - 1:
                    break
            tail = words + tail
        elif s.detail and s.state in (FAILED, CRASHED, STOPPED, FINISHED, STARTING):
            tail.append(s.detail)
        tail_text = "  ".join(tail)
        bar_w = min(40, width - 3 - len(tail_text)) if total and not self.hint else 0
        text = Text(no_wrap=True, overflow="ellipsis")
        if bar_w >= 8:
            done = round(frac * bar_w)
            full, empty = ("#", ".") if self.ascii else ("█", "░")
            text.append(full * done, "green")
            text.append(empty * (bar_w - done), "dim")
            text.append(" ")
        text.append(tail_text)
        return text


def next_step(s: RunSnapshot) -> str | None:
    """For a crashed, failed or stopped run: `dltui train --resume RUN FILE` when it has a
    checkpoint, else how to start again (the CLI's words: `dltui status` says the same)."""
    if s.live or s.state not in (CRASHED, FAILED, STOPPED):
        return None
    from ..cli import next_step_hint  # only for ended runs: the CLI module is not needed before

    return next_step_hint(s.run_dir, str(s.state), s.meta)


def lr_words(s: RunSnapshot) -> str:
    """'lr 0.01' for one optimizer; 'lr optD 0.01, optG 1e-3' when the run has several."""
    opts = s.optimizer_lrs
    if len(opts) > 1:
        return "lr " + "  ".join(
            f"{name} {', '.join(fmt_num(x) for x in lrs[:3]) or '?'}" for name, lrs in opts.items()
        )
    return "lr " + ", ".join(fmt_num(x) for x in s.lrs[:3]) if s.lrs else ""
