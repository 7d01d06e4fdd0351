"""The Layers, Tensors, Model and Console panes, each mounted alone in a tiny App.

Layers, Model and Console read a finished run store written here with the real RunStore; the
Tensors pane talks to a real engine subprocess over its real control socket (STYLE 12).
"""

from __future__ import annotations

import asyncio
import functools
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import spawn_engine
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Input, RichLog, Static, Tree

from dltui.engine.store import RunStore
from dltui.run.client import ControlClient
from dltui.tui.panes.console import ConsolePane
from dltui.tui.panes.layers import LayersPane
from dltui.tui.panes.model import ModelPane
from dltui.tui.panes.tensors import TensorsPane
from dltui.tui.poller import RunPoller
from dltui.tui.widgets.pane_base import PollingPane
from dltui.tui.widgets.pane_histogram import PaneHistogram
from dltui.tui.widgets.pane_sparkline import PaneSparkline
from dltui.tui.widgets.pane_storage import PaneStorage, element_positions

PARAMS = [("fc1.weight", [8, 4]), ("fc1.bias", [8]), ("fc2.weight", [3, 8]), ("fc2.bias", [3])]
# Box drawing, block elements and Braille: none of these may appear in ascii mode.
FANCY = [(0x2500, 0x259F), (0x2800, 0x28FF)]


class PaneApp(App):
    """Mounts one pane, the way the dashboard mounts it as a tab's content."""

    def __init__(self, make: Callable[[], object], ascii_mode: bool = False) -> None:
        super().__init__()
        self.make, self.ascii_mode = make, ascii_mode

    def compose(self) -> ComposeResult:
        yield self.make()

    def on_mount(self) -> None:
        """The dashboard's data path in small: poll the pane's run, hand it the snapshot."""
        self.snapshot = None
        self.poller = None
        self.set_interval(0.1, self._frame)

    def _frame(self) -> None:
        for pane in self.query(PollingPane):
            if self.poller is None:
                self.poller = RunPoller(pane.run_dir)
            self.snapshot = self.poller.poll() or self.snapshot
            pane.frame(self.snapshot)

    def on_unmount(self) -> None:
        if self.poller is not None:
            self.poller.close()


def sync(test):
    """Run an async test body with asyncio.run (no pytest async plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        asyncio.run(test(*args, **kwargs))

    return wrapper


async def until(pilot, cond: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.05)


def stats_row(name: str, g: float, *, nonfinite: int = 0, ratio: float = 1e-3) -> tuple:
    # (name, w_norm, w_mean, w_std, w_maxabs, g_norm, g_mean, g_std, g_maxabs, zero_frac, nonfinite, update_ratio)
    return (name, 2.0, 0.0, 0.5, 1.0, g, 0.0, 0.1, 0.2, 0.25, nonfinite, ratio)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A deterministic finished run: 4 params, 6 stats steps, histograms, model, hparams, console.

    At the last step fc1.bias has non-finite values, fc2.weight's update ratio is 0.5 (too big),
    and fc2.bias's gradient norm jumps 50x (a spike). Gradient norms otherwise order
    fc1.weight > fc2.weight > fc1.bias > fc2.bias.
    """
    run_dir = tmp_path_factory.mktemp("panes") / "run"
    store = RunStore(run_dir / "run.sqlite")
    store.start()
    model = [
        {"name": "(model)", "type": "Net", "depth": 0, "params": 75, "trainable": 40, "own": 0},
        {"name": "fc1", "type": "Linear", "depth": 1, "params": 40, "trainable": 40, "own": 40},
        {"name": "fc2", "type": "Linear", "depth": 1, "params": 27, "trainable": 0, "own": 27},
        {"name": "head", "type": "Sequential", "depth": 1, "params": 8, "trainable": 0, "own": 0},
        {"name": "head.act", "type": "ReLU", "depth": 2, "params": 0, "trainable": 0, "own": 0},
    ]
    store.set_meta(
        run_id="run", status="running", model=model, hparams={"lr": 0.05, "batch_size": 32}
    )
    store.params([(n, s, int(torch.Size(s).numel()), True) for n, s in PARAMS])
    for step in range(5, 35, 5):
        last = step == 30
        store.layer_stats(
            step,
            [
                stats_row("fc1.weight", 4.0 + step / 100),
                stats_row("fc1.bias", 1.0, nonfinite=3 if last else 0),
                stats_row("fc2.weight", 2.0, ratio=0.5 if last else 1e-3),
                stats_row("fc2.bias", 25.0 if last else 0.5),
            ],
        )
    # The engine's probe decides what a spike is and says so in an alert event (as it would).
    store.event(
        "alert",
        "gradient norm spike in fc2.bias at step 30: 25 (50x its recent mean 0.5)",
        step=30,
        level="warning",
        data={"layer": "fc2.bias", "g_norm": 25.0},
    )
    for name, _ in PARAMS:
        store.histogram(30, name, "weight", -1.0, 1.0, [1, 4, 9, 4, 1])
        store.histogram(30, name, "grad", -0.1, 0.1, [0, 2, 8, 2, 0])
    store.console("stdout", "epoch 1 loss 0.5")
    store.console("stderr", "warning: something odd")
    store.console("stdout", "\x1b[32mgreen text\x1b[0m")
    store.close("finished")
    return run_dir


def table_order(table: DataTable) -> list[str]:
    return [table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(table.row_count)]


def no_fancy(text: str) -> bool:
    return not any(lo <= ord(c) <= hi for c in text for lo, hi in FANCY)


# -- Layers --------------------------------------------------------------------------------------


@sync
async def test_layers_sorts_flags_anomalies_and_shows_history(finished_run):
    app = PaneApp(lambda: LayersPane(finished_run, None))
    async with app.run_test(size=(120, 30)) as pilot:
        pane = app.query_one(LayersPane)
        table = pane.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 4, what="rows")
        assert table_order(table) == [n for n, _ in PARAMS]  # model order first

        # `s` cycles the sort column; numbers sort largest first.
        while pane.sort_col != "g_norm":
            await pilot.press("s")
        assert table_order(table) == ["fc2.bias", "fc1.weight", "fc2.weight", "fc1.bias"]
        await pilot.press("S")
        assert table_order(table) == ["fc1.bias", "fc2.weight", "fc1.weight", "fc2.bias"]
        assert "▲" in str(table.columns["g_norm"].label)

        # Clicking a header sorts by it; clicking it again flips the direction.
        x = sum(c.get_render_width(table) for c in table.ordered_columns[:1]) + 1  # "name"
        await pilot.click(DataTable, offset=(x, 0))
        assert pane.sort_col == "name" and table_order(table) == sorted(n for n, _ in PARAMS)
        await pilot.click(DataTable, offset=(x, 0))
        assert table_order(table) == sorted((n for n, _ in PARAMS), reverse=True)

        # Anomalies: a marker character (works without colour) and a red/yellow style.
        flags = {n: table.get_cell(n, "flag").plain for n, _ in PARAMS}
        assert flags == {"fc1.weight": "", "fc1.bias": "✖", "fc2.weight": "▲", "fc2.bias": "↯"}
        assert "red" in str(table.get_cell("fc1.bias", "name").style)
        assert "yellow" in str(table.get_cell("fc2.weight", "update_ratio").style)

        # The selected row's history and histograms, beside the table; cursor kept on refresh.
        table.move_cursor(row=table.get_row_index("fc1.weight"))
        await until(pilot, lambda: pane.selected == "fc1.weight")
        spark = pane.query_one(PaneSparkline)
        await until(pilot, lambda: len(spark.values) == 6, what="sparkline")
        assert spark.values[-1] == pytest.approx(4.3)
        hist_w = pane.query_one("#layers-hist-w", PaneHistogram)
        assert hist_w.hist["counts"] == [1, 4, 9, 4, 1]
        assert "█" in hist_w.render().plain and "weight" in hist_w.render().plain
        pane.poll(force=True)
        await pilot.pause(0.3)
        assert table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value == "fc1.weight"
        assert pane.sort_col == "name" and pane.sort_rev


@sync
async def test_layers_ascii_mode_and_narrow(finished_run):
    app = PaneApp(lambda: LayersPane(finished_run, None), ascii_mode=True)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(LayersPane)
        table = pane.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 4 and pane.query_one(PaneHistogram).hist)
        assert table.get_cell("fc1.bias", "flag").plain == "X"
        assert table.get_cell("fc2.bias", "flag").plain == "!"
        for w in [*pane.query(PaneHistogram), pane.query_one(PaneSparkline)]:
            assert no_fancy(w.render().plain)
        assert pane.query_one("#layers-side").display  # 80 columns: history beside the table
        await pilot.resize_terminal(40, 12)
        await pilot.pause(0.2)
        assert pane.has_class("-narrow")
        assert not pane.query_one("#layers-side").region.width  # the side panel gives way


# -- Model and Console -----------------------------------------------------------------------------


@sync
async def test_model_tree_counts_frozen_and_hparams(finished_run):
    app = PaneApp(lambda: ModelPane(finished_run, None))
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(ModelPane)
        tree = pane.query_one(Tree)
        await until(pilot, lambda: pane.modules is not None, what="model")
        labels = {n.data: str(n.label) for n in tree.root.children}
        assert "Linear" in labels["fc1"] and "40 params" in labels["fc1"]
        assert "frozen" in labels["fc2"] and "frozen" not in labels["fc1"]
        head = next(n for n in tree.root.children if n.data == "head")
        assert [c.data for c in head.children] == ["head.act"]  # nested by depth
        assert "35 frozen" in str(tree.root.label)
        hp = pane.query_one("#hparams", DataTable)
        assert hp.get_row("lr") == ["lr", "0.05"] and hp.get_row("batch_size")[1] == "32"


@sync
async def test_console_shows_both_streams(finished_run):
    app = PaneApp(lambda: ConsolePane(finished_run, None))
    async with app.run_test(size=(80, 24)) as pilot:
        log = app.query_one(RichLog)
        await until(pilot, lambda: len(log.lines) == 3, what="console lines")
        lines = [line.text for line in log.lines]
        assert lines[0].strip() == "epoch 1 loss 0.5"
        assert lines[1].startswith("! warning: something odd")  # marked, not only coloured
        assert lines[2].strip() == "green text"  # ANSI codes become styles, not garbage
        assert any("red" in str(seg.style) for seg in log.lines[1])
        status = str(app.query_one("#console-status", Static).render())
        assert "2 stdout" in status and "1 stderr" in status


@sync
async def test_console_follows_the_tail_unless_scrolled_up(tmp_path):
    store = RunStore(tmp_path / "run.sqlite")
    store.start()
    for i in range(100):
        store.console("stdout", f"line {i}")
    store.flush()
    app = PaneApp(lambda: ConsolePane(tmp_path, None))
    async with app.run_test(size=(60, 16)) as pilot:
        pane = app.query_one(ConsolePane)
        log = pane.query_one(RichLog)
        await until(pilot, lambda: len(log.lines) == 100 and log.is_vertical_scroll_end)
        log.focus()
        await pilot.press("home")  # reading back: new lines must not pull the view down
        await until(pilot, lambda: not pane.following)
        for i in range(100, 150):
            store.console("stderr", f"line {i}")
        store.flush()
        await until(pilot, lambda: len(log.lines) == 150, what="new lines")
        await pilot.pause(0.2)
        assert log.scroll_y == 0
        assert "scrolled up" in str(pane.query_one("#console-status", Static).render())
        await pilot.press("end")  # follow again
        store.console("stdout", "the newest")
        store.flush()
        await until(pilot, lambda: len(log.lines) == 151, what="newest line")
        await until(pilot, lambda: log.is_vertical_scroll_end, what="back at the tail")
        assert log.lines[-1].text.strip() == "the newest"
    store.close("finished")


@pytest.mark.parametrize("pane_cls", [LayersPane, ModelPane, ConsolePane, TensorsPane])
@sync
async def test_tiny_terminal_does_not_crash(finished_run, pane_cls):
    app = PaneApp(lambda: pane_cls(finished_run, None), ascii_mode=True)
    async with app.run_test(size=(40, 12)) as pilot:
        await pilot.pause(0.5)
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.2)
        await pilot.resize_terminal(40, 12)
        await pilot.pause(0.2)


# -- Tensors, against a real engine ----------------------------------------------------------------

SLOW_RECIPE = """
import time
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

torch.manual_seed(0)


class Slow(Dataset):
    # 10 ms a sample: the run lasts far longer than the tests, and steps stay cheap.
    def __len__(self):
        return 100_000

    def __getitem__(self, i):
        time.sleep(0.01)
        return torch.randn(6), int(i % 3)


train_loader = DataLoader(Slow(), batch_size=4)
model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
epochs = 1
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tensors")
    recipe = tmp / "slow.py"
    recipe.write_text(textwrap.dedent(SLOW_RECIPE))
    run_dir = tmp / "run"
    proc = spawn_engine(recipe, run_dir, tmp / "engine.log")
    try:
        deadline = time.monotonic() + 30
        while not (run_dir / "control.sock").exists():
            assert proc.poll() is None, (tmp / "engine.log").read_text()
            assert time.monotonic() < deadline, "engine did not start"
            time.sleep(0.05)
        yield run_dir
    finally:
        proc.kill()
        proc.wait()


def find_leaf(tree: Tree, name: str):
    for group in tree.root.children:
        for leaf in group.children:
            if leaf.data == name:
                return leaf
    return None


@sync
async def test_tensors_inspect_view_and_bad_expression(engine):
    client = ControlClient(engine)
    app = PaneApp(lambda: TensorsPane(engine, client))
    async with app.run_test(size=(140, 50)) as pilot:
        pane = app.query_one(TensorsPane)
        tree = pane.query_one(Tree)
        await until(pilot, lambda: find_leaf(tree, "0.weight"), timeout=15, what="tensor list")
        # The first list may come from before the first step (no gradients yet): the pane
        # refreshes it, so wait for one taken after a backward pass.
        await until(
            pilot,
            lambda: any("gradients" in str(g.label) for g in tree.root.children),
            timeout=20,
            what="gradients in the tensor list",
        )
        groups = [str(g.label) for g in tree.root.children]
        assert groups[0].startswith("parameters") and any("gradients" in g for g in groups)

        # Select the weight: layout as torch lays out an nn.Linear(6, 4) weight.
        w = torch.empty(4, 6)
        tree.move_cursor(find_leaf(tree, "0.weight"))
        tree.focus()
        await pilot.press("enter")
        await until(pilot, lambda: pane.base_info is not None, what="inspect reply")
        b = pane.base_info
        assert (b["shape"], b["stride"], b["storage_offset"]) == ([4, 6], list(w.stride()), 0)
        base_text = pane.query_one("#base-storage", PaneStorage).render().plain
        assert "stride [6, 1]  offset 0" in base_text and "#23" in base_text

        # A view: stride, offset and the storage cells it touches, drawn beside the base.
        v_want = torch.arange(24).view(4, 6).t()[1:3]  # values = storage positions
        await pilot.press("slash")
        await pilot.press(*"x.t()[1:3]", "enter")
        await until(pilot, lambda: pane.view_info is not None, what="view reply")
        v = pane.view_info
        assert (
            v["stride"] == list(v_want.stride()) and v["storage_offset"] == v_want.storage_offset()
        )
        touched = v_want.flatten().tolist()
        assert [x["storage"] for x in v["values"]] == touched
        view_draw = pane.query_one("#view-storage", PaneStorage)
        text = view_draw.render().plain
        assert f"stride {list(v_want.stride())}  offset {v_want.storage_offset()}" in text
        assert "touches storage " + ", ".join(map(str, touched)) in text
        assert {p: ks[0] for p, ks in view_draw.marks.items()} == {
            p: k for k, p in enumerate(touched)
        }
        assert view_draw.display and pane.query_one("#tensor-drawings").has_class("-side")

        # A bad expression: the engine's error under the input; the view stays as it was.
        expr = pane.query_one("#tensor-expr", Input)
        expr.value = "x.numpy()"
        await pilot.press("enter")
        err = pane.query_one("#tensor-error", Static)
        await until(pilot, lambda: err.display, what="error shown")
        assert "not allowed" in str(err.render())
        layout = ("expr", "shape", "stride", "storage_offset")
        assert pane.good_expr == "x.t()[1:3]"
        assert [pane.view_info[k] for k in layout] == [v[k] for k in layout]
        assert view_draw.render().plain == text

        await pilot.resize_terminal(40, 12)  # stacks the list over the inspector, no crash
        await pilot.pause(0.3)
        assert pane.has_class("-narrow") and not pane.query_one("#tensor-drawings").has_class(
            "-side"
        )
    client.close()


@sync
async def test_tensors_of_a_run_without_checkpoints_says_how_to_get_one(finished_run):
    """A finished run's tensors come from its checkpoints (tests/test_finished_inspect.py);
    this one saved none, and the tab says so and how to get one."""
    app = PaneApp(lambda: TensorsPane(finished_run, None))
    async with app.run_test(size=(80, 24)) as pilot:
        pane = app.query_one(TensorsPane)
        source = pane.query_one("#tensors-source", Static)
        await until(pilot, lambda: pane.source.error, what="no-checkpoint message")
        text = str(source.render())
        assert "saved no checkpoint" in text and "--resume" in text, text
        assert not pane.query_one("#tensors-body").display


def test_element_positions_match_torch():
    base = torch.arange(60)
    for shape, stride, offset in [((3, 4), (1, 3), 2), ((2, 3, 2), (12, 1, 5), 0), ((4,), (0,), 7)]:
        view = base.as_strided(shape, stride, offset)
        want: dict[int, list[int]] = {}
        for k, p in enumerate(view.flatten().tolist()):
            want.setdefault(p, []).append(k)
        for lo, hi in [(0, 60), (5, 9), (20, 21)]:
            got = element_positions(list(shape), list(stride), offset, lo, hi)
            assert got == {p: ks for p, ks in want.items() if lo <= p < hi}
