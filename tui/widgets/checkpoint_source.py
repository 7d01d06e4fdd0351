"""The line over a finished run's Tensors tab: which checkpoint its tensors come from (and its
step), `loading …`, or why none can be read. It starts the checkpoint server in a worker (a torch
import: seconds, never on the UI thread), offers the picker (o), and tells its pane (Changed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.message import Message
from textual.widgets import Static

from ..checkpoints import CheckpointUnavailable, CheckpointUser, Loaded, saved_checkpoints


class CheckpointSource(CheckpointUser, Static):
    """Loads a checkpoint for its pane while `active` (the run has ended); empty otherwise."""

    DEFAULT_CSS = """
    CheckpointSource { height: auto; color: $text-muted; }
    CheckpointSource.-blocking { padding: 1 2; }
    """

    class Changed(Message):
        """A checkpoint is served now (`loaded`), or none is (loading, or it failed)."""

        def __init__(self, loaded: Loaded | None) -> None:
            super().__init__()
            self.loaded = loaded

    class LoadDone(Message):
        bubble = False

        def __init__(self, loaded: Loaded | None, error: str | None, want: str | None) -> None:
            super().__init__()
            self.loaded, self.error, self.want = loaded, error, want

    def __init__(self, run_dir: Path, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.run_dir = Path(run_dir)
        self.active = False
        self.loaded: Loaded | None = None
        self.error: str | None = None
        self._asking = False  # a load worker is under way
        self._want: str | None = None  # the file it is for (None: whichever is loaded)

    @property
    def blocking(self) -> bool:
        """Active with nothing to show yet (loading, or an error): the pane hides its body."""
        return self.active and self.loaded is None

    def on_mount(self) -> None:
        self._draw()

    def on_unmount(self) -> None:
        self.stop_own_server()

    def activate(self, active: bool) -> None:
        """The run ended (read a checkpoint) or was resumed (the engine answers again)."""
        self.active, self.loaded, self.error = active, None, None
        self._draw()
        self.post_message(self.Changed(None))

    def ensure(self) -> None:
        """Load one now unless one is loaded, loading, or failed (o tries another). A load the
        Model tab started is waited for, not repeated."""
        if self.active and self.loaded is None and self.error is None and not self._asking:
            self.request(None)

    def request(self, which: str | None) -> None:
        """Serve checkpoint `which` (None: the one loaded, else the last); says so at once."""
        self._asking, self._want, self.loaded, self.error = True, which, None, None
        self._draw(which or "")
        self.post_message(self.Changed(None))
        self._load(which)

    @work(thread=True, group="checkpoint")
    def _load(self, which: str | None) -> None:
        try:
            self.post_message(self.LoadDone(self.server.load(which), None, which))
        except CheckpointUnavailable as e:
            self.post_message(self.LoadDone(None, str(e), which))

    def on_checkpoint_source_load_done(self, msg: LoadDone) -> None:
        if msg.want != self._want:
            return  # an earlier choice's answer; the newer one follows
        self._asking = False
        if not self.active:
            return
        self.loaded, self.error = msg.loaded, msg.error
        self._draw()
        self.post_message(self.Changed(msg.loaded))

    def lost(self, why: str) -> None:
        """The server stopped answering: say so; o starts one again."""
        self.loaded, self.error = None, f"the checkpoint reader stopped ({why})"
        self._draw()
        self.post_message(self.Changed(None))

    def pick(self) -> None:
        """o: choose which saved checkpoint the tensors come from."""
        saved = saved_checkpoints(self.run_dir)
        if not saved:
            self.notify("this run saved no checkpoint", severity="warning", timeout=4)
            return
        from ..screens.checkpoint_picker import CheckpointPicker

        def chosen(name: str | None) -> None:
            if name is not None and (self.loaded is None or name != self.loaded.name):
                self.request(name)

        current = self.loaded.name if self.loaded else None
        self.app.push_screen(CheckpointPicker(saved, current), chosen)

    def _draw(self, loading: str | None = None) -> None:
        if not self.active:
            text = Text("")
        elif loading is not None or (self.loaded is None and self.error is None):
            name = f"checkpoint {loading}" if loading else "the run's last checkpoint"
            text = Text(f"loading {name} … (a reader process starts: torch loads once)")
        elif self.error is not None:
            text = Text(self.error)
            if self.loaded is None and "saved no checkpoint" not in self.error:
                text.append("\npress o to choose a checkpoint", style="bold")
        else:
            ck = self.loaded
            step = f"step {ck.step:,}" if ck and ck.step is not None else "step unknown"
            text = Text(f"run ended · checkpoint {ck.name if ck else '?'} · {step}", style="bold")
            text.append("  o: choose another", style="dim")
        self.update(text)
        self.display = bool(text.plain)
        self.set_class(self.blocking, "-blocking")
