"""The checkpoint picker: which of a finished run's saved checkpoints its Tensors and Model tabs
read (last, best, or any other file in RUN/checkpoints/)."""

from __future__ import annotations

import time

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from ..checkpoints import Saved
from ..widgets.format import fmt_bytes


def saved_label(s: Saved, loaded: bool) -> str:
    """`last.pt  step 120  12-01 02:03  3.2 MiB  (loaded)`"""
    step = f"step {s.step:,}" if s.step is not None else "step ?"
    when = time.strftime("%m-%d %H:%M", time.localtime(s.mtime))
    return f"{s.name:<16} {step:<12} {when}  {fmt_bytes(s.size)}{'  (loaded)' if loaded else ''}"


class CheckpointPicker(ModalScreen[str | None]):
    """Lists the run's checkpoints; dismisses with the chosen file's name, or None (Esc)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    DEFAULT_CSS = """
    CheckpointPicker #ckpt-list { height: auto; max-height: 12; margin: 1 0 0 0; border: none; }
    """

    def __init__(self, saved: list[Saved], loaded: str | None) -> None:
        super().__init__()
        self.saved, self.loaded = saved, loaded

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="ckpt-dialog") as box:
            box.border_title = "Checkpoint"
            yield Static("Inspect which saved checkpoint? (Enter picks, Esc cancels)")
            yield OptionList(
                *(Option(saved_label(s, s.name == self.loaded), id=s.name) for s in self.saved),
                id="ckpt-list",
            )

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        names = [s.name for s in self.saved]
        options.highlighted = names.index(self.loaded) if self.loaded in names else 0
        options.focus()

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
