"""A tab's pane, imported and mounted after the Overview's first paint (or when first shown)."""

from __future__ import annotations

import importlib
from pathlib import Path

from textual.widget import Widget
from textual.widgets import Static

from dltui.run.client import ControlClient

LOAD_AFTER_S = 1.5  # tabs 2-5 load after the Overview's first paint, unless shown earlier


class DeferredPane(Widget):
    """A tab's pane, imported and mounted when first shown or a moment after start-up.

    Importing and composing four panes costs a few hundred ms on a busy box: the Overview's
    first paint does not wait for it. Tabs 2-5 live in their own modules; one that is not
    installed says so in one line.
    """

    DEFAULT_CSS = "DeferredPane { height: 1fr; width: 1fr; }"

    def __init__(
        self,
        module: str,
        cls_name: str,
        label: str,
        run_dir: Path,
        client: ControlClient,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = (module, cls_name, label)
        self.run_dir, self.client = run_dir, client
        self._loaded = False  # set before the first await: the timer and on_show may both call

    def on_mount(self) -> None:
        self.set_timer(LOAD_AFTER_S, self._load)

    async def on_show(self) -> None:
        await self._load()
        focus_first(self)  # shown by its tab: its own keys should work at once

    async def _load(self) -> None:
        if self._loaded or not self.app.is_running or not self.is_parent_active:
            return  # the app is shutting down: a pane mounted now would find its children gone
        self._loaded = True
        module, cls_name, label = self.spec
        try:
            cls = getattr(importlib.import_module(f"dltui.tui.panes.{module}"), cls_name)
        except (ImportError, AttributeError):
            await self.mount(Static(f"{label}: not available in this build", classes="missing"))
            return
        await self.mount(cls(self.run_dir, self.client, classes="pane"))
        if shown(self):  # its tab was opened while the timer's load was under way: on_show's
            focus_first(self)  # focus_first found nothing to focus yet


def focus_first(container: Widget) -> None:
    """Focus the first focusable widget in a tab (its pane's keys act on the focused widget)."""
    for widget in container.query("*"):
        if widget.focusable:
            widget.focus()
            return


def shown(widget: Widget) -> bool:
    """True when the widget and all its ancestors are displayed (its tab is the active one)."""
    node: object = widget
    while isinstance(node, Widget):
        if not node.display:
            return False
        node = node.parent
    return True
