"""PollingPane: the base of the dashboard's tab panes, which poll the run on a timer in a thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from textual.message import Message
from textual.widget import Widget

from dltui.run.client import ControlClient
from dltui.run.reader import RunNotFound, RunReader


class PollingPane(Widget):
    """A tab pane that reads its own data from the run store (and the engine) off the UI thread.

    Subclasses implement `fetch()` (runs in a worker thread, returns plain data) and `show(data)`
    (runs on the UI thread). The pane polls every POLL_S seconds, but only while it is displayed:
    hidden tabs cost nothing, and showing a tab polls at once so it never shows stale data.
    """

    POLL_S = 1.0
    NARROW_BELOW = 72  # below this width the pane hides (or stacks) its side panel

    class Fetched(Message):
        """A fetch finished in the worker thread; carries its result to the UI thread."""

        bubble = False

        def __init__(self, data: Any) -> None:
            super().__init__()
            self.data = data

    def __init__(self, run_dir: Path, client: ControlClient | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_dir = Path(run_dir)
        self.client = client
        self._reader: RunReader | None = None
        self._busy = threading.Lock()  # one fetch at a time: a slow disk must not pile up threads

    # -- helpers for subclasses ----------------------------------------------------------------
    @property
    def ascii_mode(self) -> bool:
        """Draw without Braille/box/block characters (the app's setting, for dumb terminals)."""
        try:
            return bool(getattr(self.app, "ascii_mode", False))
        except Exception:  # no app yet (constructed but not mounted)
            return False

    def reader(self) -> RunReader | None:
        """This pane's own RunReader, opened on first use; None while the store does not exist."""
        if self._reader is None:
            try:
                self._reader = RunReader(self.run_dir)
            except (RunNotFound, OSError):
                return None  # the engine has not created it yet: try again next tick
        return self._reader

    def plain_tree(self, tree: Any) -> None:
        """In ascii mode, make a Tree draw its guides and expand icons with plain characters."""
        if self.ascii_mode:
            tree.ICON_NODE, tree.ICON_NODE_EXPANDED = "+ ", "- "
            tree.LINES = {k: ("  ", "| ", "`-", "|-") for k in ("default", "bold", "double")}

    @property
    def showing(self) -> bool:
        """True when this pane is displayed (its tab is the active one)."""
        if not self.is_mounted:
            return False
        node: Any = self
        while isinstance(node, Widget):
            if not node.display:
                return False
            node = node.parent
        return True

    # -- polling -----------------------------------------------------------------------------
    # Textual calls the handlers of every class in the MRO, so subclasses write their own
    # on_mount / on_resize and must not call these through super() (that would run them twice).
    def on_mount(self) -> None:
        self.set_interval(self.POLL_S, self.poll)
        self.call_after_refresh(self.poll)

    def on_show(self) -> None:
        self.poll()

    def on_unmount(self) -> None:
        if self._reader is not None and self._busy.acquire(timeout=1.0):
            try:
                self._reader.close()
            finally:
                self._reader = None
                self._busy.release()

    def poll(self, force: bool = False) -> None:
        """Start a fetch unless one is running or the pane is hidden."""
        if (force or self.showing) and not self._busy.locked():
            self._start_fetch()

    def _start_fetch(self) -> None:
        self.run_worker(self._fetch_thread, thread=True, exclusive=True, group="poll")

    def _fetch_thread(self) -> None:
        if not self._busy.acquire(blocking=False):
            return
        try:
            data = self.fetch()
        except Exception as e:  # a locked or half-written store: show it, try again next tick
            data = e
        finally:
            self._busy.release()
        try:
            self.post_message(self.Fetched(data))
        except RuntimeError:  # the app's loop closed while we were reading
            pass

    def on_polling_pane_fetched(self, message: Fetched) -> None:
        message.stop()
        if isinstance(message.data, Exception):
            self.show_error(message.data)
        elif message.data is not None:
            self.show(message.data)

    def on_resize(self) -> None:
        self.set_class(self.size.width < self.NARROW_BELOW, "-narrow")

    # -- to override -------------------------------------------------------------------------
    def fetch(self) -> Any:
        """Read what the pane shows (worker thread; no widget access). None = nothing new."""
        return None

    def show(self, data: Any) -> None:
        """Put fetched data on screen (UI thread)."""

    def show_error(self, error: Exception) -> None:
        """A fetch failed; by default say so in a notification-free way (log only)."""
        self.log.warning(f"{type(self).__name__}: {error}")
