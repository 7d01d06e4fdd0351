"""The dashboard's data and charts tell the truth (issue 11, defects 3-9 and 12, one data path).

Stores are written with the engine's own RunStore (fixed values, no engine process) and read by
the real app through App.run_test(); the screen is read through tests/screen.py (public API).
Defect 8 runs the real loop in this process; defect 9 also runs the real `dltui status`.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import linear_recipe, run_cli, train_in_process
from screen import screen_text
from test_app_snapshots import T0, write_finished_run
from textual.pilot import Pilot

from dltui.engine.store import RunStore
from dltui.run import wire
from dltui.run.progress import position
from dltui.tui import poller as poller_module
from dltui.tui.app import make_app
from dltui.tui.panes.layers import LayersPane
from dltui.tui.poller import RunPoller
from dltui.tui.widgets.format import fmt_ticks
from dltui.tui.widgets.plot import robust_range


def run(coro) -> None:
    asyncio.run(coro)


async def until(pilot: Pilot, cond: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.05)


def plotted(app) -> bool:
    """The loss plot has drawn (the store's runs here may have no metric)."""
    return app.snapshot is not None and bool(app.overview.plots[0].traces)


def header(app) -> str:
    return "\n".join(screen_text(app).splitlines()[:2])


def write_store(
    run_dir: Path,
    *,
    status: str = "finished",
    progress: dict | None = None,
    steps: int = 40,
    loss: Callable[[int], float] = lambda s: 1.0,
    lr: Callable[[int], float] = lambda s: 0.01,
    live: bool = False,
    params: list[tuple[str, list[int]]] | None = None,
    stats: dict[str, tuple] | None = None,
    alerts: list[tuple[int, str, float]] = (),
    samples_per_s: float | None = None,
) -> Path:
    """A small run: loss and lr/0 per step, optional layer stats at the last step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    st = RunStore(run_dir / "run.sqlite")
    st.start()
    for step in range(1, steps + 1):
        st.scalars(step, 0, wire.TRAIN, T0 + step, {"loss": loss(step), "lr/0": lr(step)})
    if samples_per_s is not None:
        st.scalars(steps, 0, wire.TRAIN, T0 + steps, {"samples_per_s": samples_per_s})
    if params:
        st.params([(n, s, _numel(s), True) for n, s in params])
        rows = [(n, *stats[n]) for n, _ in params]
        st.layer_stats(steps, rows)
    for step, layer, g in alerts:
        st.event(
            wire.EV_ALERT,
            f"gradient norm spike in {layer} at step {step}: {g:.3g}",
            step=step,
            level="warning",
            data={"layer": layer, "g_norm": g},
        )
    now = time.time()
    st.set_meta(
        run_id=run_dir.name,
        status=status,
        started=now - 60 if live else T0,
        heartbeat=now if live else T0 + steps,
        host=socket.gethostname() if live else "elsewhere",
        pid=os.getpid() if live else 1,
        model=[],
        device="cpu",
        progress=progress or {"step": steps, "lrs": [lr(steps)]},
    )
    if live:
        st.close()
    else:
        st.close(status, ended=T0 + steps)
    return run_dir


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- one data path -------------------------------------------------------------------------------


def test_panes_fetch_only_when_their_counter_moves(tmp_path: Path) -> None:
    """No per-pane timers: on a finished run the Layers tab reads its table once, not each second."""
    d = write_store(
        tmp_path / "run",
        params=[("w", [4, 4])],
        stats={"w": (2.0, 0.0, 0.5, 1.0, 0.3, 0.0, 0.1, 0.2, 0.25, 0, 1e-3)},
    )

    async def go() -> None:
        app = make_app(d)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: plotted(app), "the first paint")
            await pilot.press("2")
            await until(pilot, lambda: app.screen.query(LayersPane), "the Layers tab")
            pane = app.screen.query_one(LayersPane)
            await until(pilot, lambda: pane.rows, "the table")
            calls = []
            real = pane.fetch
            pane.fetch = lambda: calls.append(1) or real()
            await pilot.pause(3.0)  # six frames of the app's clock
            assert calls == [], f"the Layers tab read the store {len(calls)} times for nothing"

    run(go())


# -- 3: the Layers table never cuts a number ------------------------------------------------------

LONG = [
    ("encoder.layers.11.self_attention.out_projection.weight", [768, 768]),
    ("encoder.layers.11.self_attention.out_projection.bias", [768]),
    ("decoder.head.weight", [32000, 768]),
]
# w_norm, w_mean, w_std, w_maxabs, g_norm, g_mean, g_std, g_maxabs, zero_frac, nonfinite, ratio
STATS = {
    LONG[0][0]: (27.71, 0.0, 0.03, 0.2, 0.08123, 0.0, 0.001, 0.01, 0.25, 0, 0.00125),
    LONG[1][0]: (1.234, 0.0, 0.03, 0.2, 0.004567, 0.0, 0.001, 0.01, 0.0625, 0, 0.00125),
    LONG[2][0]: (155.3, 0.0, 0.03, 0.2, 1.875, 0.0, 0.001, 0.01, 0.125, 0, 0.00125),
}


@pytest.mark.parametrize("size", [(120, 40), (100, 30), (80, 24)])
def test_layers_table_numbers_are_whole(tmp_path: Path, size: tuple[int, int]) -> None:
    d = write_store(tmp_path / "run", params=LONG, stats=STATS)

    async def go() -> None:
        app = make_app(d)
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: plotted(app), "the first paint")
            await pilot.press("2")
            await until(pilot, lambda: app.screen.query(LayersPane), "the Layers tab")
            pane = app.screen.query_one(LayersPane)
            await until(pilot, lambda: pane.rows, "the table")
            await pilot.pause(0.5)
            text = screen_text(app)
            rows = [ln for ln in text.splitlines() if "0.00125" in ln]
            assert len(rows) == 3, text
            for line in rows:
                # the update ratio and the gradient norm always stay, whole
                assert "0.00125" in line, line
                assert re.search(r"\b(0\.08123|0\.004567|1\.875)\b", line), line
                # no number cut at the table's edge (a '0.' or '0.00' alone)
                assert not re.search(r"(?<![\d.])0\.0{0,2}(?![\d])", line), line
                assert not line.rstrip(" │").endswith("…"), line
            # each name is readable: whole, or at least its last 12 characters after a '…'
            for name, _ in LONG:
                assert any(name[-12:] in r for r in rows), (name, rows)
            if "grad=0 %" in text.splitlines()[4]:  # the column is shown
                assert "25.0" in text  # the share of the gradient's entries that are zero
            assert "grad=0 %: " in text or size[0] < 100, "zero % must say what it counts"

    run(go())


def test_layers_spikes_are_the_engines_alerts(tmp_path: Path) -> None:
    """A spike is what the engine's alert says: a big gradient without one is not flagged, and
    an alert at the shown step is."""
    params = [("a", [4]), ("b", [4])]
    stats = {
        "a": (2.0, 0.0, 0.5, 1.0, 500.0, 0.0, 0.1, 0.2, 0.0, 0, 1e-3),
        "b": (2.0, 0.0, 0.5, 1.0, 0.5, 0.0, 0.1, 0.2, 0.0, 0, 1e-3),
    }
    d = write_store(tmp_path / "run", params=params, stats=stats, alerts=[(40, "b", 0.5)])

    async def go() -> None:
        app = make_app(d)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: plotted(app), "the first paint")
            await pilot.press("2")
            await until(pilot, lambda: app.screen.query(LayersPane), "the Layers tab")
            pane = app.screen.query_one(LayersPane)
            await until(pilot, lambda: pane.rows, "the table")
            assert pane.spikes == {"b"}

    run(go())


# -- 4: header LR and legends show the last recorded values ---------------------------------------


def test_header_lr_and_legends_show_the_last_recorded_step(tmp_path: Path) -> None:
    # OneCycle has passed its end: the next step's LR (progress) is one no step used.
    d = write_store(
        tmp_path / "run",
        steps=400,
        loss=lambda s: 0.5 if s == 400 else 1.0,
        lr=lambda s: 0.001,
        progress={"step": 400, "total_steps": 400, "lrs": [4e-06]},
    )

    async def go() -> None:
        app = make_app(d)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: plotted(app), "the plots")
            await pilot.pause(0.3)
            assert "lr 0.001" in header(app) and "4e-06" not in header(app), header(app)
            text = screen_text(app)
            assert "train 0.5 " in text, "the loss legend must show the last step's value"

    run(go())


# -- 5: routine checkpoints collapse; the events list scrolls and filters -------------------------


def test_user_commands_outlive_epochs_of_checkpoints(tmp_path: Path) -> None:
    d = write_finished_run(tmp_path / "20240101-000000-tiny")

    async def go() -> None:
        app = make_app(d)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: plotted(app), "the plots")
            await pilot.pause(0.3)
            text = screen_text(app)
            assert "lr 0.1 -> 0.05" in text, text  # the user's LR change, 8 epochs later
            assert text.count("checkpoint 'last'") == 1 and "(+7 earlier)" in text
            await pilot.press("f", "f")  # warnings and errors only
            await pilot.pause(0.3)
            text = screen_text(app)
            assert "gradient norm spike" in text and "lr 0.1 -> 0.05" not in text
            await pilot.press("f")  # all events again
            # the cursor reads a marker back: which command is this line on the plot
            app.overview.cursor = None
            for _ in range(3):
                await pilot.press("left")
            await pilot.pause(0.3)
            assert "@ step" in screen_text(app)
            app.overview.cursor = 150 / 400  # the LR change's marker
            for plot in app.overview.plots:
                plot.set_cursor(None)
                plot.set_cursor(app.overview.cursor)
            await pilot.pause(0.3)
            legend = screen_text(app).splitlines()[5]
            assert "lr 0.1 -> 0.05" in legend, legend

    run(go())


def test_a_command_outlives_hundreds_of_checkpoints(tmp_path: Path) -> None:
    """The events kept in memory are bounded; routine checkpoints must not use that budget up."""
    d = write_store(tmp_path / "run", steps=300)
    st = RunStore(d / "run.sqlite")
    st.start()
    st.event(wire.EV_COMMAND, "lr 0.01 -> 0.005 (all groups) at step 2", step=2, wall=T0 + 2)
    for step in range(3, 300):
        st.event(
            wire.EV_CHECKPOINT,
            f"checkpoint 'last' at step {step} (epoch end)",
            step=step,
            wall=T0 + step,
            data={"tag": "last", "epoch": step},
        )
    st.close()

    async def go() -> None:
        app = make_app(d)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: plotted(app), "the plots")
            await pilot.pause(0.3)
            text = screen_text(app)
            assert "lr 0.01 -> 0.005" in text and "(+296 earlier)" in text, text

    run(go())


def test_events_list_scrolls(tmp_path: Path) -> None:
    d = write_finished_run(tmp_path / "20240101-000000-tiny")

    async def go() -> None:
        app = make_app(d)
        async with app.run_test(size=(100, 30)) as pilot:  # a short events panel
            await until(pilot, lambda: plotted(app), "the plots")
            await pilot.pause(0.3)
            assert "run finished at step 400" in screen_text(app)
            assert "run started" not in screen_text(app)
            for _ in range(10):
                await pilot.press("left_square_bracket")  # back to the oldest
            await pilot.pause(0.3)
            text = screen_text(app)
            events = text.split("─ events")[-1]
            assert "run started" in events and "run finished" not in events, events
            assert "newer above" in text

    run(go())


# -- 6: long runs --------------------------------------------------------------------------------


def test_axis_labels_tell_close_values_apart() -> None:
    assert len(set(fmt_ticks([0.0501, 0.05005, 0.05]))) == 3
    assert fmt_ticks([1.0, 0.5, 0.0]) == ["1", "0.5", "0"]


def test_y_range_ignores_outliers() -> None:
    values = [0.3 + 0.01 * (i % 7) for i in range(200)] + [250.0, 900.0]
    lo, hi, out = robust_range(values)
    assert hi < 1.0 and out == 2 and lo == pytest.approx(0.3)


def test_window_and_cursor_on_a_long_run(tmp_path: Path) -> None:
    d = write_store(
        tmp_path / "run",
        steps=3000,
        loss=lambda s: 50.0 if s < 20 else 1.0 + (s % 10) / 100,
        progress={"step": 3000, "total_steps": 3000, "lrs": [0.01]},
    )

    async def go() -> None:
        app = make_app(d)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: plotted(app), "the plots")
            await pilot.pause(0.3)
            loss = app.overview.plots[0]
            # the first steps' 50.0 does not set the y range: the curve uses the plot's height
            top = next(ln for ln in screen_text(app).splitlines()[6:8] if ln.strip("│ "))
            assert "50" not in top.split("⠀")[0], top
            await pilot.press("w")  # the last 100 steps
            await until(pilot, lambda: loss.traces and loss.traces[0].steps[0] > 2800, "window")
            assert "last 100 steps" in screen_text(app)
            await pilot.press("left")
            await pilot.pause(0.3)
            reading = screen_text(app).splitlines()[5]
            m = re.search(r"@ step (\d+) +━ train ([0-9.]+)", reading)
            assert m, reading
            step, value = int(m.group(1)), float(m.group(2))
            assert 2900 <= step <= 3000 and value == pytest.approx(1.0 + (step % 10) / 100)

    run(go())


# -- 7: train and val differ without colour --------------------------------------------------------


@pytest.mark.parametrize("ascii", [False, True])
def test_no_color_train_val_and_raw_smoothed_differ(
    ascii: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    d = write_finished_run(tmp_path / "20240101-000000-tiny")

    async def go() -> None:
        app = make_app(d, ascii=ascii)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: plotted(app), "the plots")
            await pilot.press("s")
            await pilot.pause(0.5)
            legend = screen_text(app).splitlines()[5]
            train, val, raw = (
                ("-- train", "-o val", ": raw") if ascii else ("━ train", "━● val", "⠂ raw")
            )
            assert train in legend and val in legend and raw in legend, legend
            body = "\n".join(screen_text(app).splitlines()[6:16])
            assert ("o" if ascii else "●") in body  # the val points carry their mark

    run(go())


# -- 8: the last batch and output belong together --------------------------------------------------


def test_last_input_and_output_come_from_the_same_batch(write_recipe, tmp_path: Path) -> None:
    from dltui.engine.commands import named_tensors

    # train batches of 20, one val batch of 30: after an epoch's validation the input must
    # still be the last train batch (it pairs with the last train output)
    t = train_in_process(
        write_recipe(linear_recipe(n=100, batch=20, epochs=1, val=30)), tmp_path / "run"
    )
    tensors = named_tensors(t.loop)
    assert tensors["input"][1].shape[0] == tensors["output"][1].shape[0] == 20


# -- 9: epoch and batch, one definition ----------------------------------------------------------


def test_position_words() -> None:
    done = position({"step": 470, "epoch": 5, "batch": 0, "steps_per_epoch": 94, "epochs": 5})
    assert (done.epoch_text, done.batch_text) == ("epoch 5/5", "batch 94/94")
    ending = position({"epoch": 3, "epoch_step": 0, "steps_per_epoch": 94, "epochs": 5})
    assert (ending.epoch_text, ending.batch_text) == ("epoch 3/5", "batch 94/94")
    nxt = position({"epoch": 3, "epoch_step": 1, "batch": 4, "steps_per_epoch": 94, "epochs": 5})
    assert (nxt.epoch_text, nxt.batch_text) == ("epoch 4/5", "batch 1/94")
    start = position({})
    assert (start.epoch_text, start.batch_text) == ("epoch 1/?", "batch 0/?")


def test_status_and_dashboard_agree_on_epoch_and_batch(tmp_path: Path) -> None:
    progress = {
        "step": 470,
        "total_steps": 470,
        "epoch": 5,
        "batch": 0,
        "steps_per_epoch": 94,
        "epochs": 5,
        "lrs": [0.01],
    }
    d = write_store(tmp_path / "runs" / "r1", steps=470, progress=progress)
    out = run_cli("status", "r1", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "epoch 5/5  batch 94/94" in out.stdout, out.stdout

    async def go() -> None:
        app = make_app(d)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.snapshot is not None, "the snapshot")
            await pilot.pause(0.3)
            assert "epoch 5/5  batch 94/94" in header(app), header(app)

    run(go())


def test_engine_publishes_the_batch_of_the_epoch(write_recipe, tmp_path: Path) -> None:
    t = train_in_process(write_recipe(linear_recipe(n=100, batch=20, epochs=2)), tmp_path / "run")
    at = position(t.meta()["progress"])
    assert (at.epoch_text, at.batch_text, at.step_text) == ("epoch 2/2", "batch 5/5", "step 10/10")


# -- 12: paused says so; the ETA's rate is smoothed ----------------------------------------------


def test_paused_run_says_paused_not_a_stale_rate(tmp_path: Path) -> None:
    progress = {"step": 40, "total_steps": 400, "lrs": [0.01], "paused": True}
    # the last samples/s recorded is from before the pause
    d = write_store(
        tmp_path / "run",
        status="running",
        progress=progress,
        live=True,
        samples_per_s=1234.0,
    )

    async def go() -> None:
        app = make_app(d)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.snapshot is not None, "the snapshot")
            await pilot.pause(0.3)
            text = header(app)
            assert "PAUSED" in text and "samples/s paused" in text and "1234" not in text, text
            assert "ETA paused" in text

    run(go())


def test_eta_rate_is_smoothed_and_ignores_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(poller_module.time, "monotonic", lambda: clock[0])
    p = RunPoller(Path("/nonexistent"))
    running, paused = poller_module.RUNNING, poller_module.PAUSED
    step = 0
    for _ in range(60):  # a minute at 10 steps/s
        clock[0] += 1.0
        step += 10
        p._note_rate(step, running)
    assert p._steps_per_s(None) == pytest.approx(10.0)
    for _ in range(3):  # one slow second (an eval pass) barely moves it
        clock[0] += 1.0
        step += 1
        p._note_rate(step, running)
    assert p._steps_per_s(None) == pytest.approx(10.0, rel=0.1)
    for _ in range(120):  # two minutes paused
        clock[0] += 1.0
        p._note_rate(step, paused)
    for _ in range(15):  # resumed at 10 steps/s: the pause does not count
        clock[0] += 1.0
        step += 10
        p._note_rate(step, running)
    assert p._steps_per_s(None) == pytest.approx(10.0)
