"""Model tab: the module tree with parameter counts (trainable or frozen); the selected module's
parameters (name, shape, dtype, numel, requires_grad), buffers, hooks and training flag; and the
recipe's hyperparameters.

A module's parameters come from the run's store (written at start, so a finished run shows them
too); its dtypes, buffers, hooks and training flag from the live engine's `module` query, asked
in a worker thread when the module is selected. For a finished, stopped or crashed run the same
query goes to the checkpoint the Tensors tab reads (tui/checkpoints.py): dtypes and buffers as
saved; a checkpoint holds no training flag or hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static, Tree

from dltui.run.client import ControlClient, ControlError, EngineGone

from ..checkpoints import CheckpointUnavailable, CheckpointUser
from ..poller import RunSnapshot
from ..widgets.format import fmt_count
from ..widgets.pane_base import PollingPane

EXPAND_DEPTH = 2  # modules deeper than this start collapsed: a ResNet has hundreds


def module_label(row: dict[str, Any], ascii_mode: bool = False) -> Text:
    """`conv1  Conv2d  320 params` with frozen parameters called out in words, not only colour."""
    params, trainable = row.get("params", 0), row.get("trainable", 0)
    name = row["name"].rsplit(".", 1)[-1]
    out = Text(name, style="bold")
    out.append(f"  {row.get('type', '?')}", style="cyan")
    if params:
        out.append(f"  {fmt_count(params)} params")
        own = row.get("own", 0)
        if own and own != params:
            out.append(f" ({fmt_count(own)} own)", style="dim")
        if trainable == 0:
            out.append("  frozen", style="bold blue")
        elif trainable < params:
            out.append(f"  {fmt_count(params - trainable)} frozen", style="blue")
    return out


def hparam_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def own_params(params: list[dict], module: str) -> list[dict]:
    """The store's parameter rows that belong to `module` itself (not to its children)."""
    prefix = "" if module in ("", ROOT) else module + "."
    return [
        p for p in params if p["name"].startswith(prefix) and "." not in p["name"][len(prefix) :]
    ]


def shape_text(shape: list[int], ascii_mode: bool = False) -> str:
    return ("x" if ascii_mode else "×").join(map(str, shape)) or "scalar"


def module_detail(
    row: dict[str, Any], params: list[dict], live: dict | None, note: str, ascii_mode: bool
) -> Text:
    """The side panel's account of one module: type, training flag, own parameters and buffers
    (shape, dtype, numel, requires grad), hooks, children. `live` is the engine's answer (None
    when the engine can't be asked: `note` says why)."""
    out = Text(row["name"], style="bold")
    out.append(f"  {row.get('type', '?')}", style="cyan")
    if live is not None and live.get("training") is not None:  # a checkpoint has no flag
        out.append("  training" if live.get("training") else "  eval mode", style="bold")
        if live.get("extra"):
            out.append(f"\n{live['extra']}", style="dim")
    rows = live["params"] if live is not None else params
    out.append("\nparameters (own)" if rows else "\nparameters (own): none", style="underline")
    for p in rows:
        name = p["name"].rsplit(".", 1)[-1]
        grad = p.get("requires_grad")
        grad = p.get("trainable") if grad is None else grad
        out.append(f"\n  {name:<12} {shape_text(p['shape'], ascii_mode):<11}")
        out.append(f" {p.get('dtype', '?'):<9} {fmt_count(p['numel']):>6}")
        out.append("  grad" if grad else "  frozen", style="" if grad else "bold blue")
    if row.get("params", 0) > row.get("own", 0):
        inside = row["params"] - row.get("own", 0)
        out.append(f"\nin its children: {fmt_count(inside)} params", style="dim")
    if live is not None:
        buffers = live.get("buffers") or []
        out.append("\nbuffers" if buffers else "\nbuffers: none", style="underline")
        for b in buffers:
            out.append(f"\n  {b['name'].rsplit('.', 1)[-1]:<12} {shape_text(b['shape']):<11}")
            out.append(f" {b['dtype']:<9} {fmt_count(b['numel']):>6}")
        hooks = live.get("hooks")
        if hooks is not None:  # None: a checkpoint does not record them
            out.append("\nhooks" if hooks else "\nhooks: none", style="underline")
            for kind, names in hooks.items():
                out.append(f"\n  {kind}: {', '.join(names)}")
    if note:
        out.append(f"\n{note}", style="dim")
    return out


ROOT = "(model)"
NO_ENGINE = "training flag, dtypes, buffers and hooks: known while the engine runs"
FROM_CHECKPOINT = (
    "dtypes and buffers from checkpoint {name} (step {step}); training flag and hooks: known "
    "while the engine runs"
)


class ModelPane(CheckpointUser, PollingPane):
    """Module tree (left); the model's totals, the selected module and the hyperparameters
    (right; below the tree when narrow)."""

    POLL_S = 2.0  # the model and hparams are written once at start; poll until they appear
    NARROW_BELOW = 100  # below this, the module's account goes under the tree, not beside it
    DEFAULT_CSS = """
    ModelPane { height: 1fr; }
    ModelPane #model-body { height: 1fr; }
    ModelPane #model-tree { width: 1fr; height: 1fr; }
    ModelPane #model-side { width: 56; height: 1fr; padding: 0 0 0 1; }
    ModelPane #model-summary { height: auto; }
    ModelPane #module-detail { height: auto; margin: 1 0 0 0; }
    ModelPane #hparams-title { height: 1; margin: 1 0 0 0; text-style: bold; }
    ModelPane #hparams { height: auto; }
    ModelPane.-narrow #model-body { layout: vertical; }
    ModelPane.-narrow #model-tree { width: 100%; height: 1fr; }
    ModelPane.-narrow #model-side { width: 100%; height: 1fr; padding: 0; }
    """

    class Described(Message):
        """The engine's answer to a `module` query (or why there is none)."""

        bubble = False

        def __init__(self, name: str, data: dict | None, note: str) -> None:
            super().__init__()
            self.name, self.data, self.note = name, data, note

    def __init__(self, run_dir: Path, client: ControlClient | None, **kwargs: Any) -> None:
        super().__init__(run_dir, client, **kwargs)
        self.modules: list[dict] | None = None
        self.hparams: dict | None = None
        self.params: list[dict] = []  # the store's parameter rows (name, shape, numel, trainable)
        self.selected: str | None = None
        self.described: ModelPane.Described | None = None  # the engine's newest answer
        self._generation = 0  # the checkpoint load the shown answer came from

    def compose(self) -> ComposeResult:
        with Horizontal(id="model-body"):
            tree: Tree[str] = Tree("model", id="model-tree")
            yield tree
            with VerticalScroll(id="model-side"):
                yield Static("waiting for the engine to describe the model…", id="model-summary")
                yield Static("", id="module-detail")
                yield Static("hyperparameters", id="hparams-title")
                yield DataTable(id="hparams", cursor_type="row", show_cursor=False)

    def on_mount(self) -> None:
        if not self.app.is_running:  # mounted (deferred) as the app shuts down: no children
            return
        self.plain_tree(self.query_one(Tree))
        self.query_one("#hparams", DataTable).add_columns("name", "value")

    def on_unmount(self) -> None:
        self.stop_own_server()

    def frame(self, snap: RunSnapshot | None) -> None:
        """Also: the Tensors tab chose another checkpoint: describe the module from it."""
        super().frame(snap)
        loaded = self.server.loaded if snap is not None and not snap.live else None
        if loaded is not None and loaded.generation != self._generation and self.selected:
            self._generation = loaded.generation
            self.select(self.selected)

    def fetch(self) -> Any:
        r = self.reader()
        if r is None:
            return None
        meta = r.meta()
        params = r.params() if not self.params else None  # written once, at the first step
        return {"model": meta.get("model"), "hparams": meta.get("hparams"), "params": params}

    def show(self, data: dict[str, Any]) -> None:
        model, hparams = data.get("model"), data.get("hparams")
        if data.get("params"):
            self.params = data["params"]
            self._draw_detail()
        if model and model != self.modules:
            self.modules = model
            self._build_tree(model)
        if hparams is not None and hparams != self.hparams:
            self.hparams = hparams
            table = self.query_one("#hparams", DataTable)
            table.clear()
            for key, value in (hparams or {}).items():
                table.add_row(str(key), hparam_text(value), key=str(key))
            if not hparams:
                table.add_row("(none)", "the recipe sets no `hparams`")

    # -- the selected module -------------------------------------------------------------------
    @on(Tree.NodeHighlighted, "#model-tree")
    @on(Tree.NodeSelected, "#model-tree")
    def _picked(self, event: Tree.NodeHighlighted | Tree.NodeSelected) -> None:
        name = event.node.data
        if isinstance(name, str) and name != self.selected:
            self.select(name)

    def select(self, name: str) -> None:
        """Show module `name`: the store's rows at once, the engine's answer when it comes."""
        self.selected, self.described = name, None
        self._draw_detail()
        snap = self.snapshot
        if snap is not None and not snap.live:
            self.describe(name, from_checkpoint=True)
        elif self.client is not None:
            self.describe(name)

    @work(thread=True, exclusive=True, group="module")
    def describe(self, name: str, from_checkpoint: bool = False) -> None:
        """Ask the engine about module `name` (answered at once, off the step boundary), or the
        checkpoint server (started here if no tab has yet: a torch import, seconds)."""
        client, data, note = self.client, None, ""
        try:
            if from_checkpoint:
                loaded = self.server.load(None)
                client = loaded.client
                step = "?" if loaded.step is None else f"{loaded.step:,}"
                note = FROM_CHECKPOINT.format(name=loaded.name, step=step)
                self._generation = loaded.generation
            if client is None:
                return
            reply = client.request("module", name=name)
            if reply.ok:
                data = reply.data
            else:
                note = f"the {'checkpoint' if from_checkpoint else 'engine'} says: {reply.error}"
        except CheckpointUnavailable as e:
            note = f"{NO_ENGINE}; {e}"
        except EngineGone:
            note = NO_ENGINE
        except ControlError as e:
            note = f"the engine did not answer: {e}"
        self.post_message(self.Described(name, data, note))

    def on_model_pane_described(self, message: Described) -> None:
        message.stop()
        if message.name == self.selected:
            self.described = message
            self._draw_detail()

    def _draw_detail(self) -> None:
        detail = self.query_one("#module-detail", Static)
        row = next((m for m in self.modules or () if m["name"] == self.selected), None)
        if row is None:
            detail.update(Text("select a module (up/down) for its parameters and hooks", "dim"))
            return
        d = self.described
        live = d.data if d is not None else None
        snap = self.snapshot
        if d is not None:
            note = d.note
        elif snap is not None and not snap.live:
            note = "loading the run's checkpoint … (its dtypes and buffers)"
        else:
            note = "asking the engine…"
        own = own_params(self.params, row["name"])
        detail.update(module_detail(row, own, live, note, self.ascii_mode))

    def _build_tree(self, rows: list[dict]) -> None:
        tree: Tree[str] = self.query_one(Tree)
        tree.clear()
        root = rows[0]
        tree.root.set_label(module_label(root, self.ascii_mode))
        tree.root.data = root["name"]
        # Rows come in named_modules() order (parents first), so a stack by depth finds parents.
        stack = [tree.root]
        for row in rows[1:]:
            depth = max(1, int(row.get("depth", 1)))
            del stack[depth:]
            parent = stack[-1]
            node = parent.add(module_label(row, self.ascii_mode), data=row["name"])
            if depth >= EXPAND_DEPTH:
                node.collapse()
            else:
                node.expand()
            stack.append(node)
        for node in _walk(tree.root):
            node.allow_expand = bool(node.children)
        tree.root.expand()
        if self.selected is None:  # the whole model until the user picks a module
            self.select(root["name"])
        total, trainable = root.get("params", 0), root.get("trainable", 0)
        summary = Text(f"{root.get('type', 'model')}", style="bold")
        summary.append(f"\n{total:,} parameters\n{trainable:,} trainable")
        if total > trainable:
            summary.append(f"\n{total - trainable:,} frozen", style="blue")
        summary.append(f"\n{len(rows)} modules", style="dim")
        self.query_one("#model-summary", Static).update(summary)


def _walk(node: Any):
    yield node
    for child in node.children:
        yield from _walk(child)
