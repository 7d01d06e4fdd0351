"""The per-step path's shortcuts keep their meaning (issue: the hot path costs almost nothing).

The gate is one attribute read when nothing is pending, observers' no-op hooks are not called,
batches already on the device are not moved again, the model's output is detached only when
read. Each shortcut is checked against what it must not lose: a command, a stop, a pause set
from another thread, an observer that does implement a hook.
"""

from __future__ import annotations

import json
import threading

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dltui.engine import loop as loop_mod
from dltui.engine.gate import Gate
from dltui.engine.loop import Callback, Loop, Settings, _needs_move, hooks_of
from dltui.engine.recipe import Recipe


class Boundary:
    """The least a gate needs of a driver."""

    step = 0

    def idle(self) -> None: ...

    def eval_pass(self) -> dict:
        return {}


def script_run(path, argv, callbacks, store, probe, gate=None):
    """A ScriptRun of the script at `path`, wired as the engine wires one (its dltui session
    attached), not started."""
    import dltui
    from dltui.engine import script as script_mod

    session = script_mod.Session(dltui.Context(mode="script"))
    run = script_mod.ScriptRun(
        path,
        argv,
        callbacks=callbacks,
        gate=gate if gate is not None else Gate(),
        session=session,
        store=store,
        probe=probe,
    )
    session.attach(run, probe)
    return run


def test_gate_is_busy_exactly_while_it_has_work():
    gate, drv = Gate(), Boundary()
    assert gate.busy is False
    fut = gate.submit(lambda loop: "done")
    assert gate.busy is True
    gate.boundary(drv)
    assert fut.result(timeout=1) == "done" and gate.busy is False

    t = threading.Thread(target=lambda: setattr(gate, "paused", True))  # e.g. a rank's agent
    t.start()
    t.join()
    assert gate.busy is True
    gate.step_target = 3  # `step 3` while paused: busy until the steps are run and it holds again
    drv.step = 2
    gate.boundary(drv)
    assert gate.busy is True
    gate.paused, gate.step_target = False, None
    gate.boundary(drv)
    assert gate.busy is False

    gate.mode = "eval"
    assert gate.busy is True
    gate.mode = "train"
    gate.boundary(drv)
    assert gate.busy is False

    gate.request_stop("user")
    assert gate.busy is True
    gate.boundary(drv)
    assert gate.busy is True and gate.stop_reason == "user"  # a stop stays: the loop ends


def test_hooks_of_leaves_out_callbacks_noops_and_follows_the_list():
    calls = []

    class Counts(Callback):
        def on_step_end(self, loop, out):
            calls.append("class")

    class Plain:  # not a Callback at all: every hook it has is called
        def on_step_end(self, loop, out):
            calls.append("plain")

    quiet, own = Callback(), Callback()
    own.on_step_end = lambda loop, out: calls.append("instance")
    cbs, cache = [quiet, Counts(), own], {}
    found = hooks_of(cbs, "on_step_end", cache)
    assert [cb for cb, _ in found] == [cbs[1], own]
    for _, fn in found:
        fn(None, None)
    assert calls == ["class", "instance"]
    cbs.append(Plain())
    assert len(hooks_of(cbs, "on_step_end", cache)) == 3  # the cache follows a longer list
    assert hooks_of(cbs, "on_epoch_end", cache) == []


def test_needs_move_looks_at_every_tensor_of_the_batch():
    cpu = torch.device("cpu")
    meta = torch.empty(2, device="meta")
    assert _needs_move((torch.zeros(2), torch.zeros(2)), cpu) is False
    assert _needs_move((torch.zeros(2), meta), cpu) is True
    assert _needs_move({"x": torch.zeros(2), "y": [meta]}, cpu) is True
    assert _needs_move(["text", 3], cpu) is False


def tiny_recipe(model: nn.Module, loss_fn, loader: DataLoader, epochs: int, **kw) -> Recipe:
    """A recipe of `model` trained by SGD, built in this process (no file)."""
    return Recipe(
        path=loop_mod.Path("hot.py"),
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=loss_fn,
        train_loader=loader,
        epochs=epochs,
        **kw,
    )


def test_a_run_on_the_cpu_moves_no_batch_and_detaches_the_output_when_read(monkeypatch):
    moved = []
    real = loop_mod.to_device
    monkeypatch.setattr(loop_mod, "to_device", lambda x, d: moved.append(1) or real(x, d))
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    recipe = tiny_recipe(nn.Linear(4, 2), nn.CrossEntropyLoss(), DataLoader(data, batch_size=4), 2)
    steps = []

    class Seen(Callback):
        def on_step_end(self, loop, out):
            steps.append((loop.step, out.loss.requires_grad, float(out.loss)))

    gate = Gate()
    loop = Loop(recipe, Settings(epochs=2, device="cpu", checkpoint_dir=None), [Seen()], gate)
    gate.submit(lambda lp: lp.optimizer.param_groups[0].__setitem__("lr", 0.05))
    status, error = loop.run()
    assert (status, error) == ("finished", None)
    assert [s for s, _, _ in steps] == list(range(1, 9))
    assert not any(grad for _, grad, _ in steps)
    assert moved == []  # CPU batches for a CPU run: not moved at each step
    assert loop.optimizer.param_groups[0]["lr"] == 0.05  # the command landed (before step 1)
    out = loop.last_output
    assert isinstance(out, torch.Tensor) and out.shape == (4, 2) and not out.requires_grad


def test_interval_parts_are_looked_at_only_at_their_steps(monkeypatch, tmp_path):
    """After the warm-up the probe's interval code runs at the steps where stats or histograms
    are due, not at every step: a run whose steps have no target (a script's, or a train_step
    returning only a loss) has no train metric to keep an interval of 1 for."""
    from dltui.engine.probe import WARMUP_STEPS, Probe
    from dltui.engine.store import RunStore

    calls = []
    real = Probe._at_interval
    monkeypatch.setattr(
        Probe,
        "_at_interval",
        lambda self, loop, out, step, x: calls.append(step) or real(self, loop, out, step, x),
    )
    data = TensorDataset(torch.randn(400, 4), torch.randn(400, 1))
    recipe = tiny_recipe(
        nn.Linear(4, 1),
        nn.MSELoss(),
        DataLoader(data, batch_size=2),
        1,
        train_step=lambda model, batch: nn.functional.mse_loss(model(batch[0]), batch[1]),
        train_form="model",
    )
    store = RunStore(tmp_path / "run.sqlite")
    store.start()
    probe = Probe(store, stats_every=50, hist_every=100)
    loop = Loop(recipe, Settings(epochs=1, device="cpu", checkpoint_dir=None), [probe], Gate())
    assert loop.run() == ("finished", None)
    store.close("finished")
    assert calls == list(range(1, WARMUP_STEPS + 1)) + [50, 100, 150, 200]


class Record(Callback):
    def __init__(self, seen: list) -> None:
        self.seen = seen

    def on_step_end(self, loop, out):
        scalars = {k: float(v) for k, v in out.scalars.items() if k != "tokens_per_s"}
        self.seen.append(
            (
                loop.step,
                float(out.loss),
                out.batch_size,
                out.lrs,
                scalars,
                "tokens_per_s" in out.scalars,
                out.data_time <= out.step_time,
            )
        )


def _run_both_ways(make) -> list[list[tuple]]:
    """The same recipe (from make(), seeded alike) trained through _plain_window and through the
    general _window: each step's record, and the final weights."""
    runs = []
    for plain in (True, False):
        torch.manual_seed(0)
        recipe = make()
        seen: list = []
        loop = Loop(recipe, Settings(device="cpu", checkpoint_dir=None), [Record(seen)], Gate())
        assert loop._plain is True  # the common case: the short path is taken
        loop._plain = plain
        assert loop.run() == ("finished", None)
        seen.append(tuple(p.detach().clone() for p in recipe.model.parameters()))
        runs.append(seen)
    return runs


def _same(a: list, b: list) -> None:
    assert a[:-1] == b[:-1]
    assert all(torch.equal(x, y) for x, y in zip(a[-1], b[-1], strict=True))


def test_the_short_step_path_trains_and_records_exactly_as_the_general_one():
    """Clipping, two optimizers (one per-step scheduled, two param groups), a last short batch."""

    def make() -> Recipe:
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        data = TensorDataset(torch.randn(30, 6), torch.randint(0, 3, (30,)))
        first = torch.optim.SGD(
            [{"params": model[0].parameters()}, {"params": [], "lr": 0.3}], lr=0.1, momentum=0.9
        )
        second = torch.optim.Adam(model[2].parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(first, step_size=2, gamma=0.5)
        return tiny_recipe(
            model,
            nn.CrossEntropyLoss(),
            DataLoader(data, batch_size=8),
            2,
            optimizers={"main": first, "head": second},
            schedulers={"main": sched},
            scheduler_interval="step",
            grad_clip=0.5,
        )

    plain, general = _run_both_ways(make)
    assert len(plain) == 9 and plain[3][2] == 6  # 4 steps an epoch, the last of 6 samples
    assert {"grad_norm", "grad_norm/head", "lr/head/0"} <= set(plain[0][4])
    assert plain[2][3] == [0.05, 0.15]  # the LRs step 3 trained with (StepLR halved them)
    _same(plain, general)


def test_the_short_step_path_counts_tokens_as_the_general_one():
    def make() -> Recipe:
        model = nn.Sequential(nn.Embedding(11, 4), nn.Flatten(), nn.Linear(4 * 5, 11))
        data = TensorDataset(torch.randint(0, 11, (12, 5)), torch.randint(0, 11, (12,)))
        return tiny_recipe(model, nn.CrossEntropyLoss(), DataLoader(data, batch_size=4), 1)

    plain, general = _run_both_ways(make)
    assert len(plain) == 4 and all(s[5] for s in plain[:-1])  # tokens/s at every step
    _same(plain, general)


ACCUMULATING_SCRIPT = """
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(140):
    for micro in range(3):  # 3 micro-batches of 5 samples, one backward each
        x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
        loss = nn.functional.cross_entropy(model(x), y) / 3
        loss.backward()
    opt.step()
    opt.zero_grad()
"""


def test_script_mode_samples_its_input_hook_and_keeps_the_batch_size(tmp_path):
    """The forward pre-hook is on for the warm-up, one step in INPUT_EVERY and while the gate has
    work (a paused run stepping sees each step's input); between samples every step still counts
    3 micro-batches of 5 samples."""
    from dltui.engine import script as script_mod
    from dltui.engine.probe import Probe
    from dltui.engine.store import RunStore

    assert script_mod.INPUT_EVERY < 140  # the script's 140 steps cross a sampled one
    path = tmp_path / "acc.py"
    path.write_text(ACCUMULATING_SCRIPT)
    store = RunStore(tmp_path / "run.sqlite")
    store.start()
    probe = Probe(store)
    seen: list[tuple[int, int, bool]] = []
    gate = Gate()

    class Watch(Callback):
        def on_step_end(self, loop, out):
            seen.append((loop.step, out.batch_size, loop._fwd_hook is not None))
            if loop.step == 40:  # paused, stepping to 42: the hook is on for the steps after
                gate.paused, gate.step_target = True, 42
            elif loop.step == 42:
                gate.paused, gate.step_target = False, None

    run = script_run(path, [str(path)], [probe, Watch()], store, probe, gate)
    calls = []
    real = run._forward_pre
    run._forward_pre = lambda m, a: calls.append(run.step) or real(m, a)
    assert run.run()[0] == "finished"
    store.close("finished")
    # (the first step's batch is not seen: the model is found at its optimizer step)
    assert [b for _, b, _ in seen] == [1] + [15] * 139
    every = script_mod.INPUT_EVERY
    sampled = {s for s in range(2, 141) if s <= script_mod.INPUT_WARMUP or (s - 1) % every == 0}
    assert {s + 1 for s in calls} == sampled | {42, 43}  # (calls: the step done so far)
    assert len(calls) == 3 * len(sampled | {42, 43})
    assert run._fwd_hook is None and not run._fwd_model._forward_pre_hooks  # removed at the end


CHANGING_ACCUMULATION_SCRIPT = """
import json, sys
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
printed = []
for step in range(12):
    k = 1 if step < 4 or step >= 8 else 4  # one batch a step, then 4 micro-batches, then one
    losses = []
    for micro in range(k):
        x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
        loss = nn.functional.cross_entropy(model(x), y)
        losses.append(loss.item())
        (loss / k if k > 1 else loss).backward()
    printed.append(sum(losses) / k)
    opt.step()
    opt.zero_grad()
json.dump(printed, open(sys.argv[1], "w"))
"""


def test_script_mode_looks_for_the_accumulation_divisor_only_where_it_can_be(tmp_path, monkeypatch):
    """Reading a loss's grad_fn is not free, so a step's first backward is looked at only while
    the steps before accumulated; a step that starts accumulating takes its first micro-batch
    to be divided like the rest. Either way the recorded loss is the undivided mean, as printed."""
    from dltui.engine import script as script_mod
    from dltui.engine.probe import Probe
    from dltui.engine.store import RunStore

    path = tmp_path / "changing.py"
    path.write_text(CHANGING_ACCUMULATION_SCRIPT)
    store = RunStore(tmp_path / "run.sqlite")
    store.start()
    probe = Probe(store)
    looked: list[int] = []
    real_divisor = script_mod._divisor
    monkeypatch.setattr(
        script_mod, "_divisor", lambda t: looked.append(run.step) or real_divisor(t)
    )
    recorded: dict[int, float] = {}

    class Watch(Callback):
        def on_step_end(self, loop, out):
            recorded[loop.step] = out.loss.item()

    out = tmp_path / "printed.json"
    run = script_run(path, [str(path), str(out)], [probe, Watch()], store, probe)
    assert run.run()[0] == "finished"
    store.close("finished")
    printed = json.loads(out.read_text())
    assert len(printed) == 12 and len(recorded) == 12
    for step in range(1, 13):
        assert abs(recorded[step] - printed[step - 1]) < 1e-5, (step, recorded, printed)
    # looked at: the first step's backward (nothing known yet), the later micro-batches of
    # step 5 (steps 6-8 in full), and the first backward of step 9 (the steps before accumulated)
    per_step = {s + 1: looked.count(s) for s in set(looked)}
    assert per_step == {1: 1, 5: 3, 6: 4, 7: 4, 8: 4, 9: 1}, per_step


PLAIN_SCRIPT = """
import time
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(300):
    x = torch.randn(8, 4)
    loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step in (100, 200):
        time.sleep(0.15)  # the printer's interval passes between two flushes
"""


def test_script_mode_feeds_the_probe_without_a_step_output_and_prints_at_flushes(
    tmp_path, monkeypatch
):
    """With only the probe and the headless printer watching (as `dltui train` runs a script),
    a plain step builds no StepOutput: the probe takes the step's values directly and the
    printer looks at the clock after the probe's flushes. Only steps where an interval part may
    be due go the long way. Every step is still recorded, each with its own loss, and the
    status lines still come."""
    import io
    import sqlite3

    from dltui.engine import script as script_mod
    from dltui.engine.headless import HeadlessPrinter
    from dltui.engine.probe import Probe
    from dltui.engine.store import RunStore

    built: list[int] = []
    real = script_mod.StepOutput
    monkeypatch.setattr(script_mod, "StepOutput", lambda *a: built.append(1) or real(*a))
    path = tmp_path / "plain.py"
    path.write_text(PLAIN_SCRIPT)
    store = RunStore(tmp_path / "run.sqlite")
    store.start()
    probe = Probe(store)
    out = io.StringIO()
    printer = HeadlessPrinter(probe, tmp_path, every=0.1, out=out)
    run = script_run(path, [str(path)], [probe, printer], store, probe)
    assert run.run()[0] == "finished"
    probe.on_run_end(run, "finished", None)
    store.close("finished")
    # The warm-up's steps and the few where an interval part is due build one; the rest none.
    assert 0 < len(built) < 60, len(built)
    db = sqlite3.connect(tmp_path / "run.sqlite")
    losses = db.execute(
        "SELECT s.step, s.value FROM scalars s JOIN series n ON n.id = s.series "
        "WHERE n.name = 'loss' ORDER BY s.step"
    ).fetchall()
    assert [s for s, _ in losses] == list(range(1, 301))
    assert len({v for _, v in losses}) > 250  # each step's own loss, not a repeated one
    lines = [ln for ln in out.getvalue().splitlines() if " step " in ln and "loss" in ln]
    assert len(lines) >= 2, out.getvalue()  # at least one after each pause
