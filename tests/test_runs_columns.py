"""The Runs screen fits its table to the terminal: whole columns drop by priority (as the Layers
table's do, through the shared tui/widgets/columns.py), no value is cut at the edge."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from screen import screen_text
from test_runs_screen import Host, write_run

from dltui.tui.widgets.columns import fit_columns, keep_end, measure

IDS = ("20260101-000000-resnet_long_name", "20260101-000100-beta")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("cols") / "runs"
    write_run(r, IDS[0], 0.1, 0.5234, 1000.0)
    write_run(r, IDS[1], 0.01, 0.31, 2000.0)
    return r


def shown(runs: Path, size: tuple[int, int]) -> tuple[list[str], str, tuple[str, ...]]:
    """(the table's lines, the whole screen, the columns shown) at this terminal size."""

    async def go():
        app = Host(runs)
        async with app.run_test(size=size) as pilot:
            deadline = time.monotonic() + 10
            while app.screen.query_one("DataTable").row_count < 2:
                assert time.monotonic() < deadline, "no rows"
                await pilot.pause(0.05)
            await pilot.pause(0.2)
            text = screen_text(app)
            return text, app.screen._fit.keys

    text, keys = asyncio.run(go())
    lines = [ln for ln in text.splitlines() if "-beta" in ln or "resnet" in ln]
    return lines, text, keys


@pytest.mark.parametrize("size", [(80, 24), (120, 30), (60, 20)])
def test_no_value_is_cut_and_columns_drop_by_priority(runs: Path, size) -> None:
    lines, text, keys = shown(runs, size)
    assert len(lines) == 2, text
    want = {  # each column's values, whole, as they must read where the column is shown
        "run": IDS,
        "status": ("FINISHED", "FINISHED"),
        "progress": ("40/40 100%",) * 2,
        "best": ("loss 0.5234", "loss 0.31"),
        "hparams": ("lr=0.1", "lr=0.01"),
    }
    for key, values in want.items():
        if key in keys:
            assert all(v in "\n".join(lines) for v in values), (key, text)
    # every column that is shown has its header whole on the screen
    header = next(ln for ln in text.splitlines() if "status" in ln)
    assert all(k in header for k in keys if k), header
    assert not any(ln.rstrip().endswith("…") and "lr=" not in ln for ln in lines), lines
    if size[0] >= 120:
        assert set(keys) >= {"run", "status", "progress", "best", "started", "hparams"}
    elif size[0] >= 80:
        # 80 columns: a run id tells when it started; that column goes first, whole
        assert "started" not in keys and {"run", "status", "progress", "best"} <= set(keys)
    else:
        assert {"run", "status"} <= set(keys)  # never dropped


def test_fit_columns_drops_then_shrinks_then_gives_flex_the_rest() -> None:
    natural = {"a": 4, "name": 30, "b": 6, "free": 40}
    fit = fit_columns(natural, 100, ("b",), shrink="name", flex="free")
    assert fit.widths == (("a", 4), ("name", 30), ("b", 6), ("free", 100 - 2 - 40 - 8))
    fit = fit_columns(natural, 40, ("free", "b"), shrink="name", shrink_min=12, flex="free")
    assert fit.keys == ("a", "name") and fit.shrunk is None
    fit = fit_columns(natural, 30, ("free", "b"), shrink="name", shrink_min=12, flex="free")
    assert fit.keys == ("a", "name") and fit.shrunk == 30 - 2 - 4 - 4
    assert keep_end("layer3.0.conv1.weight", 10) == "…v1.weight"
    assert keep_end("layer3.0.conv1.weight", 10, ascii=True) == "....weight"
    assert measure({"a": 1}, [{"a": "wide value"}]) == {"a": 10}
