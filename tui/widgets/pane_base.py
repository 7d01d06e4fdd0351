"""PollingPane: the base of the dashboard's tab panes, which read their data when the run moved.

One data path: the app's frame clock hands each new RunSnapshot to the panes on screen
(frame()); a pane starts a fetch (in a worker thread) only when the snapshot's change counter
for its data moved (data_key()), at most once per POLL_S. No pane has a timer of its own.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from textual.message import Message
from textual.widget import Widget

from dltui.run.client import ControlClient
from dltui.run.reader import RunNotFound, RunReader

from ..poller import RunSnapshot


class PollingPane(Widget):
    """A tab pane that reads its own data from the run store (and the engine) off the UI thread.

    Subclasses implement `fetch()` (runs in a worker thread, returns plain data), `show(data)`
    (runs on the UI thread) and, to fetch less, `data_key(snapshot)`. The app calls frame() on
    the panes that are displayed: hidden tabs cost nothing, and showing a tab fetches at once if
    its data moved while it was hidden.
    """

    POLL_S = 0.5  # at most one fetch this often, however fast the run moves
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
        self._key: object = None  # data_key() of the snapshot the last fetch was for
        self._fetched_at = 0.0
        self.snapshot: RunSnapshot | None = None

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

    # -- the data path -------------------------------------------------------------------------
    # Textual calls the handlers of every class in the MRO, so subclasses write their own
    # on_mount / on_resize and must not call these through super() (that would run them twice).
    def data_key(self, snap: RunSnapshot) -> object:
        """What must change in the snapshot for this pane's data to have changed (default: any
        change to the run). A pane that reads one table keys on that table's counter."""
        return snap.version

    def frame(self, snap: RunSnapshot | None) -> None:
        """The app's frame clock: fetch if this pane's data moved since its last fetch."""
        if snap is None:
            return
        self.snapshot = snap
        key = self.data_key(snap)
        if key == self._key or not self.showing or self._busy.locked():
            return
        if time.monotonic() - self._fetched_at < self.POLL_S:
            return  # the next frame asks again
        self._key, self._fetched_at = key, time.monotonic()
        self._start_fetch()

    def on_mount(self) -> None:
        self.call_after_refresh(self._first_frame)

    def on_show(self) -> None:
        self._first_frame()

    def _first_frame(self) -> None:
        self._fetched_at = 0.0  # shown (or mounted): read now, not a frame later
        self.frame(getattr(self.app, "snapshot", None))

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
        except Exception as e:  # a locked or half-written store: show it, try again next frame
            data = e
            self._key = None
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
