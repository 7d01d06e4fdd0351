"""Model tab: the module tree with parameter counts (trainable or frozen), and the recipe's
hyperparameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static, Tree

from dltui.run.client import ControlClient

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


class ModelPane(PollingPane):
    """Module tree (left) and hyperparameter table (right; hidden when narrow)."""

    POLL_S = 2.0  # the model and hparams are written once at start; poll until they appear
    DEFAULT_CSS = """
    ModelPane { height: 1fr; }
    ModelPane #model-body { height: 1fr; }
    ModelPane #model-tree { width: 1fr; height: 1fr; }
    ModelPane #model-side { width: 40; height: 1fr; padding: 0 0 0 1; }
    ModelPane #model-summary { height: auto; }
    ModelPane #hparams-title { height: 1; margin: 1 0 0 0; text-style: bold; }
    ModelPane #hparams { height: 1fr; }
    ModelPane.-narrow #model-side { display: none; }
    """

    def __init__(self, run_dir: Path, client: ControlClient | None, **kwargs: Any) -> None:
        super().__init__(run_dir, client, **kwargs)
        self.modules: list[dict] | None = None
        self.hparams: dict | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="model-body"):
            tree: Tree[str] = Tree("model", id="model-tree")
            yield tree
            with Vertical(id="model-side"):
                yield Static("waiting for the engine to describe the model…", id="model-summary")
                yield Static("hyperparameters", id="hparams-title")
                yield DataTable(id="hparams", cursor_type="row", show_cursor=False)

    def on_mount(self) -> None:
        if not self.app.is_running:  # mounted (deferred) as the app shuts down: no children
            return
        self.plain_tree(self.query_one(Tree))
        self.query_one("#hparams", DataTable).add_columns("name", "value")

    def fetch(self) -> Any:
        r = self.reader()
        if r is None:
            return None
        meta = r.meta()
        return {"model": meta.get("model"), "hparams": meta.get("hparams")}

    def show(self, data: dict[str, Any]) -> None:
        model, hparams = data.get("model"), data.get("hparams")
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
