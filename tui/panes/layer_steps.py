"""Which recorded layer-stats step the Layers tab shows: the newest (following a live run), or
one the user moved to with , . < > Home End. Moves are asked for on the UI thread and resolved
in the store by the pane's fetch worker, one index descent per recorded step moved."""

from __future__ import annotations

import threading
from typing import Any

from rich.text import Text


class LayerSteps:
    """The shown step's state; thread-safe between the UI thread (asks) and the worker (resolves)."""

    def __init__(self) -> None:
        self.pinned: int | None = None  # the step moved to; None: follow the newest
        self._nav: tuple[str, int] | None = None  # a move not yet resolved in the store
        self._lock = threading.Lock()

    def move(self, records: int) -> None:
        """`records` recorded steps on (back, when negative) from where the tab is."""
        with self._lock:
            if self._nav is not None and self._nav[0] == "by":
                records += self._nav[1]  # keys pressed faster than the store answers add up
            self._nav = ("by", records)

    def jump(self, where: str) -> None:
        """'first' or 'latest' (following a live run again)."""
        with self._lock:
            self._nav = (where, 0)

    def resolve(self, r: Any, first: int | None, last: int | None) -> int | None:
        """The step to show, the pending move applied (worker thread; r is a RunReader)."""
        with self._lock:
            nav, self._nav = self._nav, None
            pinned = self.pinned
        if last is None or first is None:
            return None  # nothing recorded yet: a move has nowhere to go
        if nav is not None:
            kind, n = nav
            if kind == "latest":
                pinned = None
            elif kind == "first":
                pinned = first
            else:
                pinned = r.layer_stat_step_moved(last if pinned is None else pinned, n)
            if pinned is not None and pinned >= last:
                pinned = None  # moved onto the newest step: follow the run again
            with self._lock:
                self.pinned = pinned
        return last if pinned is None else pinned

    def line(self, step: int | None, last: int | None, width: int = 200) -> Text:
        """Which step the table shows: the latest, or step N of M while moved back (the keys'
        words shorter when narrow)."""
        if step is None:
            return Text("no layer statistics recorded yet", style="dim")
        if self.pinned is None:
            words = [(f"step {step}", "bold"), ("  latest", "green")]
            hints = ("  (, . < > Home: earlier steps)", "  (, < Home: earlier)")
        else:
            words = [(f"step {step} of {last}", "bold reverse")]
            hints = ("  (press End for latest)", "  (End: latest)")
        for lead, hint in (("layer stats at ", hints[0]), ("", hints[1]), ("", "")):
            out = Text(lead, no_wrap=True)
            for text, style in words:
                out.append(text, style=style)
            out.append(hint, style="dim" if self.pinned is None else "yellow")
            if out.cell_len <= width:
                break
        return out
