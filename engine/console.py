"""Capture the script's stdout/stderr lines into the store while still showing them."""

from __future__ import annotations

import io
import sys
import threading
from typing import TextIO

from .store import RunStore


class Tee(io.TextIOBase):
    """A text stream that writes through to `inner` and records complete lines in the store."""

    def __init__(self, inner: TextIO | None, store: RunStore, stream: str) -> None:
        self.inner = inner
        self.store = store
        self.stream = stream
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.inner is not None:
            try:
                self.inner.write(s)
            except (OSError, ValueError):  # the terminal went away (detached): keep recording
                self.inner = None
        with self._lock:
            text = self._partial + s
            *lines, self._partial = text.split("\n")
        for line in lines:
            self.store.console(self.stream, line)
        return len(s)

    def flush(self) -> None:
        if self.inner is not None:
            try:
                self.inner.flush()
            except (OSError, ValueError):
                self.inner = None

    def close_partial(self) -> None:
        with self._lock:
            rest, self._partial = self._partial, ""
        if rest:
            self.store.console(self.stream, rest)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8") or "utf-8"

    def isatty(self) -> bool:
        return bool(self.inner is not None and self.inner.isatty())

    def fileno(self) -> int:
        if self.inner is None:
            raise OSError("stream detached")
        return self.inner.fileno()


def capture(store: RunStore) -> tuple[Tee, Tee]:
    """Replace sys.stdout/sys.stderr with tees; returns them (call restore() at the end)."""
    out, err = Tee(sys.stdout, store, "stdout"), Tee(sys.stderr, store, "stderr")
    sys.stdout, sys.stderr = out, err
    return out, err


def restore(tees: tuple[Tee, Tee]) -> None:
    for t in tees:
        t.flush()
        t.close_partial()
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
