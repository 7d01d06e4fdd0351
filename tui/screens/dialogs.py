"""Modal dialogs: set the learning rate, quit (stop / detach / cancel), and the help screen."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, Input, Label, OptionList, Static

from dltui.run.status import RunStatus
from dltui.run.wire import STEERING_KEYS, parse_lr

from ..poller import RunSnapshot
from ..widgets.format import fmt_num


class LrValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        try:
            parse_lr(value)
        except ValueError as e:
            return self.failure(str(e))
        return self.success()


@dataclass(frozen=True)
class LrChoice:
    """What the LR dialog asks for: the text typed, for which optimizer and param group (None:
    the run's own optimizer / all of its groups)."""

    value: str
    optimizer: str | None = None
    group: int | None = None


def lr_targets(lrs: dict[str, list[float]], groups: dict[str, int]) -> list[tuple[LrChoice, str]]:
    """The dialog's choices, (target, label): each optimizer with all its groups, and each group
    alone where an optimizer has several. Labels show the current LRs."""
    out: list[tuple[LrChoice, str]] = []
    width = max((len(n) for n in lrs), default=0) + 2 if len(lrs) > 1 else 0  # names if several
    for name, values in lrs.items():
        n = max(groups.get(name, 0), len(values))
        now = ", ".join(fmt_num(x) for x in values) or "unknown"
        which = "all groups  " if n > 1 else ""
        shown = name if width else ""
        out.append((LrChoice("", name, None), f"{shown:<{width}}{which}{now}"))
        for g in range(n if n > 1 else 0):
            v = fmt_num(values[g]) if g < len(values) else "unknown"
            out.append((LrChoice("", name, g), f"{'':<{width}}group {g:<6}{v}"))
    return out


class LrDialog(ModalScreen[LrChoice | None]):
    """Asks for a new LR, validated as it is typed, and, when the run has several optimizers (a
    GAN's two) or param groups, which one: up/down pick it while typing. Dismisses with an
    LrChoice, or None."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel"),
        Binding("up", "move(-1)", "Previous optimizer", show=False, id="dialog.lr_up"),
        Binding("down", "move(1)", "Next optimizer", show=False, id="dialog.lr_down"),
    ]

    def __init__(
        self, lrs: list[float] | dict[str, list[float]], groups: dict[str, int] | None = None
    ) -> None:
        """`lrs`: the run's one optimizer's LRs, or {name: LRs} for each optimizer, the run's
        own first; `groups`: each optimizer's group count, where its LRs are not known yet."""
        super().__init__()
        self.lrs = lrs if isinstance(lrs, dict) else {"": list(lrs)}
        self.targets = lr_targets(self.lrs, groups or {})
        self.several = len(self.lrs) > 1

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="lr-dialog") as box:
            box.border_title = "Set learning rate"
            if len(self.targets) > 1:
                what = "optimizer" if self.several else "param group"
                yield Static(
                    f"Choose the {what} (up/down), then type a value (0.01), a factor "
                    "(*0.5) or a divisor (/2); it applies at the next step."
                )
                options = OptionList(*(Text(label) for _, label in self.targets), id="lr-target")
                options.can_focus = False  # the input keeps the keys; up/down move the choice
                yield options
            else:
                (values,) = self.lrs.values()
                now = ", ".join(fmt_num(x) for x in values) or "unknown"
                groups = "all param groups" if len(values) != 1 else "the param group"
                yield Static(
                    f"Now: {now}. Type a value (0.01), a factor (*0.5) or a divisor (/2); "
                    f"it applies to {groups} at the next step."
                )
            yield Input(
                placeholder="0.01, *0.5 or /2",
                validators=[LrValidator()],
                id="lr-input",
                validate_on=["changed", "submitted"],
            )
            yield Label("", id="lr-error")
            with Horizontal(classes="buttons"):
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        for options in self.query("#lr-target").results(OptionList):
            options.highlighted = 0
        self.query_one(Input).focus()

    @property
    def target(self) -> LrChoice:
        """The highlighted choice (the run's own optimizer, all groups, when there is no list)."""
        i = 0
        for options in self.query("#lr-target").results(OptionList):
            i = options.highlighted or 0
        return self.targets[i][0] if self.targets else LrChoice("")

    def action_move(self, delta: int) -> None:
        for options in self.query("#lr-target").results(OptionList):
            options.highlighted = ((options.highlighted or 0) + delta) % len(self.targets)

    @on(OptionList.OptionSelected)
    def _picked(self) -> None:
        self.query_one(Input).focus()  # a click picks the target; typing goes on in the input

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        result = event.validation_result
        error = (
            ""
            if not event.value or result is None or result.is_valid
            else result.failure_descriptions[0]
        )
        self.query_one("#lr-error", Label).update(error)

    @on(Input.Submitted)
    @on(Button.Pressed, "#apply")
    def _apply(self) -> None:
        value = self.query_one(Input).value
        try:
            parse_lr(value)
        except ValueError as e:
            self.query_one("#lr-error", Label).update(str(e))
            return
        t = self.target
        # the optimizer's name goes with the request only where the run has several
        self.dismiss(LrChoice(value.strip(), t.optimizer if self.several else None, t.group))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class QuitDialog(ModalScreen[str]):
    """Quit while the run is live: 'stop' it, 'detach' and leave it running, or 'cancel'."""

    BINDINGS = [
        Binding("s", "choose('stop')", "Stop the run", id="quit.stop"),
        Binding("d", "choose('detach')", "Detach", id="quit.detach"),
        Binding("escape", "choose('cancel')", "Cancel", id="quit.cancel"),
    ]

    def __init__(self, run_name: str, owns_engine: bool) -> None:
        super().__init__()
        self.run_name = run_name
        self.owns_engine = owns_engine

    def compose(self) -> ComposeResult:
        started = "You started this run here. " if self.owns_engine else ""
        with Vertical(classes="dialog", id="quit-dialog") as box:
            box.border_title = "Quit"
            yield Static(f"{started}Run {self.run_name} is still going.")
            yield Static("Stop it (a final checkpoint is saved), or detach and leave it training?")
            # the first thing a small terminal drops: the buttons must stay on screen
            yield Static(f"Re-attach later with `dltui attach {self.run_name}`.", classes="hint")
            with Horizontal(classes="buttons"):
                yield Button("Stop the run (s)", variant="error", id="stop")
                yield Button("Detach (d)", variant="primary", id="detach")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#detach", Button).focus()  # the choice that loses nothing

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "cancel")

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)


STATES_HELP = tuple((state.label, state.help) for state in RunStatus)  # one vocabulary


# How to get a control a run lacks, for the help screen (the engine's refusal, shown when the
# key is pressed, says it in full).
HOW_TO_ENABLE = {"eval": "e (eval): add `import dltui` and `dltui.on_eval(evaluate)` to the script"}


def about_run(snap: RunSnapshot | None) -> list[tuple[str, str]]:
    """The help screen's first lines: script or recipe, its optimizers, what it can't do."""
    if snap is None or not snap.meta:
        return [("run", "not known yet (the engine is starting)")]
    script = str(snap.meta.get("script") or "?").rsplit("/", 1)[-1]
    args = " ".join(str(a) for a in snap.meta.get("file_args") or [])
    shown = f"{script} {args}".strip()
    if snap.is_script:
        out = [("script", f"{shown} (its own loop; steered at its optimizer steps)")]
    else:
        out = [("recipe", f"{shown} (dltui's loop)")]
    opts = [
        f"{o['name']} ({o.get('type', '?')}, {o.get('groups', '?')} group"
        f"{'' if o.get('groups') == 1 else 's'})"
        for o in snap.optimizers
    ]
    if opts:
        out.append(("optimizers", ", ".join(opts)))
    elif snap.is_script:
        out.append(("optimizers", "found at the script's first optimizer step"))
    missing = [k for k in STEERING_KEYS if k != "resume" and not snap.supports(k)]  # no key: resume
    for k in missing:
        out.append(("unavailable", HOW_TO_ENABLE.get(k, f"{k}: not offered by this run's engine")))
    return out


class HelpScreen(ModalScreen[None]):
    """Every key, where it works, and what the states mean."""

    BINDINGS = [
        Binding("escape,q,question_mark", "close", "Close", id="help.close"),
    ]

    def __init__(self, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        parts: list[Text | Table] = []

        def table(rows: Iterable[tuple[str, str]]) -> Table:
            # a grid, so a long description wraps under itself, not under the key
            grid = Table.grid(padding=(0, 2, 0, 2))
            grid.add_column(style="bold", no_wrap=True, min_width=w)
            grid.add_column(overflow="fold")
            for key, description in rows:
                grid.add_row(key, description)
            return grid

        w = max((len(k) for _, keys in self.sections for k, _ in keys), default=10)
        for title, keys in self.sections:
            parts.append(Text(title, "bold underline"))
            parts.append(table(keys))
            parts.append(Text(""))
        parts.append(Text("States", "bold underline"))
        parts.append(table(STATES_HELP))
        parts.append(
            Text(
                "\nSteering keys act at the next step boundary; every command is recorded as an "
                "event and marked on the plots. Press escape to close.",
                "dim",
            )
        )
        text = Group(*parts)
        with VerticalScroll(classes="dialog", id="help-dialog") as box:
            box.border_title = "dltui keys"
            yield Static(text)

    def action_close(self) -> None:
        self.dismiss(None)
