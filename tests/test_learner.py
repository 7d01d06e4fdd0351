"""The learner view (issue 12, item 6): the engine records the run's arithmetic once at start
(meta['learner'], engine/learner.py) and the Overview's Run panel shows it; in eval mode the
panel says which modules eval() switches and that gradients are off.

A real engine trains a small recipe with Dropout and BatchNorm (live, for eval mode), a real
engine runs a script to its end; the pure functions are checked on real torch objects.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CHILD_ENV, running_engine
from screen import screen_text
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from dltui.engine import learner
from dltui.run.reader import RunReader
from dltui.tui.app import make_app
from dltui.tui.widgets import learner as view
from dltui.tui.widgets.learner import SIDE_BY_SIDE, RunPanel

RECIPE = '''
"""100 samples in batches of 32, a Dropout and a BatchNorm; ~20 ms a step, never ends."""
import time
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data import default_collate

torch.manual_seed(0)


def slow(batch):
    time.sleep(0.02)
    return default_collate(batch)


x, y = torch.randn(100, 4), torch.randint(0, 3, (100,))
train_loader = DataLoader(TensorDataset(x, y), batch_size=32, collate_fn=slow)
val_loader = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=16)
model = nn.Sequential()
model.add_module("fc", nn.Linear(4, 8))
model.add_module("bn", nn.BatchNorm1d(8))
model.add_module("drop", nn.Dropout(0.5))
model.add_module("head", nn.Linear(8, 3))
loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.01)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
epochs = 100000
'''

SCRIPT = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
train_loader = DataLoader(TensorDataset(torch.randn(50, 4), torch.randn(50, 1)), batch_size=8)
model = nn.Linear(4, 1)
criterion = nn.MSELoss()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
for x, y in train_loader:
    opt.zero_grad()
    criterion(model(x), y).backward()
    opt.step()
    sched.step()
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    """A live recipe run (started first: torch imports while the pure tests run)."""
    with running_engine(RECIPE, tmp_path_factory.mktemp("learner"), "net", steps=2) as run_dir:
        yield run_dir


def learner_meta(run_dir: Path) -> dict:
    with RunReader(run_dir) as r:
        return r.meta()["learner"]


# -- the engine's pure functions -------------------------------------------------------------


def test_loader_arithmetic_and_its_words() -> None:
    ds = TensorDataset(torch.zeros(3000, 2))
    t = learner.loader_arithmetic(DataLoader(ds, batch_size=32), 1, 94)
    assert (t["samples"], t["batch_size"], t["batches"], t["last_batch"]) == (3000, 32, 94, 24)
    rec = {"source": "recipe", "train": t}
    assert view.train_line(rec) == "3,000 samples / batch 32 = 94 steps per epoch (last batch 24)"
    assert view.train_line(rec, compact=True) == "3,000 / 32 = 94 steps/epoch (last 24)"

    dropped = learner.loader_arithmetic(DataLoader(ds, batch_size=32, drop_last=True), 1, 93)
    assert view.train_line({"train": dropped}).endswith(
        "93 steps per epoch (last 24 samples dropped)"
    )

    acc = learner.loader_arithmetic(DataLoader(ds, batch_size=32), 4, 24)
    assert "= 94 batches / accumulate 4 = 24 steps per epoch" in view.train_line({"train": acc})

    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(2)

    stream = learner.loader_arithmetic(DataLoader(Stream(), batch_size=4), 1, 50)
    assert stream["batches"] is None and stream["samples"] is None
    line = view.train_line({"train": stream, "steps_cap": 50})
    assert "no length" in line and "steps_per_epoch = 50" in line
    assert view.train_line({"source": "script", "train": None}).startswith("unknown")


def test_optimizer_loss_scheduler_and_eval_descriptions() -> None:
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Dropout(0.2), nn.LSTM(4, 4, 2))
    model.add_module("rnn", nn.GRU(4, 4, 2, dropout=0.1))
    model.add_module("inorm", nn.InstanceNorm1d(4))  # no running stats: eval() changes nothing
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100)
    o = learner.optimizer_description("optimizer", opt)
    # The optimizer's own hyperparameters, as at start (OneCycleLR already set lr = max_lr/25);
    # the scheduler's keys in its groups (initial_lr, max_lr) are not the optimizer's.
    assert o["hparams"]["lr"] == pytest.approx(0.004) and "initial_lr" not in o["hparams"]
    assert "foreach" not in o["hparams"] and o["hparams"]["betas"] == [0.95, 0.999]
    assert view.optimizer_lines({"optimizers": [o]})[0].startswith("Adam(lr=0.004, betas=(0.95,")
    with_sched = view.optimizer_lines({"optimizers": [o], "schedulers": [{}]})[0]
    assert with_sched.endswith(") at step 0")  # the LR a scheduler moves: the header's is now
    s = learner.scheduler_description(sched, "step")
    assert s["args"]["max_lr"] == 0.1 and s["args"]["total_steps"] == 100
    assert view.scheduler_lines({"schedulers": [s]})[0].endswith(", stepped every step")
    loss = learner.loss_description(nn.CrossEntropyLoss(weight=torch.ones(3), label_smoothing=0.1))
    assert view.loss_line({"loss": loss}) == (
        "CrossEntropyLoss(reduction=mean, weight=tensor[3], label_smoothing=0.1)"
    )
    assert learner.loss_description(nn.functional.mse_loss)["type"] == (
        "torch.nn.functional.mse_loss"
    )
    ev = learner.eval_changes([model])
    assert (ev["dropout"]["count"], ev["norm"]["count"], ev["other"]["count"]) == (1, 1, 1)
    assert ev["other"]["names"] == ["rnn GRU(dropout=0.1)"]  # the LSTM has no dropout to switch


def test_a_description_that_fails_never_stops_the_run() -> None:
    class Odd(TensorDataset):
        def __len__(self) -> int:
            raise RuntimeError("length not known yet")

    t = learner.loader_arithmetic(DataLoader(Odd(torch.zeros(4, 2)), batch_size=2))
    assert t["samples"] is None and t["batches"] is None
    broken = learner.recipe_learner(object())  # anything it trips over: said, not raised
    assert broken["error"].startswith("AttributeError")
    panel = RunPanel()
    panel.learner = broken
    assert "could not describe this run: AttributeError" in panel.lines()[0][1]


# -- a real recipe run -----------------------------------------------------------------------


def test_engine_records_the_recipe_once(live: Path) -> None:
    lr = learner_meta(live)
    t = lr["train"]
    assert (t["samples"], t["batch_size"], t["batches"], t["last_batch"], t["steps"]) == (
        100,
        32,
        4,
        4,
        4,
    )
    assert lr["val"]["samples"] == 40 and lr["val"]["batches"] == 3
    (o,) = lr["optimizers"]
    assert o["type"] == "Adam" and o["hparams"]["weight_decay"] == 0.01
    assert lr["loss"] == {
        "type": "CrossEntropyLoss",
        "args": {"reduction": "mean", "label_smoothing": 0.1},
    }
    (s,) = lr["schedulers"]
    assert s["type"] == "StepLR" and s["args"] == {"step_size": 3, "gamma": 0.5}
    assert s["interval"] == "epoch"
    assert lr["eval"]["dropout"]["names"] == ["drop Dropout(p=0.5)"]
    assert lr["eval"]["norm"]["names"] == ["bn BatchNorm1d"]


def panel_text(app) -> str:
    """The Run panel's entries, unwrapped; its first rendered line must be the first entry's."""
    panel = app.screen.query_one(RunPanel)
    rows = panel.lines()
    assert panel.render().plain.split()[0] == (rows[0][0] or rows[0][1].split()[0])
    return "\n".join(text for _, text, _ in rows)


async def shows(pilot, app, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in screen_text(app):
        assert time.monotonic() < deadline, f"{text!r} not on screen:\n{screen_text(app)}"
        await pilot.pause(0.1)
    return screen_text(app)


ARITHMETIC = "100 samples / batch 32 = 4 steps per epoch (last batch 4)"


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (150, 40)])
def test_run_panel_fits_and_eval_says_what_it_switches(live: Path, size) -> None:
    async def go() -> None:
        app = make_app(live)
        async with app.run_test(size=size) as pilot:
            if size[0] < SIDE_BY_SIDE:  # the events and the Run panel take turns: i
                await shows(pilot, app, "─ events  i: run ─")  # the key, where the panel goes
                assert ARITHMETIC not in screen_text(app)
                await pilot.press("i")
                await shows(pilot, app, "i: events")
            await shows(pilot, app, "100 samples / batch 32 = 4 steps per")  # (may wrap)
            rows = [text for _, text, _ in app.screen.query_one(RunPanel).lines()]
            assert rows[:4] == [
                ARITHMETIC,
                "Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01) at step 0",
                "CrossEntropyLoss(reduction=mean, label_smoothing=0.1)",
                "StepLR(step_size=3, gamma=0.5), stepped every epoch",
            ]
            if size[0] < SIDE_BY_SIDE:
                await pilot.press("i")
                await shows(pilot, app, "─ events  i: run ─")
            # The charts keep their room: the panel shares the events' strip (6 rows at 24, 9
            # taller), so the plots are as tall as before it came.
            strip, loss = (
                app.screen.query_one(q).outer_size.height for q in ("#ov-row3", "#plot-loss")
            )
            assert (strip, loss) == ((6, 7) if size[1] == 24 else (9, 15))
            if size[0] >= SIDE_BY_SIDE:  # both whole, side by side
                assert "─ events ─" in screen_text(app) and "─ run ─" in screen_text(app)
            # Eval mode: the panel comes (at 80 columns too) and says what eval() switches.
            await pilot.press("e")
            await shows(pilot, app, "run: EVAL mode")
            text = panel_text(app)
            assert "1 Dropout off (every unit kept, none zeroed): drop (p=0.5)" in text
            assert "1 BatchNorm with running stats use their running mean/var" in text
            assert "no_grad(): no gradients kept" in text
            await pilot.press("e")  # back to training for the other size
            while app.snapshot.state == "eval":
                await pilot.pause(0.1)

    asyncio.run(go())


# -- a real script run -----------------------------------------------------------------------


def test_script_run_finds_its_loader_loss_and_scheduler(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    run_dir = tmp_path / "runs" / "script"
    argv = [sys.executable, "-m", "dltui.engine", "--run-dir", str(run_dir), "--", str(script)]
    done = subprocess.run(argv, env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lr = learner_meta(run_dir)
    assert lr["train"]["found_as"] == "train_loader" and lr["train"]["batches"] == 7
    assert view.train_line(lr) == (
        "50 samples / batch 8 = 7 batches per epoch (last batch 2)  (`train_loader` in the script)"
    )
    assert view.loss_line(lr) == "MSELoss(reduction=mean)  (`criterion`)"
    assert view.optimizer_lines(lr) == [
        "SGD(lr=0.1, momentum=0.9, dampening=0, weight_decay=0) at step 0"
    ]
    assert view.scheduler_lines(lr)[0].startswith("CosineAnnealingLR(T_max=7")
    assert "one pass of the script's dltui.on_eval" in view.eval_lines(lr, script=True)[-1]
