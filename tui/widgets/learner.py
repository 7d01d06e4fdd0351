"""The Run panel: the training arithmetic a learner looks for, from meta['learner'] (recorded
once by the engine, engine/learner.py): samples / batch = steps per epoch, the optimizer, loss
and scheduler with their hyperparameters, and what eval mode switches (shown in full in eval)."""

from __future__ import annotations

import textwrap
from typing import Any

from rich.text import Text
from textual.widget import Widget

from ..poller import EVAL, RunSnapshot
from .format import join_lines

LABEL_W = 6  # "optim " and friends: one column of labels
COMPACT_BELOW = 44  # narrower than this (the panel at 80 columns): no labels, short forms
# The Overview's width from which the panel sits beside the events: below, the events' messages
# (a 28-column prefix, then the text) would be cut, so the two take turns (i).
SIDE_BY_SIDE = 140


def hp(v: Any) -> str:
    """A hyperparameter as the user would have written it: 0.003, 1e-08, (0.9, 0.999)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return str(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "(" + ", ".join(hp(x) for x in v) + ")"
    return str(v)


def args_text(args: dict[str, Any]) -> str:
    """k=v pairs; switches that are off (amsgrad=False, maximize=False) and unset values left out."""
    return ", ".join(f"{k}={hp(v)}" for k, v in args.items() if v is not False and v is not None)


def train_line(learner: dict[str, Any], compact: bool = False) -> str:
    """`N samples / batch B = S steps per epoch (last batch r)`, or what of it can be known;
    compact: `N / B = S steps/epoch (last r)`."""
    t = learner.get("train")
    script = learner.get("source") == "script"
    if not t:
        if script:
            return "unknown: the script's own loop (no DataLoader found in its frames)"
        return "unknown"
    where = f"  (`{t['found_as']}` in the script)" if t.get("found_as") else ""
    n, b, batches = t.get("samples"), t.get("batch_size"), t.get("batches")
    unit = "batches" if script else "steps"
    if batches is None:
        cap = learner.get("steps_cap")
        limit = f"; an epoch is steps_per_epoch = {cap} steps" if cap else ""
        return f"the train loader has no length: steps per epoch unknown{limit}{where}"
    if not b or n is None:
        return f"{batches:,} {unit} per epoch (batch size set by its batch sampler){where}"
    text = f"{n:,} / {b} = {batches:,}" if compact else f"{n:,} samples / batch {b} = {batches:,}"
    k, steps = t.get("accumulate") or 1, t.get("steps")
    if k > 1:
        text += f" batches / accumulate {k} = {steps if steps is not None else '?':,}"
    text += f" {unit}/epoch" if compact else f" {unit} per epoch"
    if t.get("drop_last"):
        dropped = t.get("dropped") or 0
        text += f" (last {dropped} samples dropped)" if dropped else " (every batch full)"
    else:
        text += f" (last {'' if compact else 'batch '}{t.get('last_batch')})"
    cap = learner.get("steps_cap")
    if cap is not None and steps is not None and steps < -(-batches // k):
        text += f", capped at {steps} by steps_per_epoch"
    if n != t.get("dataset") and t.get("dataset") is not None:
        text += f"; the dataset holds {t['dataset']:,}"
    return text + where


def optimizer_lines(learner: dict[str, Any]) -> list[str]:
    out = []
    opts = learner.get("optimizers") or []
    for o in opts:
        name = f"{o['name']}: " if len(opts) > 1 else ""
        text = f"{name}{o['type']}({args_text(o.get('hparams') or {})})"
        for i, g in enumerate(o.get("groups") or [], 1):
            if g:
                text += f"; group {i}: {args_text(g)}"
        if learner.get("schedulers"):  # the header's LR is the one in use now
            text += " at step 0"
        out.append(text)
    return out or ["unknown until the script's first optimizer step"]


def loss_line(learner: dict[str, Any]) -> str:
    loss = learner.get("loss")
    if not loss:
        if learner.get("source") == "script":
            return "unknown: the script computes it (no loss module found in its frames)"
        return "unknown"
    where = f"  (`{loss['found_as']}`)" if loss.get("found_as") else ""
    args = args_text(loss.get("args") or {})
    return f"{loss['type']}({args}){where}" if args or "." not in loss["type"] else loss["type"]


def scheduler_lines(learner: dict[str, Any]) -> list[str]:
    out = []
    for s in learner.get("schedulers") or []:
        text = f"{s['type']}({args_text(s.get('args') or {})})"
        chain = s.get("chain") or []
        if chain:
            text += " of " + " then ".join(f"{c['type']}({args_text(c['args'])})" for c in chain)
        if s.get("interval"):
            text += f", stepped every {s['interval']}"
        out.append(text)
    if out:
        return out
    if learner.get("source") == "script":
        return ["none found (the script may set the LR itself: see the LR plot)"]
    return ["none: the LR stays as set (or as you steer it)"]


KINDS = (
    ("dropout", "Dropout"),
    ("norm", "BatchNorm with running stats"),
    ("other", "RNN/attention dropout"),
)
WHAT_EVAL_DOES = {
    "dropout": "off (every unit kept, none zeroed)",
    "norm": "use their running mean/var, not the batch's",
    "other": "internal dropout off",
}


def eval_summary(learner: dict[str, Any]) -> str:
    """One line, in train mode: what `e` would switch."""
    ev = learner.get("eval") or {}
    parts = [f"{ev[k]['count']} {word}" for k, word in KINDS if (ev.get(k) or {}).get("count")]
    switched = ", ".join(parts) if parts else "no Dropout or BatchNorm: same forward"
    return f"e: model.eval() ({switched}) + no_grad()"


def module_name(entry: str) -> str:
    """'2 Dropout(p=0.3)' -> '2 (p=0.3)': the module's name and what it switches, its type
    being the line's word already; 'bn BatchNorm1d' -> 'bn'."""
    name, _, rest = entry.partition(" ")
    return f"{name} ({rest.split('(', 1)[1]}" if "(" in rest else name


def eval_lines(learner: dict[str, Any], script: bool) -> list[str]:
    """In eval mode: each kind of switched module (count and names), and no_grad."""
    ev = learner.get("eval") or {}
    out = []
    for key, word in KINDS:
        kind = ev.get(key) or {}
        if kind.get("count"):
            names = ", ".join(map(module_name, kind.get("names") or []))
            more = kind["count"] - len(kind.get("names") or [])
            names += f", +{more} more" if more > 0 else ""
            out.append(f"{kind['count']} {word} {WHAT_EVAL_DOES[key]}: {names}")
    if not out:
        out.append("model.eval() changes nothing here: no Dropout or BatchNorm in this model")
    out.append("no_grad(): no gradients kept, no optimizer step, weights unchanged")
    if script:
        out.append("one pass of the script's dltui.on_eval function, then training goes on")
    else:
        v = learner.get("val")
        if v and v.get("batches") is not None and v.get("samples") is not None:
            out.append(
                f"validation: {v['samples']:,} samples / batch {v.get('batch_size')} = "
                f"{v['batches']:,} batches; training held until e"
            )
        else:
            out.append("training held until e")
    return out


class RunPanel(Widget):
    """What the run computes, in a learner's words; repainted only when its meta or the
    train/eval mode changes."""

    DEFAULT_CSS = """
    RunPanel { width: 1fr; height: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.learner: dict[str, Any] | None = None
        self.in_eval = False
        self.script = False
        self.waiting = "waiting for the run to start"
        self.chosen = False  # `i`: shown in the events' place (under SIDE_BY_SIDE columns)

    def show(self, snap: RunSnapshot) -> None:
        learner = snap.meta.get("learner")
        in_eval = snap.state == EVAL
        if snap.is_script:
            self.waiting = "found at the script's first optimizer step"
        elif snap.meta:
            self.waiting = "not recorded for this run (it predates the Run panel)"
        if (learner, in_eval) != (self.learner, self.in_eval):
            self.learner, self.in_eval, self.script = learner, in_eval, snap.is_script
            self.border_title = "run: EVAL mode" if in_eval else "run"
            self._place()
            self.refresh()

    def toggle(self) -> None:
        """`i`: where the panel and the events take turns (narrow), show the other one."""
        self.chosen = not self.chosen
        self._place()

    def _place(self) -> None:
        """Ask for the events' place while chosen or in eval mode (what eval switches is the
        thing to see then); the stylesheet decides whether the two take turns at this width."""
        if self.parent is not None:
            self.parent.set_class(self.chosen or self.in_eval, "-run")
        self.border_subtitle = "i: events" if self.chosen else ""

    def lines(self, compact: bool = False) -> list[tuple[str, str, str]]:
        """(label, text, style) rows, the most telling first (eval's, in eval mode)."""
        lr = self.learner
        if lr is None:
            return [("", self.waiting, "dim")]
        if lr.get("error"):
            return [("", f"the engine could not describe this run: {lr['error']}", "dim")]
        rows = [("data", train_line(lr, compact), "")]
        rows += [("optim", line, "") for line in optimizer_lines(lr)]
        rows.append(("loss", loss_line(lr), ""))
        rows += [("sched", line, "") for line in scheduler_lines(lr)]
        if self.in_eval:
            ev = eval_lines(lr, self.script)
            return [("EVAL" if i == 0 else "", t, "bold") for i, t in enumerate(ev)] + rows
        return [*rows, ("eval", eval_summary(lr), "dim")]

    def render(self) -> Text:
        """One line per entry; rows to spare let the first long entries wrap (hanging indent),
        and what still does not fit ends in an ellipsis. In eval mode the eval entries wrap
        whole first, before the others get a row."""
        width, height = max(1, self.size.width), max(1, self.size.height)
        compact = width < COMPACT_BELOW  # no label column, shorter words
        label_w = 0 if compact else LABEL_W
        rows = self.lines(compact)
        room = max(8, width - label_w)
        wrapped = [textwrap.wrap(text, room, break_on_hyphens=False) or [""] for _, text, _ in rows]
        out: list[Text] = []
        for i, ((label, _, style), parts) in enumerate(zip(rows, wrapped, strict=True)):
            left = height - len(out)
            if left <= 0:
                break
            greedy = label == "EVAL" or (self.in_eval and style == "bold")
            later = 0 if greedy else len(rows) - i - 1  # a row kept for each entry below
            n = max(1, min(len(parts), left - later))
            for j, chunk in enumerate([*parts[: n - 1], " ".join(parts[n - 1 :])]):
                head = label if j == 0 and (label == "EVAL" or not compact) else ""
                out.append(
                    self._line(
                        head, chunk, style, max(label_w, len(head) + 1) if head else label_w, width
                    )
                )
        return join_lines(out[:height])

    def _line(self, head: str, text: str, style: str, label_w: int, width: int) -> Text:
        line = Text(no_wrap=True, overflow="crop" if self.ascii else "ellipsis")
        line.append(f"{head:<{label_w}}" if head else " " * label_w)
        line.stylize("bold yellow" if head == "EVAL" else "dim")
        line.append(text, style or None)
        if self.ascii and line.cell_len > width:  # crop, and say so with plain dots
            line.truncate(width - 3)
            line.append("...")
        return line

    @property
    def ascii(self) -> bool:
        return bool(getattr(self.app, "ascii_mode", False))
