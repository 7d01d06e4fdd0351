"""Tensors tab: a tree of the tensors the engine can show, and an inspector of their storage.

Select a tensor to see its layout (dtype, device, shape, stride, offset, storage, contiguity)
and a drawing of its storage; type a view expression (`x.t()[1:3]`) to see the view's layout
drawn beside the original. Every request goes over a control socket, in a worker thread: to the
live engine, or, for a finished, stopped or crashed run, to a checkpoint server started on one
of its saved checkpoints (tui/checkpoints.py; `o` picks which), which answers the same requests
with the same inspector, so views and drawings are the live ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Static, Tree

from dltui.run.client import ControlClient, ControlError, EngineGone

from ..checkpoints import Loaded
from ..poller import RunSnapshot
from ..widgets.checkpoint_source import CheckpointSource
from ..widgets.format import fmt_bytes, fmt_num
from ..widgets.pane_base import PollingPane
from ..widgets.pane_storage import PaneStorage
from ..widgets.pane_values import PaneValues

NO_ENGINE_YET = "waiting for the engine to answer (it may still be starting)…"
GROUPS = {
    "weights": "weights",  # a state_dict saved outside a run: parameters and buffers unsplit
    "parameter": "parameters",
    "gradient": "gradients",
    "buffer": "buffers",
    "optimizer state": "optimizer state",
    "batch": "last batch / output",
}
LIST_EVERY = 3  # re-list tensors every 3rd poll: gradients and optimizer state appear after step 1
SIDE_BY_SIDE_AT = 76  # inspector width from which base and view are drawn side by side


class TensorsPane(PollingPane):
    """Tensor tree (left) and inspector (right): layout, storage drawings, values."""

    POLL_S = 2.0  # each poll is a request the engine answers at a step boundary: keep it rare
    BINDINGS = [
        Binding("r", "refresh_list", "Refresh", id="tensors.refresh"),
        Binding("slash", "edit_expr", "View expr", key_display="/", id="tensors.expr"),
        Binding("t", "toggle_tree", "Hide/show list", id="tensors.toggle"),
        Binding("o", "pick_checkpoint", "Checkpoint", id="tensors.checkpoint"),
        Binding("escape", "leave", "Leave the view box", show=False, id="tensors.leave"),
    ]
    DEFAULT_CSS = """
    TensorsPane { height: 1fr; }
    TensorsPane #tensors-body { height: 1fr; }
    TensorsPane #tensor-tree { width: 30; height: 1fr; }
    TensorsPane #inspector { width: 1fr; height: 1fr; padding: 0 0 0 1; }
    TensorsPane #tensor-summary { height: auto; }
    TensorsPane #tensor-expr-line { height: 1; margin: 1 0 0 0; }
    TensorsPane #tensor-expr-label { width: 7; color: $text-muted; }
    TensorsPane #tensor-expr { border: none; height: 1; width: 1fr; padding: 0 1; }
    TensorsPane #tensor-error { color: $error; height: auto; }
    TensorsPane #tensor-drawings { height: auto; layout: vertical; }
    TensorsPane #tensor-drawings.-side { layout: horizontal; }
    TensorsPane #tensor-drawings.-side PaneStorage { width: 1fr; }
    TensorsPane.-narrow #tensors-body { layout: vertical; }
    TensorsPane.-narrow #tensor-tree { width: 100%; height: 40%; }
    TensorsPane.-narrow #inspector { height: 60%; padding: 0; }
    """

    class Inspected(Message):
        """A `tensor` request (base and/or view) came back, or failed."""

        bubble = False

        def __init__(self, name: str, expr: str | None, user: bool, **result: Any) -> None:
            super().__init__()
            self.tensor, self.expr, self.user = name, expr, user
            self.base: dict | None = result.get("base")
            self.view: dict | None = result.get("view")
            self.error: str | None = result.get("error")
            self.gone: str | None = result.get("gone")

    def __init__(self, run_dir: Path, client: ControlClient | None, **kwargs: Any) -> None:
        super().__init__(run_dir, client, **kwargs)
        self.listing: list[dict] = []
        self.selected: str | None = None  # the selected tensor
        self.good_expr: str | None = None  # the last expression that worked
        self.base_info: dict | None = None
        self.view_info: dict | None = None
        self.error_text: str | None = None
        self._ticks = 0
        self.engine = client  # the live engine's client; self.client is whichever is asked now
        self.from_checkpoint = False  # the run has ended: tensors come from a saved checkpoint
        self._ready = False  # mounted with its children

    def compose(self) -> ComposeResult:
        yield CheckpointSource(self.run_dir, id="tensors-source")
        with Horizontal(id="tensors-body"):
            tree: Tree[str] = Tree("tensors", id="tensor-tree")
            tree.show_root = False
            yield tree
            with VerticalScroll(id="inspector"):
                yield Static("Select a tensor on the left (Enter).", id="tensor-summary")
                with Horizontal(id="tensor-expr-line"):
                    yield Static("view =", id="tensor-expr-label")
                    yield Input(
                        placeholder="x.t()[1:3] then Enter  (x = this tensor)", id="tensor-expr"
                    )
                yield Static("", id="tensor-error")
                with Horizontal(id="tensor-drawings"):
                    yield PaneStorage(id="base-storage")
                    yield PaneStorage(id="view-storage")
                yield PaneValues(id="tensor-values")

    def on_mount(self) -> None:
        if not self.app.is_running:  # mounted (deferred) as the app shuts down: no children
            return
        self.plain_tree(self.query_one(Tree))
        self.query_one(PaneValues).display = False
        self._ready = True

    # -- where the tensors come from: the live engine, or a checkpoint -------------------------
    def frame(self, snap: RunSnapshot | None) -> None:
        if not self._ready:  # the frame clock may tick before this pane's children mount
            return
        if snap is not None and snap.live == self.from_checkpoint:
            self._switch(not snap.live)
        super().frame(snap)
        if self.from_checkpoint and self.showing and self.client is None:
            self._load_if_needed()

    @property
    def source(self) -> CheckpointSource:
        return self.query_one(CheckpointSource)

    @property
    def loaded(self) -> Loaded | None:
        """The checkpoint the tensors come from (None: a live run's engine, or none yet)."""
        return self.source.loaded if self.from_checkpoint else None

    def _switch(self, ended: bool) -> None:
        """The run ended (read a checkpoint from now on) or was resumed (ask its engine)."""
        self.from_checkpoint = ended
        self.client = None if ended else self.engine
        self.listing, self.selected, self.base_info, self.view_info = [], None, None, None
        self.query_one(Tree).clear()
        self.redraw()
        self.source.activate(ended)

    def _load_if_needed(self) -> None:
        """Lazily, when the tab is shown: the server costs a torch import (a second or two)."""
        self.source.ensure()

    def on_checkpoint_source_changed(self, msg: CheckpointSource.Changed) -> None:
        """Ask the new checkpoint's server from now on (the selected tensor, if it is there
        too, stays); while none is served, the line says why and the body is hidden."""
        msg.stop()
        self.query_one("#tensors-body").display = not self.source.blocking
        if not self.from_checkpoint:
            return
        self.client = msg.loaded.client if msg.loaded is not None else None
        self.listing, self.base_info, self.view_info = [], None, None
        if msg.loaded is None:
            return
        self.poll(force=True)
        if self.selected is not None:
            self.select(self.selected)
        if self.showing and not self.has_focus_within:
            # the list was hidden while loading, so the tab's keys had nothing focused to reach
            self.query_one(Tree).focus()

    def action_pick_checkpoint(self) -> None:
        """o: choose which saved checkpoint a finished run's tensors come from."""
        if self.from_checkpoint:
            self.source.pick()
        else:
            self.notify("the run is live: its tensors come from the engine", timeout=4)

    # -- polling (worker thread) ---------------------------------------------------------------
    def poll(self, force: bool = False) -> None:
        if self.client is not None:
            super().poll(force)

    def fetch(self) -> Any:
        client = self.client
        if client is None:
            return None
        self._ticks += 1
        out: dict[str, Any] = {}
        try:
            if not self.listing or self._ticks % LIST_EVERY == 1:
                reply = client.request("tensors")
                out["listing"] = reply.data if reply.ok else None
            if self.selected is not None:
                name, expr = self.selected, self.good_expr
                self.post_message(
                    self.Inspected(name, expr, False, **self._ask(client, name, expr))
                )
        except EngineGone as e:
            out["gone"] = str(e)
        return out

    def _ask(self, client: ControlClient, name: str, expr: str | None, base: bool = True) -> dict:
        """The base tensor's reply and the view's (when there is an expression), or an error."""
        out: dict[str, Any] = {}
        try:
            if base:
                reply = client.request("tensor", name=name)
                if not reply.ok:
                    return {"error": reply.error}
                out["base"] = reply.data
            if expr:
                reply = client.request("tensor", name=name, expr=expr)
                if reply.ok:
                    out["view"] = reply.data
                else:
                    out["error"] = reply.error
        except EngineGone as e:
            return {"gone": str(e)}
        except ControlError as e:
            return {"error": str(e)}
        return out

    @work(thread=True, exclusive=True, group="inspect")
    def inspect_tensor(self, name: str, expr: str | None, base: bool = True) -> None:
        """Ask the engine about `name` (and the view `expr`) for a user action."""
        client = self.client
        if client is not None:
            self.post_message(
                self.Inspected(name, expr, True, **self._ask(client, name, expr, base))
            )

    # -- results (UI thread) -------------------------------------------------------------------
    def show(self, data: dict) -> None:
        if data.get("gone"):
            self._lost(data["gone"])
            return
        listing = data.get("listing")
        if listing is not None and self.error_text == NO_ENGINE_YET:
            self.error_text = None  # it answers now
            self.redraw()
        if listing is not None and listing != self.listing:
            self.listing = listing
            self._rebuild_tree()

    def show_error(self, error: Exception) -> None:
        """The engine did not answer (a very long step, a hung engine): say so where errors go."""
        self.error_text = str(error)
        self.redraw()

    def on_tensors_pane_inspected(self, msg: Inspected) -> None:
        msg.stop()
        if msg.gone:
            self._lost(msg.gone)
            return
        if msg.tensor != self.selected:
            return  # an answer about a tensor no longer selected
        if msg.base is not None:
            self.base_info = msg.base
        if msg.error:
            # A bad expression changes nothing but the error line: the last good view stays.
            self.error_text = msg.error
        elif msg.user:
            self.error_text = None
            self.good_expr = msg.expr or None
            self.view_info = msg.view if msg.expr else None
        elif msg.expr == self.good_expr and msg.view is not None:
            self.view_info = msg.view  # a poll: fresh values, same view; the error line stays
        self.redraw()

    def _lost(self, why: str) -> None:
        """Nobody answered: the engine is starting or just ended (the next snapshot says
        which), or the checkpoint server is gone (o starts one again)."""
        if self.from_checkpoint:
            self.source.lost(why)
        else:
            self.error_text = NO_ENGINE_YET
            self.redraw()

    def _rebuild_tree(self) -> None:
        tree: Tree[str] = self.query_one(Tree)
        expanded = {n.data for n in tree.root.children if n.is_expanded}
        first = not tree.root.children
        tree.clear()
        groups: dict[str, Any] = {}
        for kind, label in GROUPS.items():
            rows = [t for t in self.listing if t["kind"] == kind]
            if rows:
                groups[kind] = (label, rows)
        for kind, (label, rows) in groups.items():
            node = tree.root.add(f"{label} ({len(rows)})", data=f"group:{kind}")
            for t in rows:
                shape = "×" if not self.ascii_mode else "x"
                leaf = Text(t["name"])
                leaf.append(
                    f"  {shape.join(map(str, t['shape'])) or 'scalar'} {t['dtype']}", style="dim"
                )
                node.add_leaf(leaf, data=t["name"])
            if (first and kind in ("parameter", "batch")) or f"group:{kind}" in expanded:
                node.expand()
        if self.selected is None and first and tree.root.children:
            first_group = tree.root.children[0]
            if first_group.children:  # a fresh tab shows the first tensor straight away
                self.call_after_refresh(tree.move_cursor, first_group.children[0])
                self.select(first_group.children[0].data)
        if self.selected is not None:
            for group in tree.root.children:
                for leaf in group.children:
                    if leaf.data == self.selected:
                        group.expand()
                        self.call_after_refresh(tree.move_cursor, leaf)

    # -- user actions --------------------------------------------------------------------------
    @on(Tree.NodeSelected, "#tensor-tree")
    def _selected(self, event: Tree.NodeSelected) -> None:
        data = event.node.data
        if isinstance(data, str) and not data.startswith("group:"):
            self.select(data)

    def select(self, name: str) -> None:
        """Inspect tensor `name` (with the current view expression, if any)."""
        self.selected, self.base_info, self.view_info = name, None, None
        source = "the checkpoint" if self.from_checkpoint else "the engine"
        self.query_one("#tensor-summary", Static).update(f"asking {source} about {name}…")
        expr = self.query_one("#tensor-expr", Input).value.strip()
        self.inspect_tensor(name, expr if expr not in ("", "x") else None)

    @on(Input.Submitted, "#tensor-expr")
    def _submitted(self, event: Input.Submitted) -> None:
        if self.selected is None:
            self.error_text = "select a tensor first, then type a view of it"
            self.redraw()
            return
        expr = event.value.strip()
        self.inspect_tensor(self.selected, expr if expr not in ("", "x") else None, base=False)

    def action_refresh_list(self) -> None:
        self.listing = []
        self.poll(force=True)

    def action_edit_expr(self) -> None:
        self.query_one("#tensor-expr", Input).focus()

    def action_leave(self) -> None:
        """Esc: out of the view box (to the list, or the drawings while the list is hidden), so
        keys are commands again; from anywhere else, back to the list."""
        tree = self.query_one(Tree)
        if self.query_one("#tensor-expr", Input).has_focus and not tree.display:
            self.query_one("#inspector").focus()
            return
        tree.display = True
        tree.focus()

    def action_toggle_tree(self) -> None:
        """Hide the list to give the drawings the whole width (side by side from 76 columns).
        Focus goes to the drawings, not the view box: the next keys are still commands."""
        tree = self.query_one(Tree)
        tree.display = not tree.display
        if not tree.display and tree.has_focus:
            self.query_one("#inspector").focus()
        self.call_after_refresh(self._layout_drawings)

    # -- drawing -------------------------------------------------------------------------------
    def redraw(self) -> None:
        err = self.query_one("#tensor-error", Static)
        err.update(Text(self.error_text or "", style="bold red"))
        err.display = bool(self.error_text)
        b, v = self.base_info, self.view_info
        self.query_one("#tensor-summary", Static).update(self._summary(b) if b else "")
        base_draw = self.query_one("#base-storage", PaneStorage)
        view_draw = self.query_one("#view-storage", PaneStorage)
        view_draw.display = v is not None
        if b is None:
            base_draw.set_tensor("", None)
        elif v is not None:
            # Draw the base over the view's window, folded like the view: the two drawings then
            # show the same storage cells in the same columns.
            sw = v["storage_window"]
            view_draw.set_tensor(f"view {v['expr']}", v, accent="yellow")
            base_draw.set_tensor(
                f"x = {self.selected}", b, (sw["lo"], sw["hi"]), fold_by=view_draw.marks
            )
            base_draw.min_w = view_draw.min_w = max(base_draw.cell_w, view_draw.cell_w)
        else:
            base_draw.set_tensor(f"x = {self.selected}", b)
        values = self.query_one(PaneValues)
        values.set_tensor(v or b)
        values.display = b is not None
        self._layout_drawings()

    def _summary(self, t: dict) -> Text:
        """Short lines (the tab may be 40 columns): shape/stride/offset are in the drawing."""
        out = Text(f"{t['name']}", style="bold")
        out.append(f"  {t.get('kind', '')} · step {t.get('step', '?')}", style="dim")
        out.append(f"\n{t['dtype']} · {t['device']} · ")
        out.append("contiguous" if t["is_contiguous"] else "not contiguous")
        if t.get("requires_grad"):
            out.append(" · requires grad", style="dim")
        nbytes = t["storage_nbytes"]
        size = fmt_bytes(nbytes)  # the one number-format module's binary units
        out.append(f"\nstorage {t['storage_numel']:,} × {t['element_size']} B = {size}")
        st = t.get("stats") or {}
        if "min" in st:
            out.append(f"\nmin {fmt_num(st['min'])} max {fmt_num(st['max'])}", style="dim")
            out.append(f" mean {fmt_num(st['mean'])} std {fmt_num(st['std'])}", style="dim")
            if st.get("nan") or st.get("inf"):
                out.append(f"  nan {st['nan']}  inf {st['inf']}", style="bold red")
        if self.view_info is not None:
            v = self.view_info
            shares = "shares x's storage" if v["shares_storage"] else "a copy (own storage)"
            out.append(f"\nview: {shares}, ", style="yellow")
            out.append("contiguous" if v["is_contiguous"] else "not contiguous", style="yellow")
        return out

    def _layout_drawings(self) -> None:
        drawings = self.query_one("#tensor-drawings")
        wide = self.query_one("#inspector").size.width >= SIDE_BY_SIDE_AT
        drawings.set_class(wide and self.view_info is not None, "-side")

    def on_resize(self) -> None:
        self.call_after_refresh(self._layout_drawings)
