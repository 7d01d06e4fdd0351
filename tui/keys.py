"""Every key of the dashboard, gathered from the BINDINGS where each lives, for the help screen
(`?`) and the command palette (ctrl+p): one list, so neither can miss a key the other shows."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from textual.actions import parse
from textual.app import SystemCommand
from textual.binding import Binding

if TYPE_CHECKING:
    from .app import DltuiApp

# Keys that no BINDINGS entry names: the widgets' own (a tree's enter, a log's arrows).
PANE_EXTRA: dict[str, list[tuple[str, str]]] = {
    "layers": [("up/down", "pick a parameter: its history and histograms on the right")],
    "tensors": [("up/down, enter", "inspect the tensor under the cursor")],
    "model": [("up/down, enter", "a module's parameters, shapes, hooks and training flag")],
    "console": [("up/down, pgup/pgdn", "scroll back; the view stops following the tail")],
    "metrics": [("click", "open that chart full size (esc: back to the grid)")],
}
ANYWHERE = [
    ("ctrl+p", "command palette: every action here, found by typing part of its name"),
    ("tab", "move the focus (shift+tab: back)"),
    ("ctrl+q", "quit, asking like q does"),
]
MOUSE = [
    ("click", "a tab, a footer key (runs it), a table row or tree node (selects it)"),
    ("wheel", "scrolls tables, trees, the events list and the console"),
]
# Shown once for the two space bindings (Pause while running, Resume while paused).
PAUSE_RESUME = "pause_resume"


def app_key(key: str, action: str, description: str, tooltip: str, id: str, **kw: Any) -> Binding:
    """One of the app's own keys: a priority binding, so it acts from every tab before a focused
    tree or table sees it (DltuiApp.check_action steps it aside for a text box or a dialog).
    Tab keys stay out of the footer; the rest are chosen by RunFooter."""
    show = not id.startswith("tab.")
    return Binding(key, action, description, show, tooltip=tooltip, priority=True, id=id, **kw)


def key_name(b: Binding) -> str:
    return b.key_display or b.key.split(",")[0]


def action_name(action: str) -> str:
    return action.split("(")[0]


def pane_classes(tabs: Iterable[tuple[str, str, str | None, str | None]]) -> Iterator[tuple]:
    """(tab id, label, pane class) of each tab whose pane module imports."""
    from .panes.overview import OverviewPane

    for tab, label, module, cls_name in tabs:
        if module is None:
            yield tab, label, OverviewPane
            continue
        try:
            yield (
                tab,
                label,
                getattr(importlib.import_module(f"dltui.tui.panes.{module}"), cls_name),
            )
        except (ImportError, AttributeError):
            continue


def pane_keys(cls: type) -> list[Binding]:
    return [b for b in getattr(cls, "BINDINGS", ()) if isinstance(b, Binding) and b.description]


def run_keys(app: DltuiApp) -> list[tuple[str, str]]:
    """The keys that act on the run from any tab, with what each does for this run."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for b in app.BINDINGS:
        if not isinstance(b, Binding) or not b.description or (b.id or "").startswith("tab."):
            continue
        name = action_name(b.action)
        if name == PAUSE_RESUME and name in seen:
            continue
        seen.add(name)
        what = b.tooltip or b.description
        if name == PAUSE_RESUME:
            what = "Pause the run at the next step boundary, or resume it"
        if name == "toggle_mode" and app.snapshot and app.snapshot.is_script:
            what = "One eval pass (the script's dltui.on_eval); training goes on"
        if app.unsupported(name):
            what += " - unavailable for this run"
        out.append((key_name(b), what))
    return out


def help_sections(app: DltuiApp, tabs: Iterable[tuple], about: list[tuple[str, str]]) -> list:
    """The help screen: this run, the run keys, each tab's keys, the palette and the mouse."""
    tabs = list(tabs)
    labels = ", ".join(label for _, label, _, _ in tabs)
    sections: list[tuple[str, list[tuple[str, str]]]] = [
        ("This run", about),
        ("Run (any tab; steering keys only while the run is live)", run_keys(app)),
        ("Tabs", [(f"1-{len(tabs)}", labels)]),
    ]
    for tab, label, cls in pane_classes(tabs):
        rows = [(key_name(b), b.tooltip or b.description) for b in pane_keys(cls)]
        rows += PANE_EXTRA.get(tab, [])
        if rows:
            sections.append((f"{label} tab", rows))
    sections.append(("Anywhere", ANYWHERE))
    sections.append(("Mouse", MOUSE))
    return sections


def palette_commands(app: DltuiApp, tabs: Iterable[tuple]) -> Iterator[SystemCommand]:
    """A palette entry for every key: the run's, the tabs', and each tab's own (which switch
    to that tab first)."""
    tabs = list(tabs)
    seen: set[str] = set()
    for b in app.BINDINGS:
        if not isinstance(b, Binding) or not b.description:
            continue
        name = action_name(b.action)
        if name == PAUSE_RESUME:
            if name in seen:
                continue
            seen.add(name)
            title, what = "Pause / resume (space)", "Pause the run, or resume it when paused"
        elif name == "show_tab":
            title, what = f"{b.description} tab ({key_name(b)})", b.tooltip or b.description
        else:
            title, what = f"{b.description} ({key_name(b)})", b.tooltip or b.description
        yield SystemCommand(title, what, lambda a=b.action: app_action(app, a))
    for tab, label, cls in pane_classes(tabs):
        for b in pane_keys(cls):
            yield SystemCommand(
                f"{b.description} ({key_name(b)}, {label} tab)",
                b.tooltip or b.description,
                lambda t=tab, c=cls, a=b.action: pane_action(app, t, c, a),
            )


async def app_action(app: DltuiApp, action: str) -> None:
    """Run one of the app's actions from the palette, saying why when the run can't take it."""
    from .app import STEERING

    _, name, params = parse(action)
    if name in STEERING and not app.steerable():
        return
    if app.unsupported(name):
        app.explain_unsupported(name)
        return
    result: Any = getattr(app, f"action_{name}")(*params)
    if inspect.isawaitable(result):
        await result


async def pane_action(app: DltuiApp, tab: str, cls: type, action: str) -> None:
    """Show the tab, wait for its pane (tabs 2-5 load on first show), run the key's action."""
    app.action_show_tab(tab)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        panes = list(app.header.screen.query(cls))
        if panes:
            await app.run_action(action, panes[0])
            return
        await asyncio.sleep(0.05)
    app.notify(f"the {tab} tab did not load", severity="error", timeout=4)
