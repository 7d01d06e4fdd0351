"""The loop and probe on tiny CPU recipes: step arithmetic, validation, metrics, per-step scalars,
layer stats, schedulers, seeds, alerts, checkpoints, resume and crashes.

Most runs are wired in this process exactly as engine/main.py wires them (train_in_process);
the ones about the process itself (flags, resume, exit status, stderr) run the real CLI. Every
check reads the run's SQLite file back through RunReader."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    assert_no_internal_frames,
    by_step,
    events_of,
    linear_recipe,
    only_run,
    run_cli,
    scalar_table,
    steps_of,
    train_in_process,
    user_frames,
    values_of,
)

from dltui.engine import loop as loop_mod
from dltui.run.reader import RunReader

# -- step arithmetic -----------------------------------------------------------------------


def test_1000_samples_batch_20_ten_epochs_is_500_steps(write_recipe, tmp_path):
    t = train_in_process(write_recipe(linear_recipe(n=1000, batch=20, epochs=10)), tmp_path / "run")
    assert t.status == "finished"
    assert (t.loop.steps_per_epoch, t.loop.total_steps) == (50, 500)
    rows = t.table()[("loss", "train")]
    assert [s for s, _, _ in rows] == list(range(1, 501))
    # The epoch column counts completed epochs: steps 1-50 are epoch 0, 451-500 epoch 9.
    assert [e for _, e, _ in rows] == [(s - 1) // 50 for s in range(1, 501)]
    assert t.meta()["progress"]["step"] == 500


def test_last_partial_batch_is_a_step(write_recipe, tmp_path):
    t = train_in_process(write_recipe(linear_recipe(n=1010, batch=20, epochs=2)), tmp_path / "run")
    assert t.loop.steps_per_epoch == 51
    assert steps_of(t.table(), "loss") == list(range(1, 103))
    # The 51st step of each epoch saw the 10 left-over samples.
    sps, st = by_step(t.table(), "samples_per_s"), by_step(t.table(), "step_time")
    assert sps[51] == pytest.approx(10 / st[51]) and sps[50] == pytest.approx(20 / st[50])


def test_max_steps_stops_exactly_there(write_recipe, tmp_path):
    t = train_in_process(
        write_recipe(linear_recipe(n=1000, batch=20, epochs=10)), tmp_path / "run", max_steps=37
    )
    assert t.status == "finished"
    assert t.loop.total_steps == 37
    assert steps_of(t.table(), "loss") == list(range(1, 38))
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert (ck["step"], ck["epoch"], ck["batch"]) == (37, 0, 37)


def test_epochs_setting_overrides_the_recipe(write_recipe, tmp_path):
    t = train_in_process(
        write_recipe(linear_recipe(n=100, batch=20, epochs=10)), tmp_path / "run", epochs=3
    )
    assert t.loop.epochs == 3
    assert steps_of(t.table(), "loss") == list(range(1, 16))


# -- validation and metrics ------------------------------------------------------------------

FLAGGED_MODEL = """
class Flagged(nn.Module):
    # Records (batch size, training?, grad enabled?) at every forward pass.
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.seen = []

    def forward(self, x):
        self.seen.append((len(x), self.training, torch.is_grad_enabled()))
        return self.fc(x)


model = Flagged()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
val_loader = DataLoader(TensorDataset(xv, yv), batch_size=7)
"""


def test_validation_runs_in_eval_mode_under_no_grad_after_each_epoch(write_recipe, tmp_path):
    path = write_recipe(linear_recipe(n=100, batch=20, epochs=2, val=35, extra=FLAGGED_MODEL))
    t = train_in_process(path, tmp_path / "run")
    seen = t.recipe.model.seen
    val = [s for s in seen if s[0] == 7]
    train = [s for s in seen if s[0] == 20]
    assert len(val) == 2 * 5 and len(train) == 2 * 5
    assert all(not training and not grad for _, training, grad in val), val
    assert all(training and grad for _, training, grad in train), train  # train() again after val
    assert t.recipe.model.training

    table = t.table()
    assert steps_of(table, "loss", "val") == [5, 10]
    assert steps_of(table, "mae", "val") == [5, 10]
    assert [e for _, e, _ in table[("loss", "val")]] == [1, 2]
    # The last validation ran on the final weights: it must equal the loss computed here.
    ns = _recipe_namespace(t)
    with torch.no_grad():
        out = t.recipe.model.fc(ns["xv"])
        want_loss = torch.nn.functional.mse_loss(out, ns["yv"]).item()
        want_mae = (out - ns["yv"]).abs().mean().item()
    assert values_of(table, "loss", "val")[-1] == pytest.approx(want_loss, rel=1e-5)
    assert values_of(table, "mae", "val")[-1] == pytest.approx(want_mae, rel=1e-5)
    assert t.meta()["best"]["val_loss"] == pytest.approx(min(values_of(table, "loss", "val")))


def _recipe_namespace(t) -> dict:
    import sys

    return vars(sys.modules["dltui_recipe"])


MULTICLASS = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
W = torch.randn(4, 3)
x, xv = torch.randn(200, 4), torch.randn(60, 4)
y, yv = (x @ W).argmax(1), (xv @ W).argmax(1)  # integer class ids
train_loader = DataLoader(TensorDataset(x, y), batch_size=20)
val_loader = DataLoader(TensorDataset(xv, yv), batch_size=25)
model = nn.Linear(4, 3)
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
epochs = 2
"""

BINARY = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
x, xv = torch.randn(200, 2), torch.randn(60, 2)
y, yv = (x.sum(1, keepdim=True) > 0).float(), (xv.sum(1, keepdim=True) > 0).float()  # 0/1, [N, 1]
train_loader = DataLoader(TensorDataset(x, y), batch_size=20)
val_loader = DataLoader(TensorDataset(xv, yv), batch_size=25)
model = nn.Linear(2, 1)  # one logit
loss_fn = nn.BCEWithLogitsLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
epochs = 2
"""

REGRESSION = linear_recipe(n=200, batch=20, epochs=2, val=60)


def _acc_multiclass(out, y):
    return (out.argmax(1) == y).float().mean().item()


def _acc_binary(out, y):
    return ((out > 0).float() == y).float().mean().item()


def _mae(out, y):
    return (out - y).abs().mean().item()


@pytest.mark.parametrize(
    "source, name, reason, brute_force",
    [
        (MULTICLASS, "acc", "multiclass accuracy over 3 classes", _acc_multiclass),
        (BINARY, "acc", "binary accuracy", _acc_binary),
        (REGRESSION, "mae", "regression: mean absolute error", _mae),
    ],
    ids=["multiclass", "binary", "regression"],
)
def test_default_metric_is_chosen_from_the_task(
    write_recipe, tmp_path, source, name, reason, brute_force
):
    t = train_in_process(write_recipe(source), tmp_path / "run")
    table = t.table()
    always = {"loss", "step_time", "data_time", "samples_per_s", "lr/0"}
    assert {n for n, _ in table} - always == {name}
    assert steps_of(table, name, "val") == [10, 20]
    # The train metric is measured at its warm-up steps, then at its chosen interval.
    from dltui.engine.probe import WARMUP_AT

    assert steps_of(table, name, "train")[:2] == list(WARMUP_AT["metric"][:2])
    assert any(reason in e["message"] for e in events_of(t.run_dir, "info")), events_of(t.run_dir)
    ns = _recipe_namespace(t)
    with torch.no_grad():
        want = brute_force(t.recipe.model(ns["xv"]), ns["yv"])
    assert values_of(table, name, "val")[-1] == pytest.approx(want, abs=1e-6)


def test_recipe_metrics_override_the_default(write_recipe, tmp_path):
    source = MULTICLASS + (
        "from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score\n"
        "metrics = {'top1': MulticlassAccuracy(num_classes=3, average='micro'),\n"
        "           'f1': MulticlassF1Score(num_classes=3)}\n"
    )
    t = train_in_process(write_recipe(source), tmp_path / "run")
    names = {n for n, phase in t.table() if phase == "val"}
    assert names == {"loss", "top1", "f1"}
    ns = _recipe_namespace(t)
    with torch.no_grad():
        want = _acc_multiclass(t.recipe.model(ns["xv"]), ns["yv"])
    assert values_of(t.table(), "top1", "val")[-1] == pytest.approx(want, abs=1e-6)


# -- per-step scalars, layer stats, histograms, intervals ----------------------------------


def test_per_step_scalars_with_two_param_groups(write_recipe, tmp_path):
    extra = """
    optimizer = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}], lr=0.1)
    """
    t = train_in_process(
        write_recipe(linear_recipe(n=100, batch=20, epochs=3, extra=extra)), tmp_path / "run"
    )
    table = t.table()
    for name in ("loss", "lr/0", "lr/1", "step_time", "data_time", "samples_per_s"):
        assert steps_of(table, name) == list(range(1, 16)), name
    assert values_of(table, "lr/0") == [0.1] * 15
    assert values_of(table, "lr/1") == [0.01] * 15
    for st, dt, sps in zip(
        values_of(table, "step_time"),
        values_of(table, "data_time"),
        values_of(table, "samples_per_s"),
        strict=True,
    ):
        assert 0 <= dt <= st
        assert sps == pytest.approx(20 / st)
    assert all(math.isfinite(v) and v > 0 for v in values_of(table, "loss"))


LAYERS = """
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
model[0].bias.requires_grad_(False)  # frozen: no stats rows
optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
"""


def test_layer_stats_every_5_steps_for_every_trainable_parameter(write_recipe, tmp_path):
    # lr=0 keeps the weights fixed, so the recorded stats can be recomputed here exactly.
    path = write_recipe(linear_recipe(n=100, batch=20, epochs=4, extra=LAYERS))
    t = train_in_process(path, tmp_path / "run", stats_every=5)
    trainable = ["0.weight", "2.weight", "2.bias"]
    with RunReader(t.run_dir) as r:
        assert t.meta()["intervals"]["stats_every"] == 5
        rows = r.db.execute(
            "SELECT l.step, p.name FROM layer_stats l JOIN params p ON p.id = l.param ORDER BY l.step, p.name"
        ).fetchall()
        assert rows == [(s, n) for s in (5, 10, 15, 20) for n in sorted(trainable)]
        step, latest = r.layer_stats_latest()
        assert step == 20
        hist = r.histogram_latest("0.weight", "weight")
        grad_hist = r.histogram_latest("2.weight", "grad")
        params = {p["name"]: p for p in r.params()}
    assert params["0.bias"]["trainable"] is False and params["0.weight"]["shape"] == [8, 4]

    model = t.recipe.model
    x, y = _recipe_namespace(t)["x"], _recipe_namespace(t)["y"]
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x[80:100]), y[80:100]).backward()  # step 20's batch
    for name in trainable:
        p = dict(model.named_parameters())[name]
        s = latest[name]
        assert s["w_norm"] == pytest.approx(p.norm().item(), rel=1e-5)
        assert s["w_mean"] == pytest.approx(p.mean().item(), rel=1e-4, abs=1e-7)
        assert s["w_maxabs"] == pytest.approx(p.abs().max().item(), rel=1e-5)
        assert s["g_norm"] == pytest.approx(p.grad.norm().item(), rel=1e-4)
        assert s["update_ratio"] == 0 and s["nonfinite"] == 0
        if p.numel() > 1:
            assert s["w_std"] == pytest.approx(p.std().item(), rel=1e-4)
    assert hist is not None and sum(hist["counts"]) == 32
    assert grad_hist is not None and sum(grad_hist["counts"]) == 8


def test_automatic_intervals_are_recorded_and_followed(write_recipe, tmp_path):
    path = write_recipe(linear_recipe(n=1000, batch=10, epochs=1))
    t = train_in_process(path, tmp_path / "run")
    iv = t.meta()["intervals"]
    assert iv["chosen"] == "auto" and set(iv["measured_cost_s"]) >= {"stats", "hist"}
    every = iv["stats_every"]
    with RunReader(t.run_dir) as r:
        stats_steps = [
            s for (s,) in r.db.execute("SELECT DISTINCT step FROM layer_stats ORDER BY step")
        ]
        hist_steps = [
            s for (s,) in r.db.execute("SELECT DISTINCT step FROM histograms ORDER BY step")
        ]
    # Warm-up measures at its WARMUP_AT steps, then the chosen interval applies from step 21 on.
    from dltui.engine.probe import WARMUP_AT, WARMUP_STEPS

    warm = list(WARMUP_AT["stats"])
    assert stats_steps == warm + [s for s in range(WARMUP_STEPS + 1, 101) if s % every == 0]
    n_warm = len(WARMUP_AT["hist"])
    assert hist_steps[:n_warm] == list(WARMUP_AT["hist"])
    assert all(s % iv["hist_every"] == 0 for s in hist_steps[n_warm:])
    assert iv["hist_every"] >= 10 * every
    assert any(
        "probe intervals" in e["message"] and e["step"] == 20 for e in events_of(t.run_dir, "info")
    )


SLOW_START = """
import time

calls = 0


def train_step(model, batch):
    global calls
    calls += 1
    if calls <= 20:  # the warm-up runs on a machine busy with something else
        time.sleep(0.03)
    x, y = batch
    return loss_fn(model(x), y)
"""


def test_intervals_are_chosen_again_when_the_warm_up_was_not_typical(
    write_recipe, tmp_path, monkeypatch
):
    from dltui.engine import probe as probe_mod

    monkeypatch.setattr(probe_mod, "RECHOOSE_S", 0.3)
    path = write_recipe(linear_recipe(n=6000, batch=4, epochs=1, extra=SLOW_START))
    t = train_in_process(path, tmp_path / "run", max_steps=1500)
    chosen = [e for e in events_of(t.run_dir, "info") if "probe intervals" in e["message"]]
    assert chosen[0]["step"] == 20 and "changed" not in chosen[0]["message"]
    first = int(chosen[0]["message"].split("layer stats every ")[1].split()[0])
    changed = [e for e in chosen[1:] if "probe intervals changed" in e["message"]]
    assert changed, [e["message"] for e in chosen]
    # 30 ms steps in the warm-up, well under 1 ms after it: the interval grows by > 10x
    final = t.meta()["intervals"]["stats_every"]
    assert final >= 10 * first, (first, final)
    at = changed[-1]["step"]
    with RunReader(t.run_dir) as r:
        later = [
            s
            for (s,) in r.db.execute(
                "SELECT DISTINCT step FROM layer_stats WHERE step > ? ORDER BY step", (at,)
            )
        ]
    assert later == [s for s in range(at + 1, 1501) if s % final == 0]


# -- schedulers ------------------------------------------------------------------------------


def test_step_lr_per_epoch(write_recipe, tmp_path):
    extra = """
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scheduler_interval = "epoch"
    """
    t = train_in_process(
        write_recipe(linear_recipe(n=100, batch=10, epochs=3, lr=0.1, extra=extra)),
        tmp_path / "run",
    )
    lrs = values_of(t.table(), "lr/0")
    assert lrs == pytest.approx([0.1 * 0.5 ** ((s - 1) // 10) for s in range(1, 31)])


def test_one_cycle_per_step_records_the_lr_each_step_used(write_recipe, tmp_path):
    extra = """
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=30, cycle_momentum=False)
    scheduler_interval = "step"
    """
    t = train_in_process(
        write_recipe(linear_recipe(n=100, batch=10, epochs=3, extra=extra)), tmp_path / "run"
    )
    # The same schedule replayed: the lr in force when each optimizer step ran.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=30, cycle_momentum=False
    )
    used = []
    for _ in range(30):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    recorded = values_of(t.table(), "lr/0")
    assert len(recorded) == 30
    assert recorded == pytest.approx(used), (
        "lr/0 at step s must be the lr step s trained with (as with epoch schedulers); "
        f"recorded[:3]={recorded[:3]}, used[:3]={used[:3]}"
    )


PLATEAU = """
# Training data pulls the weights toward W; validation data wants -W, so as training
# improves the validation loss gets worse every epoch: a plateau only the val loss shows.
torch.nn.init.zeros_(model.weight)
xv = torch.randn(40, 4)
val_loader = DataLoader(TensorDataset(xv, xv @ -W), batch_size=20)
optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
"""


def test_reduce_lr_on_plateau_is_fed_the_val_loss(write_recipe, tmp_path):
    t = train_in_process(
        write_recipe(linear_recipe(n=100, batch=20, epochs=4, extra=PLATEAU)), tmp_path / "run"
    )
    table = t.table()
    val_losses = values_of(table, "loss", "val")
    train_losses = values_of(table, "loss")
    assert all(b > a for a, b in zip(val_losses, val_losses[1:], strict=False)), val_losses  # worse
    assert train_losses[-1] < train_losses[0]  # while training improves
    lr_per_epoch = [values_of(table, "lr/0")[e * 5] for e in range(4)]
    assert lr_per_epoch == pytest.approx([0.02, 0.02, 0.01, 0.005])
    # The same: a fresh scheduler fed the recorded val losses.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.02)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    replay = [0.02]
    for v in val_losses[:-1]:
        sched.step(v)
        replay.append(opt.param_groups[0]["lr"])
    assert lr_per_epoch == pytest.approx(replay)


def test_reduce_lr_on_plateau_without_val_is_fed_the_epoch_that_just_ended(write_recipe, tmp_path):
    extra = """
optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
    optimizer, factor=0.5, patience=0, threshold=0.5
)
"""
    t = train_in_process(
        write_recipe(linear_recipe(n=100, batch=20, epochs=5, extra=extra)), tmp_path / "run"
    )
    table = t.table()
    losses, lrs = values_of(table, "loss"), values_of(table, "lr/0")
    assert len(losses) == 25
    # A fresh scheduler fed each epoch's mean train loss as that epoch ends.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5)
    replay = [0.2]
    for e in range(4):
        sched.step(sum(losses[e * 5 : e * 5 + 5]) / 5)
        replay.append(opt.param_groups[0]["lr"])
    assert [lrs[e * 5] for e in range(5)] == pytest.approx(replay)
    assert replay[-1] < replay[0], "the losses never plateaued: a vacuous test"


# -- alerts ----------------------------------------------------------------------------------

SPOILED_AT = """
loss_fn = nn.MSELoss()
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr={lr})
calls = 0


def train_step(model, batch):
    global calls
    calls += 1
    x, y = batch
    out = model(x)
    loss = loss_fn(out, y)
    if calls == {at}:
        loss = loss * {factor}
    return loss, out, y
"""


def test_nan_loss_gives_one_alert_naming_the_step(write_recipe, tmp_path):
    extra = SPOILED_AT.format(lr=0.05, at=12, factor="float('nan')")
    t = train_in_process(
        write_recipe(linear_recipe(n=200, batch=10, epochs=1, extra=extra)), tmp_path / "run"
    )
    alerts = events_of(t.run_dir, "alert")
    assert len(alerts) == 1, alerts  # NaN from then on is the same problem, not a new one
    assert (
        alerts[0]["step"] == 12
        and "step 12" in alerts[0]["message"]
        and "nan" in alerts[0]["message"]
    )
    assert alerts[0]["level"] == "warning"
    loss = by_step(t.table(), "loss")
    assert loss[12] is None and loss[11] is not None  # NaN is stored as NULL
    assert t.status == "finished"


def test_gradient_explosion_alert_names_the_step_and_the_layer(write_recipe, tmp_path):
    extra = SPOILED_AT.format(lr=1e-9, at=30, factor="1e6")
    path = write_recipe(linear_recipe(n=400, batch=10, epochs=1, extra=extra))
    t = train_in_process(path, tmp_path / "run", stats_every=1, max_steps=35)
    alerts = events_of(t.run_dir, "alert")
    assert alerts, "no alert for a 1e6 gradient spike"
    assert min(a["step"] for a in alerts) == 30, alerts
    at_30 = [a for a in alerts if a["step"] == 30]
    layers = {a["data"]["layer"] for a in at_30}
    assert layers == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for a in at_30:
        assert a["data"]["layer"] in a["message"] and "step 30" in a["message"]


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoints_last_and_best(write_recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(loop_mod, "CHECKPOINT_BUDGET", 1.0)  # epochs as long as a write: each
    t = train_in_process(
        write_recipe(linear_recipe(n=100, batch=20, epochs=3, val=40)), tmp_path / "run"
    )
    ck_dir = t.run_dir / "checkpoints"
    last = torch.load(ck_dir / "last.pt", weights_only=False)
    best = torch.load(ck_dir / "best.pt", weights_only=False)
    for ck in (last, best):
        assert {"model", "optimizer", "scheduler", "step", "epoch", "best_val_loss"} <= set(ck)
    assert (last["step"], last["epoch"]) == (15, 3)
    for k, v in t.recipe.model.state_dict().items():
        assert torch.equal(last["model"][k], v)
    val = t.table()[("loss", "val")]
    best_step, best_epoch, best_loss = min(val, key=lambda r: r[2])
    assert (best["step"], best["epoch"]) == (best_step, best_epoch)
    assert best["best_val_loss"] == pytest.approx(best_loss, rel=1e-9)
    assert last["scheduler"] is None
    assert not list(ck_dir.glob("*.tmp"))
    kinds = [(e["data"]["tag"], e["step"]) for e in events_of(t.run_dir, "checkpoint")]
    assert [k for k in kinds if k[0] == "last"] == [("last", 5), ("last", 10), ("last", 15)]


def test_short_epochs_checkpoint_within_budget_and_the_final_state_is_kept(
    write_recipe, tmp_path, monkeypatch
):
    # Writing last.pt takes far longer than 1e-9 of these epochs: after the first epoch end,
    # none until the run's last (its final state), with one info event saying why.
    monkeypatch.setattr(loop_mod, "CHECKPOINT_BUDGET", 1e-9)
    t = train_in_process(write_recipe(linear_recipe(n=100, batch=20, epochs=4)), tmp_path / "run")
    assert t.status == "finished"
    kinds = [(e["data"]["tag"], e["step"]) for e in events_of(t.run_dir, "checkpoint")]
    assert kinds == [("last", 5), ("last", 20)]
    last = torch.load(t.run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert (last["step"], last["epoch"]) == (20, 4)
    said = [
        e["message"] for e in events_of(t.run_dir, "info") if "epochs are short" in e["message"]
    ]
    assert len(said) == 1 and "the final state, a stop and `c` always write one" in said[0]


# -- through the real CLI: flags, seed, resume, crash ---------------------------------------

UNSEEDED = linear_recipe(n=200, batch=10, epochs=10, seed=None).replace(
    "batch_size=10)", "batch_size=10, shuffle=True)"
)


def test_seed_epochs_and_stats_flags(write_recipe, tmp_path):
    """--seed makes an unseeded, shuffled recipe repeat exactly; --epochs overrides the recipe's;
    --stats-every fixes the layer-stats interval."""
    path = write_recipe(UNSEEDED)
    res = run_cli(
        "train",
        "--headless",
        "--seed",
        7,
        "--epochs",
        2,
        "--stats-every",
        4,
        "--runs-dir",
        tmp_path / "runs",
        path,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    run_dir = only_run(tmp_path / "runs")
    losses = values_of(scalar_table(run_dir), "loss")
    assert len(losses) == 40  # 2 epochs of 20 steps, not the recipe's 10 epochs
    assert len(set(losses)) > 30  # really training, not a constant
    with RunReader(run_dir) as r:
        assert r.meta()["intervals"]["stats_every"] == 4
        stats_steps = [
            s for (s,) in r.db.execute("SELECT DISTINCT step FROM layer_stats ORDER BY step")
        ]
    assert stats_steps == list(range(4, 41, 4))
    # The same seed again (here, seeded before the import as the engine does) repeats the run;
    # another seed does not, so the match is the seed's doing.
    again = train_in_process(path, tmp_path / "again", seed=7, max_steps=25)
    assert values_of(again.table(), "loss") == pytest.approx(losses[:25], rel=1e-5)
    other = train_in_process(path, tmp_path / "other", seed=8, max_steps=25)
    assert values_of(other.table(), "loss") != pytest.approx(losses[:25], rel=1e-3)


RESUMABLE = linear_recipe(
    n=500,
    batch=10,
    epochs=2,
    val=50,
    extra="""
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
""",
)


def test_resume_continues_step_numbering_and_training(write_recipe, tmp_path):
    path = write_recipe(RESUMABLE, name="resumable.py")
    runs = tmp_path / "runs"
    # The first part (stopped by max steps, 30 of 50 per epoch) runs here to save an engine
    # start; it writes the same store and checkpoint an engine would. The resume is the real CLI.
    first = train_in_process(path, runs / "20250101-000000-resumable", max_steps=30)
    run_dir = first.run_dir
    assert first.status == "finished" and steps_of(first.table(), "loss") == list(range(1, 31))

    second = run_cli(
        "train", "--headless", "--resume", run_dir.name, "--runs-dir", runs, path, cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr
    assert "resuming at step 30" in second.stdout
    assert only_run(runs) == run_dir  # same run, no new directory
    table = scalar_table(run_dir)
    assert steps_of(table, "loss") == list(range(1, 101))  # no gap, no duplicate
    with RunReader(run_dir) as r:
        assert r.status() == "finished"
        assert r.meta()["progress"]["step"] == 100
    assert any(
        "resumed from checkpoint at step 30" in e["message"] for e in events_of(run_dir, "run")
    )

    # The resumed run is the run that was never interrupted: weights, momentum and the
    # scheduler came back, and the data picked up at batch 31.
    whole = train_in_process(path, tmp_path / "whole")
    assert values_of(table, "loss") == pytest.approx(values_of(whole.table(), "loss"), rel=1e-4)
    assert values_of(table, "lr/0")[-1] == pytest.approx(0.005)

    # The resumed process measured its own warm-up and chose intervals again (it used to keep
    # the unmeasured interval, 1: layer stats, histograms and the metric at every step).
    from dltui.engine.probe import WARMUP_AT, WARMUP_STEPS

    chosen = [e for e in events_of(run_dir, "info") if "probe intervals" in e["message"]]
    assert [e["step"] for e in chosen] == [WARMUP_STEPS, 30 + WARMUP_STEPS]
    with RunReader(run_dir) as r:
        intervals = r.meta()["intervals"]
        every = intervals["stats_every"]
        after = [
            s
            for (s,) in r.db.execute(
                "SELECT DISTINCT step FROM layer_stats WHERE step > 30 ORDER BY step"
            )
        ]
    # Chosen, not kept: the resumed warm-up measured every part (it used to leave the layer
    # stats unmeasured, at interval 1), and choosing puts histograms at >= 10x the stats interval.
    assert set(intervals["measured_cost_s"]) == {"stats", "hist", "metric"}
    assert intervals["hist_every"] >= 10 * every
    assert after == [30 + k for k in WARMUP_AT["stats"]] + [
        s for s in range(31 + WARMUP_STEPS, 101) if s % every == 0
    ]


CRASHES_AT_7 = linear_recipe(
    n=200,
    batch=10,
    epochs=1,
    extra="""
calls = 0


def train_step(model, batch):
    global calls
    calls += 1
    x, y = batch
    if calls == 7:
        x = x[:, :3]  # a shape bug that only shows on the 7th batch
    out = model(x)
    return loss_fn(out, y), out, y
""",
)


def test_crash_in_user_code_fails_the_run_and_keeps_it(write_recipe, tmp_path):
    path = write_recipe(CRASHES_AT_7, name="crashes.py")
    runs = tmp_path / "runs"
    res = run_cli("train", "--headless", "--runs-dir", runs, path, cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    err = res.stderr
    assert "failed at step 7" in err
    raise_line = CRASHES_AT_7.splitlines().index("    out = model(x)") + 1
    assert f'File "{path.resolve()}", line {raise_line}, in train_step' in err, err
    assert "mat1 and mat2 shapes cannot be multiplied" in err
    assert_no_internal_frames(err)

    run_dir = only_run(runs)
    with RunReader(run_dir) as r:
        assert r.status() == "failed"
    assert steps_of(scalar_table(run_dir), "loss") == [1, 2, 3, 4, 5, 6]
    errors = events_of(run_dir, "error")
    assert len(errors) == 1 and errors[0]["level"] == "error"
    tb = errors[0]["data"]["traceback"]
    assert str(path.resolve()) in user_frames(tb) and "mat1 and mat2" in tb
    assert_no_internal_frames(tb)
    status = run_cli("status", run_dir.name, "--json", "--runs-dir", runs, cwd=tmp_path)
    assert '"status": "failed"' in status.stdout
