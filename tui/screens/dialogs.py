"""Modal dialogs: set the learning rate, quit (stop / detach / cancel), and the help screen."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.validation import ValidationResult, Validator
from textual.widgets import Button, Input, Label, Static

from dltui.engine.wire import parse_lr

from ..poller import FINISHED, PAUSED, RUNNING
from ..widgets.format import fmt_num


class LrValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        try:
            parse_lr(value)
        except ValueError as e:
            return self.failure(str(e))
        return self.success()


class LrDialog(ModalScreen[str | None]):
    """Asks for a new LR, validated as it is typed; dismisses with the text, or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]

    def __init__(self, lrs: list[float]) -> None:
        super().__init__()
        self.lrs = lrs

    def compose(self) -> ComposeResult:
        now = ", ".join(fmt_num(x) for x in self.lrs) or "unknown"
        groups = "all param groups" if len(self.lrs) != 1 else "the param group"
        with Vertical(classes="dialog", id="lr-dialog") as box:
            box.border_title = "Set learning rate"
            yield Static(f"Now: {now}. Type a value (0.01), a factor (*0.5) or a divisor (/2); "
                         f"it applies to {groups} at the next step.")  # fmt: skip
            yield Input(placeholder="0.01, *0.5 or /2", validators=[LrValidator()], id="lr-input",
                        validate_on=["changed", "submitted"])  # fmt: skip
            yield Label("", id="lr-error")
            with Horizontal(classes="buttons"):
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Cancel", id="cancel")

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
        self.dismiss(value.strip())

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
            yield Static(f"{started}Run {self.run_name} is still going. Stop it (a final checkpoint "
                         f"is saved), or detach and leave it training? Re-attach later with "
                         f"`dltui attach {self.run_name}`.")  # fmt: skip
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


STATES_HELP = (
    (RUNNING, "training"), (PAUSED, "held at a step boundary (space resumes, n steps once)"),
    ("EVAL", "training held, validation passes run (e switches back)"),
    (FINISHED, "ended normally; FAILED: the recipe raised; STOPPED: stopped by request"),
    ("CRASHED", "the engine vanished (killed, lost host); all data recorded so far is shown"),
)  # fmt: skip


class HelpScreen(ModalScreen[None]):
    """Every key, where it works, and what the states mean."""

    BINDINGS = [
        Binding("escape,q,question_mark", "close", "Close", id="help.close"),
    ]

    def __init__(self, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        text = Text()
        for title, keys in self.sections:
            text.append(f"{title}\n", "bold underline")
            for key, description in keys:
                text.append(f"  {key:<12}", "bold")
                text.append(f"{description}\n")
            text.append("\n")
        text.append("States\n", "bold underline")
        for word, meaning in STATES_HELP:
            text.append(f"  {word:<12}", "bold")
            text.append(f"{meaning}\n")
        text.append("\nSteering keys act at the next step boundary; every command is recorded as an "
                    "event and marked on the plots. Press escape to close.", "dim")  # fmt: skip
        with VerticalScroll(classes="dialog", id="help-dialog") as box:
            box.border_title = "dltui keys"
            yield Static(text)

    def action_close(self) -> None:
        self.dismiss(None)
