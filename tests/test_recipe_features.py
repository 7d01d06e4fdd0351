"""Recipes that keep everything a real training loop does (issue 8), on tiny CPU recipes:
ctx and argv, clipping, accumulation, amp, closure optimizers, several optimizers (steered,
checkpointed, resumed, never stepped in eval), dict returns, default metrics from shapes,
metrics that fail, loaders without a length, epoch hooks, honest failure labels, and the
final validation of a --max-steps run. Runs are wired as engine/main.py wires them
(train_in_process); argv and CSV export go through the real CLI."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import (
    HEADER,
    events_of,
    linear_recipe,
    only_run,
    run_cli,
    steps_of,
    train_in_process,
    values_of,
)

from dltui.engine.commands import apply_lr
from dltui.engine.loop import Callback, EngineError
from dltui.engine.recipe import RecipeError, load_recipe
from dltui.run.reader import RunReader


def messages(run_dir, kind: str | None = None) -> list[str]:
    return [e["message"] for e in events_of(run_dir, kind)]


def fresh(source: str) -> dict:
    """The recipe's names built again from its source: same seed, same data, same init."""
    ns: dict = {}
    exec(compile(source, "<recipe>", "exec"), ns)
    return ns


# -- a GAN: two optimizers -------------------------------------------------------------------

GAN = (
    HEADER
    + """
torch.manual_seed(0)
real = torch.randn(40, 2) * 0.5 + 2.0
train_loader = DataLoader(TensorDataset(real), batch_size=10)
model = nn.ModuleDict({"g": nn.Linear(3, 2), "d": nn.Linear(2, 1)})
loss_fn = nn.BCEWithLogitsLoss()
optimizer = {"g": torch.optim.Adam(model["g"].parameters(), lr=0.01),
             "d": torch.optim.Adam(model["d"].parameters(), lr=0.02)}
epochs = 2


def scores(x):
    fake = model["g"](torch.randn(len(x), 3))
    d_real, d_fake = model["d"](x), model["d"](fake.detach())
    d_loss = loss_fn(d_real, torch.ones_like(d_real)) + loss_fn(d_fake, torch.zeros_like(d_fake))
    return fake, d_loss


def train_step(batch, ctx):
    (x,) = batch
    fake, d_loss = scores(x)
    ctx.zero_grad("d")
    ctx.backward(d_loss)
    ctx.step("d")
    s = model["d"](fake)
    g_loss = loss_fn(s, torch.ones_like(s))
    ctx.zero_grad("g")
    ctx.backward(g_loss)
    ctx.step("g")
    return {"loss": (d_loss + g_loss).detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach()}
"""
)

GAN_EVAL = """
def eval_step(batch, ctx):
    (x,) = batch
    fake, d_loss = scores(x)
    s = model["d"](fake)
    return {"loss": d_loss + loss_fn(s, torch.ones_like(s)), "d_loss": d_loss}
"""


def snapshot(loop) -> dict:
    state = {f"p.{k}": v.detach().clone() for k, v in loop.model.state_dict().items()}
    for name, opt in loop.optimizers.items():
        for i, st in enumerate(opt.state.values()):
            for k, v in st.items():
                state[f"{name}.{i}.{k}"] = v.clone() if isinstance(v, torch.Tensor) else v
    return state


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


class Steer(Callback):
    """At step 2 halve D's LR alone, at step 4 both; at step 3 press `e` (an eval pass)."""

    def __init__(self) -> None:
        self.eval_changed: bool | None = None

    def on_step_end(self, loop, out) -> None:
        if loop.step == 2:
            apply_lr(loop, "*0.5", 0, optimizer="d")
        if loop.step == 3:
            before = snapshot(loop)
            values = loop.eval_pass()
            assert "d_loss" in values
            self.eval_changed = not same(before, snapshot(loop))
        if loop.step == 4:
            apply_lr(loop, "*0.5", None, optimizer="g")
            apply_lr(loop, "*0.5", None, optimizer="d")


def test_gan_two_optimizers_steered_checkpointed_resumed_and_eval_steps_nothing(
    write_recipe, tmp_path
):
    path = write_recipe(GAN + GAN_EVAL)
    steer = Steer()
    t = train_in_process(path, tmp_path / "run", callbacks=[steer])
    assert t.status == "finished", t.error
    assert list(t.loop.optimizers) == ["g", "d"] and t.loop.optimizer is t.loop.optimizers["g"]
    table = t.table()
    # lr/0 is the main optimizer's (g), lr/d/0 the other one's: D alone from step 3, both from 5.
    assert values_of(table, "lr/0") == pytest.approx([0.01] * 4 + [0.005] * 4)
    assert values_of(table, "lr/d/0") == pytest.approx([0.02] * 2 + [0.01] * 2 + [0.005] * 4)
    for name in ("loss", "d_loss", "g_loss"):
        assert steps_of(table, name) == list(range(1, 9)), name
    assert steer.eval_changed is False  # `e` evaluated without stepping anything
    assert t.loop.all_lrs() == {"g": [0.005], "d": [0.005]}

    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert list(ck["optimizers"]) == ["g", "d"]
    assert ck["optimizer"]["param_groups"] == ck["optimizers"]["g"]["param_groups"]  # old readers
    for name, opt in t.loop.optimizers.items():
        assert ck["optimizers"][name]["param_groups"][0]["lr"] == pytest.approx(0.005)
        assert set(ck["optimizers"][name]["state"]) == set(opt.state_dict()["state"])

    resumed = train_in_process(path, tmp_path / "resumed", epochs=3, resume=ck)
    assert resumed.status == "finished", resumed.error
    assert steps_of(resumed.table(), "loss") == list(range(9, 13))
    lrs = values_of(resumed.table(), "lr/d/0")
    assert lrs == pytest.approx([0.005] * 4)  # D's halved LR and Adam state came back
    assert resumed.loop.optimizers["d"].state_dict()["state"][0]["step"] == 12


def test_a_train_step_that_steps_must_define_eval_step(write_recipe):
    path = write_recipe(GAN)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert (
        msg.startswith(f"{path}: `train_step` steps the optimizers itself") and "eval_step" in msg
    )


def test_eval_never_steps_an_optimizer_and_the_run_goes_on(write_recipe, tmp_path):
    sneaky = (
        GAN
        + """
val_loader = DataLoader(TensorDataset(real[:20]), batch_size=10)


def eval_step(batch, ctx):
    (x,) = batch
    fake, d_loss = scores(x)
    ctx.step("d")  # refused: the pass goes on
    if ctx.global_step > 4:
        optimizer["g"].step()  # refused too: this pass is abandoned
    return d_loss
"""
    )
    t = train_in_process(write_recipe(sneaky), tmp_path / "run")
    assert t.status == "finished", t.error
    alerts = messages(t.run_dir, "alert")
    assert (
        sum("ctx.step('d') during evaluation: refused" in m for m in alerts) == 2
    )  # once per pass
    assert any("stepped optimizer 'g' during evaluation" in m for m in alerts), alerts
    assert steps_of(t.table(), "loss", "val") == [4]  # the second pass was abandoned
    assert steps_of(t.table(), "loss") == list(range(1, 9))


# -- a character-level LM: [B, T, V] logits, no metrics --------------------------------------

CHAR_LM = (
    HEADER
    + """
import torch.nn.functional as F

torch.manual_seed(0)
V, T = 7, 6
ids = torch.randint(0, V, (200,))
x = torch.stack([ids[i:i + T] for i in range(0, 180, 3)])
y = torch.stack([ids[i + 1:i + T + 1] for i in range(0, 180, 3)]).t().contiguous().t()  # strided
train_loader = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 60, 10)]
val_loader = [(x[:20], y[:20])]
model = nn.Sequential(nn.Embedding(V, 16), nn.Linear(16, V))  # [B, T, V] logits


def loss_fn(logits, y):
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
accumulate = 2
amp = "bf16"
grad_clip = 1.0
epochs = 2
"""
)


def test_char_lm_logits_btv_get_token_accuracy_and_perplexity(write_recipe, tmp_path):
    path = write_recipe(CHAR_LM)
    t = train_in_process(path, tmp_path / "run", metric_every=1)
    assert t.status == "finished", t.error
    table = t.table()
    assert steps_of(table, "acc") == list(range(1, 7))  # 6 batches / 2 per step x 2 epochs
    assert steps_of(table, "acc", "val") == [3, 6] and steps_of(table, "ppl", "val") == [3, 6]
    assert all(0 <= v <= 1 for v in values_of(table, "acc", "val"))
    # Perplexity is exp(the mean cross-entropy): the val loss says the same thing.
    assert values_of(table, "ppl", "val")[-1] == pytest.approx(
        math.exp(values_of(table, "loss", "val")[-1]), rel=1e-3
    )
    assert any("token accuracy over 7 classes" in m for m in messages(t.run_dir, "info"))
    # Token inputs: tokens/s counts B x T per micro-batch, samples/s the leading dimension.
    for sps, tps in zip(
        values_of(table, "samples_per_s"), values_of(table, "tokens_per_s"), strict=True
    ):
        assert tps == pytest.approx(sps * 6, rel=1e-6)
    assert all(v is not None and v > 0 for v in values_of(table, "grad_norm"))


# -- ctx: epochs, args ------------------------------------------------------------------------

SIZED_FROM_CTX = (
    HEADER
    + """
def recipe(ctx):
    torch.manual_seed(0)
    x = torch.randn(40, 4)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=10)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    epochs = ctx.epochs or 2
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=epochs * len(loader))
    return {"model": model, "optimizer": optimizer, "loss_fn": nn.MSELoss(), "train_loader": loader,
            "scheduler": sched, "scheduler_interval": "step", "epochs": epochs}
"""
)


def test_onecycle_sized_from_ctx_epochs_runs_with_epochs_3(write_recipe, tmp_path):
    path = write_recipe(SIZED_FROM_CTX)
    t = train_in_process(path, tmp_path / "run", epochs=3)
    assert t.status == "finished", t.error
    assert steps_of(t.table(), "loss") == list(range(1, 13))
    assert t.loop.r.scheduler.total_steps == 12
    assert not any("OneCycleLR" in m for m in messages(t.run_dir))
    # Without ctx (a schedule fixed at 2 epochs): the LR holds at its end instead of a crash.
    fixed = write_recipe(SIZED_FROM_CTX.replace("ctx.epochs or 2", "2"), name="fixed.py")
    t = train_in_process(fixed, tmp_path / "fixed", epochs=3)
    assert t.status == "finished", t.error
    lrs = values_of(t.table(), "lr/0")
    assert len(lrs) == 12 and lrs[8:] == pytest.approx([lrs[7]] * 4)
    assert any("OneCycleLR" in m and "ctx.epochs" in m for m in messages(t.run_dir, "alert"))


ARGV_MODULE = linear_recipe(
    extra="""
import argparse
import dltui

p = argparse.ArgumentParser()
p.add_argument("--hidden", type=int, default=8)
opts = p.parse_args(dltui.context().args)
model = nn.Sequential(nn.Linear(4, opts.hidden), nn.Tanh(), nn.Linear(opts.hidden, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
hparams = {"hidden": opts.hidden}
"""
)


def test_module_level_recipe_reads_its_argv_through_the_cli(write_recipe, tmp_path):
    path = write_recipe(ARGV_MODULE)
    runs = tmp_path / "runs"
    res = run_cli(
        "train",
        "--headless",
        "--max-steps",
        2,
        "--runs-dir",
        runs,
        path,
        "--hidden",
        32,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    with RunReader(only_run(runs)) as r:
        meta = r.meta()
    assert meta["hparams"] == {"hidden": 32}
    assert {m["name"]: m["params"] for m in meta["model"]}["0"] == 4 * 32 + 32  # Linear(4, 32)


def test_recipe_function_gets_ctx_with_args(write_recipe):
    import dltui

    source = (
        HEADER
        + """
def recipe(ctx):
    hidden = int(ctx.args[ctx.args.index("--hidden") + 1])
    model = nn.Sequential(nn.Linear(4, hidden), nn.Linear(hidden, 1))
    return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
            "loss_fn": nn.MSELoss(), "train_loader": [(torch.zeros(2, 4), torch.zeros(2, 1))],
            "epochs": ctx.epochs or 5}
"""
    )
    r = load_recipe(write_recipe(source), dltui.Context(args=["--hidden", "32"], epochs=3))
    assert r.model[0].out_features == 32 and r.epochs == 3
    assert r.context.args == ["--hidden", "32"]


# -- dict returns: any number of scalars ------------------------------------------------------

THREE_LOSSES = linear_recipe(
    n=60,
    batch=10,
    epochs=1,
    val=20,
    extra="""
def train_step(batch, ctx):
    x, y = batch
    out = model(x)
    mse, l1 = loss_fn(out, y), (out - y).abs().mean()
    reg = 1e-3 * model.weight.pow(2).sum()
    return {"loss": mse + reg, "mse": mse, "l1": l1, "reg": reg}
""",
)


def test_dict_of_three_losses_charted_and_exported(write_recipe, tmp_path):
    path = write_recipe(THREE_LOSSES)
    runs = tmp_path / "runs"
    res = run_cli("train", "--headless", "--runs-dir", runs, path, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    run_dir = only_run(runs)
    out = tmp_path / "scalars.csv"
    res = run_cli("export", run_dir.name, "--csv", out, "--runs-dir", runs, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(out.open()))
    train = [r for r in rows if r["phase"] == "train"]
    val = [r for r in rows if r["phase"] == "val"]
    assert len(train) == 6 and len(val) == 1
    for name in ("mse", "l1", "reg"):
        assert all(r[name] not in ("", None) for r in train + val), name
    for r in train:  # the loss is the sum the step returned
        assert float(r["loss"]) == pytest.approx(float(r["mse"]) + float(r["reg"]), rel=1e-5)


# -- the step, complete: clipping, accumulation, fp16, closures ------------------------------


def test_grad_clip_is_the_clipped_sgd_step(write_recipe, tmp_path):
    source = linear_recipe(n=60, batch=10, lr=0.5, extra="grad_clip = 0.05\n")
    t = train_in_process(write_recipe(source), tmp_path / "run")
    ns = fresh(source)
    model, opt = ns["model"], ns["optimizer"]
    norms = []
    for x, y in ns["train_loader"]:
        opt.zero_grad()
        ns["loss_fn"](model(x), y).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)))
        opt.step()
    for k, v in model.state_dict().items():
        assert torch.allclose(t.loop.model.state_dict()[k], v, atol=1e-6), k
    assert values_of(t.table(), "grad_norm") == pytest.approx(norms, rel=1e-5)
    assert min(norms) > 0.05  # every step was clipped: the test can tell


@pytest.mark.parametrize("n", [40, 50])  # 50: the last window has 2 micro-batches, not 4
def test_accumulate_4_micro_batches_is_one_big_batch(write_recipe, tmp_path, n):
    small = write_recipe(linear_recipe(n=n, batch=5, extra="accumulate = 4\n"), name="small.py")
    big = write_recipe(linear_recipe(n=n, batch=20), name="big.py")
    a = train_in_process(small, tmp_path / "small")
    b = train_in_process(big, tmp_path / "big")
    assert a.loop.steps_per_epoch == b.loop.steps_per_epoch == math.ceil(n / 20)
    for k, v in b.loop.model.state_dict().items():
        assert torch.allclose(a.loop.model.state_dict()[k], v, atol=1e-6), k
    assert values_of(a.table(), "loss") == pytest.approx(values_of(b.table(), "loss"), rel=1e-5)
    assert values_of(a.table(), "samples_per_s")[0] == pytest.approx(
        20 / values_of(a.table(), "step_time")[0]
    )


def test_fp16_overflow_skips_the_step_as_an_event(write_recipe, tmp_path):
    source = linear_recipe(
        n=60,
        batch=10,
        extra="""
amp = "fp16"
# Small targets: at GradScaler's first scale (65536) no gradient overflows by itself.
train_loader = DataLoader(TensorDataset(x * 0.05, y * 0.05), batch_size=10)
calls = 0


def train_step(model, batch):
    global calls
    calls += 1
    x, y = batch
    out = model(x)
    loss = loss_fn(out.float(), y)
    return (loss * float("inf") if calls == 3 else loss), out, y
""",
    )
    t = train_in_process(write_recipe(source), tmp_path / "run")
    assert t.status == "finished", t.error
    assert steps_of(t.table(), "loss") == [1, 2, 3, 4, 5]  # 6 batches, one update skipped
    skipped = [e for e in events_of(t.run_dir, "alert") if "overflowed" in e["message"]]
    assert len(skipped) == 1 and "step 3" in skipped[0]["message"]
    assert t.loop.stepper.scaler.get_scale() < 65536.0
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert ck["scaler"]["scale"] == t.loop.stepper.scaler.get_scale()


def test_lbfgs_gets_a_closure(write_recipe, tmp_path):
    source = linear_recipe(
        n=50,
        batch=50,
        epochs=3,
        extra="""
optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
""",
    )
    t = train_in_process(write_recipe(source), tmp_path / "run")
    assert t.status == "finished", t.error
    losses = values_of(t.table(), "loss")
    assert len(losses) == 3 and losses[-1] < 0.1 * losses[0]
    assert t.loop.optimizer.state_dict()["state"][0]["func_evals"] > 3  # re-evaluated: a closure


# -- metrics never fail a run -----------------------------------------------------------------


def test_a_metric_that_raises_is_dropped_with_a_warning(write_recipe, tmp_path):
    source = linear_recipe(
        n=60,
        batch=10,
        epochs=2,
        val=20,
        extra="""
from torchmetrics.regression import MeanAbsoluteError


class Fragile(MeanAbsoluteError):
    def update(self, preds, target):
        if preds.shape[0] == 20:  # fails on validation batches only
            raise RuntimeError("shape trouble")
        super().update(preds, target)


metrics = {"fragile": Fragile(), "mae": MeanAbsoluteError()}
""",
    )
    t = train_in_process(write_recipe(source), tmp_path / "run", metric_every=1)
    assert t.status == "finished", t.error
    alerts = [m for m in messages(t.run_dir, "alert") if "'fragile'" in m]
    assert len(alerts) == 1 and "dropped" in alerts[0] and "shape trouble" in alerts[0]
    assert steps_of(t.table(), "mae", "val") == [6, 12]
    assert steps_of(t.table(), "fragile") == list(range(1, 7))  # until the first val pass


# -- any iterable of batches ------------------------------------------------------------------

STREAMS = (
    HEADER
    + """
torch.manual_seed(0)
x = torch.randn(30, 4)
y = x.sum(1, keepdim=True)


def endless():
    while True:
        for i in range(0, 30, 10):
            yield x[i:i + 10], y[i:i + 10].long()


train_loader = endless()  # a generator: no length, no end
steps_per_epoch = 4
model = nn.Linear(4, 1)
loss_fn = lambda out, t: (out - t.float()).pow(2).mean()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
epochs = 2
"""
)


def test_generator_with_steps_per_epoch(write_recipe, tmp_path):
    t = train_in_process(write_recipe(STREAMS), tmp_path / "run")
    assert t.status == "finished", t.error
    assert (t.loop.steps_per_epoch, t.loop.total_steps) == (4, 8)
    assert [e for _, e, _ in t.table()[("loss", "train")]] == [0] * 4 + [1] * 4


def test_iterable_without_length_has_unknown_progress(write_recipe, tmp_path):
    source = linear_recipe(
        n=30,
        batch=10,
        epochs=2,
        extra="""
class Batches:  # iterable again and again, but with no __len__
    def __iter__(self):
        return iter([(x[i:i + 10], y[i:i + 10]) for i in range(0, 30, 10)])


train_loader = Batches()
""",
    )
    t = train_in_process(write_recipe(source), tmp_path / "run")
    assert t.status == "finished", t.error
    assert t.loop.steps_per_epoch is None and t.loop.total_steps is None
    assert steps_of(t.table(), "loss") == list(range(1, 7))
    assert t.meta()["progress"]["total_steps"] is None
    assert any("progress and ETA are unknown" in m for m in messages(t.run_dir, "info"))


def test_a_one_shot_generator_needs_a_bound(write_recipe):
    with pytest.raises(RecipeError, match="steps_per_epoch"):
        load_recipe(write_recipe(STREAMS.replace("steps_per_epoch = 4", "")))


# -- hooks, failure labels, best --------------------------------------------------------------


def test_epoch_hooks_get_ctx(write_recipe, tmp_path):
    source = linear_recipe(
        n=40,
        batch=10,
        epochs=3,
        val=20,
        extra="""
seen = []


def on_epoch_start(ctx):
    seen.append(("start", ctx.epoch, ctx.global_step))


def on_epoch_end(ctx):
    seen.append(("end", ctx.epoch, ctx.global_step, round(ctx.last_val["loss"], 6)))
""",
    )
    t = train_in_process(write_recipe(source), tmp_path / "run")
    import sys

    seen = vars(sys.modules["dltui_recipe"])["seen"]
    val = [round(v, 6) for v in values_of(t.table(), "loss", "val")]
    assert seen == [
        x for e in range(3) for x in (("start", e, 4 * e), ("end", e, 4 * e + 4, val[e]))
    ]


def test_a_checkpoint_that_cannot_be_written_names_dltui_not_the_recipe(write_recipe, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the folder should be")
    t = train_in_process(write_recipe(linear_recipe(n=20, batch=10)), run_dir)
    assert t.status == "failed"
    assert isinstance(t.error, EngineError) and "checkpoint" in t.error.part
    assert isinstance(t.error.__cause__, OSError)


def test_final_validation_of_a_max_steps_run_counts_for_best(write_recipe, tmp_path):
    t = train_in_process(
        write_recipe(linear_recipe(n=100, batch=10, epochs=5, val=20)),
        tmp_path / "run",
        max_steps=7,
    )
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)
    assert best["step"] == 7 and steps_of(t.table(), "loss", "val") == [7]
    assert best["best_val_loss"] == pytest.approx(values_of(t.table(), "loss", "val")[0])
