"""An LR change survives the scheduler (DESIGN.md, "Control"): `lr *0.5` halves the whole curve.

In-process for precision: two identical optimizer + scheduler pairs are stepped side by side,
`commands.apply_lr` halves one of them part-way, and from then on every learning rate of the
changed pair must be exactly half the reference's (all groups, or only the chosen group). One
end-to-end check runs a real engine with a per-step StepLR.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as S

from dltui.engine.commands import CommandError, apply_lr
from dltui.run import wire

sys.path.append(str(Path(__file__).parent / "recipes"))
from ctl_harness import Engine, prestart, stored_points, wait_for  # noqa: E402

LRS = (0.1, 0.02)  # two param groups with different rates
STEPS = 40


class LoopLike:
    """What apply_lr reads from the engine's Loop: optimizers and schedulers by name (the run's
    own first), optimizer, r.scheduler, step, lrs()."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        self.optimizer = optimizer
        self.optimizers = {"main": optimizer}
        self.schedulers = {"main": scheduler} if scheduler is not None else {}
        self.r = SimpleNamespace(scheduler=scheduler)
        self.step = 0

    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]


def plateau_metric(k: int) -> float:
    """Improves for 5 steps, then stalls: ReduceLROnPlateau reduces every `patience` + 1 steps."""
    return 1.0 - 0.1 * min(k, 5)


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "StepLR": lambda o: S.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[4, 9, 15, 22], gamma=0.3),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=12),  # runs past T_max: restarts
    "CosineAnnealingLR-eta_min": lambda o: S.CosineAnnealingLR(o, T_max=12, eta_min=1e-3),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=[0.5, 0.1], total_steps=STEPS + 1),
    "LambdaLR": lambda o: S.LambdaLR(o, lr_lambda=lambda e: 0.9**e),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(
        o, factor=0.5, patience=1, min_lr=[0.004, 0.001]
    ),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.9),
    "CyclicLR": lambda o: S.CyclicLR(
        o, base_lr=[0.01, 0.002], max_lr=[0.1, 0.02], step_size_up=5, cycle_momentum=False
    ),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=7, eta_min=1e-3),
    "SequentialLR": lambda o: S.SequentialLR(
        o,
        [S.LinearLR(o, start_factor=0.1, total_iters=5), S.CosineAnnealingLR(o, T_max=20)],
        milestones=[5],
    ),
}
# A group-only change cannot scale a minimum shared by all groups (eta_min is one number).
SHARED_MINIMUM = {"CosineAnnealingLR-eta_min", "CosineAnnealingWarmRestarts"}


def make(name: str) -> tuple[torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    a, b = nn.Linear(3, 3), nn.Linear(3, 2)
    opt = torch.optim.SGD(
        [{"params": a.parameters(), "lr": LRS[0]}, {"params": b.parameters(), "lr": LRS[1]}]
    )
    return opt, SCHEDULERS[name](opt)


def advance(opt: torch.optim.Optimizer, sched: Any, k: int) -> None:
    opt.step()  # no gradients: changes nothing, but keeps the scheduler's call-order check quiet
    if isinstance(sched, S.ReduceLROnPlateau):
        sched.step(plateau_metric(k))
    else:
        sched.step()


def lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [float(g["lr"]) for g in opt.param_groups]


@pytest.mark.parametrize("group", [None, 1], ids=["all-groups", "group-1"])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_halving_the_lr_halves_the_rest_of_the_schedule(name, group):
    if group is not None and name in SHARED_MINIMUM:
        pytest.skip("eta_min is shared by all groups; a one-group change cannot scale it")
    ref_opt, ref = make(name)
    opt, sched = make(name)
    loop = LoopLike(opt, sched)
    change_at = 7
    for k in range(1, change_at + 1):
        advance(ref_opt, ref, k)
        advance(opt, sched, k)
    assert lrs(opt) == lrs(ref_opt)

    out = apply_lr(loop, "*0.5", group)
    scaled = [0, 1] if group is None else [group]
    kept = [i for i in range(2) if i not in scaled]
    assert out["before"] == lrs(ref_opt)
    for i in scaled:
        assert out["after"][i] == pytest.approx(0.5 * lrs(ref_opt)[i], rel=1e-12)
    for i in kept:
        assert out["after"][i] == lrs(ref_opt)[i]

    changes = 0
    for k in range(change_at + 1, STEPS + 1):
        before = lrs(ref_opt)
        advance(ref_opt, ref, k)
        advance(opt, sched, k)
        want, got = lrs(ref_opt), lrs(opt)
        changes += want != before
        for i in scaled:
            assert got[i] == pytest.approx(0.5 * want[i], rel=1e-9), (
                f"{name}, group {i}, step {k}: lr {got[i]:.6g}, want half of {want[i]:.6g}"
            )
        for i in kept:
            assert got[i] == pytest.approx(want[i], rel=1e-12), (
                f"{name}: group {i} changed at step {k}"
            )
        if hasattr(ref, "get_last_lr") and not isinstance(ref, S.ReduceLROnPlateau):
            for i in scaled:  # what the scheduler reports agrees with the optimizer
                assert sched.get_last_lr()[i] == pytest.approx(got[i], rel=1e-12)
    assert changes >= 2, f"{name} never moved the reference LR after the change: a vacuous test"


@pytest.mark.parametrize("spec,factor", [("*0.5", 0.5), ("/4", 0.25), ("x2", 2.0)])
def test_factors_and_divisors_scale_a_closed_form_schedule(spec, factor):
    ref_opt, ref = make("OneCycleLR")
    opt, sched = make("OneCycleLR")
    for k in range(1, 6):
        advance(ref_opt, ref, k)
        advance(opt, sched, k)
    apply_lr(LoopLike(opt, sched), spec, None)
    for k in range(6, STEPS + 1):
        advance(ref_opt, ref, k)
        advance(opt, sched, k)
        assert lrs(opt) == pytest.approx([factor * x for x in lrs(ref_opt)], rel=1e-9)


def test_an_absolute_lr_rescales_the_curve_by_new_over_old():
    ref_opt, ref = make("LambdaLR")
    opt, sched = make("LambdaLR")
    for k in range(1, 4):
        advance(ref_opt, ref, k)
        advance(opt, sched, k)
    old = lrs(opt)[0]
    apply_lr(LoopLike(opt, sched), "0.01", 0)
    assert lrs(opt)[0] == 0.01
    for k in range(4, STEPS + 1):
        advance(ref_opt, ref, k)
        advance(opt, sched, k)
        assert lrs(opt)[0] == pytest.approx(lrs(ref_opt)[0] * 0.01 / old, rel=1e-9)
        assert lrs(opt)[1] == lrs(ref_opt)[1]


@pytest.mark.parametrize("spec", ["0", "-1", "nan", "inf", "abc", "", "*0", "/0"])
def test_bad_values_change_nothing_in_the_optimizer_or_scheduler(spec):
    opt, sched = make("OneCycleLR")
    advance(opt, sched, 1)
    before = (
        [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups],
        sched.state_dict(),
    )
    with pytest.raises(CommandError):
        apply_lr(LoopLike(opt, sched), spec, None)
    after = (
        [dict((k, v) for k, v in g.items() if k != "params") for g in opt.param_groups],
        sched.state_dict(),
    )
    assert after == before


@pytest.fixture(scope="module", autouse=True)
def pool(request, tmp_path_factory):
    """The end-to-end engine, started with the module so it loads while the in-process tests run."""
    runs = tmp_path_factory.mktemp("lr") / "runs"
    engines = prestart(request, {"steplr": lambda: Engine("ctl_steplr.py", runs / "steplr")})
    yield engines
    for eng in engines.values():
        eng.kill()


@pytest.fixture
def steplr(pool) -> Engine:
    return pool["steplr"].wait_up()


def test_end_to_end_per_step_steplr_keeps_the_halved_curve(steplr):
    """A real engine, StepLR(step_size=5, gamma=0.8) stepped every step: lr/0 after `lr *0.5`."""
    base, size, gamma = 0.1, 5, 0.8  # as in tests/recipes/ctl_steplr.py

    def scheduled(done: int) -> float:  # the LR after `done` scheduler steps
        return base * gamma ** (done // size)

    eng = steplr
    try:
        eng.wait_step(7)
        st = eng.client.call("pause").state
        s = st["step"]
        assert st["lrs"][0] == pytest.approx(scheduled(s), rel=1e-9)
        r = eng.client.call("lr", value="*0.5")
        assert r.state["lrs"][0] == pytest.approx(0.5 * scheduled(s), rel=1e-9)
        n = 2 * size + 2  # at least two scheduler decays after the change
        eng.client.call("step", n=n)
        wait_for(lambda: eng.state()["step"] == s + n, 30, f"{n} steps")
        pts = wait_for(
            lambda: (p := stored_points(eng.run_dir, wire.lr_name(0))) and max(p) >= s + n and p,
            10,
            "the lr scalars",
        )
        # lr/0 at step t is the rate step t used: the one after t - 1 scheduler steps.
        for t in range(1, s + 1):
            assert pts[t] == pytest.approx(scheduled(t - 1), rel=1e-9), (
                f"step {t} before the change"
            )
        for t in range(s + 1, s + n + 1):
            assert pts[t] == pytest.approx(0.5 * scheduled(t - 1), rel=1e-9), (
                f"step {t}: lr {pts[t]:.6g}, the halved schedule says {0.5 * scheduled(t - 1):.6g}"
            )
        assert eng.state()["lrs"][0] == pytest.approx(0.5 * scheduled(s + n), rel=1e-9)
        assert len({round(math.log(pts[t]), 9) for t in range(s + 1, s + n + 1)}) >= 2
    finally:
        eng.kill()


def test_group_0_of_a_one_group_optimizer_is_the_same_as_all_groups():
    def one_group() -> tuple[torch.optim.Optimizer, Any]:
        torch.manual_seed(0)
        opt = torch.optim.SGD(nn.Linear(3, 3).parameters(), lr=0.1)
        return opt, S.CosineAnnealingLR(opt, T_max=12, eta_min=1e-2)

    ref_opt, ref = one_group()
    opt, sched = one_group()
    for k in range(1, 4):
        advance(ref_opt, ref, k)
        advance(opt, sched, k)
    apply_lr(LoopLike(opt, sched), "*0.5", 0)
    for k in range(4, 20):
        advance(ref_opt, ref, k)
        advance(opt, sched, k)
        assert lrs(opt)[0] == pytest.approx(0.5 * lrs(ref_opt)[0], rel=1e-9), f"step {k}"


# -- issue 13, items 1-2: no accepted LR change can make the run overflow or go NaN later ---------


def _snapshot(opt: torch.optim.Optimizer, sched: Any) -> tuple:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return groups, sched.state_dict()


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_review_lr_cases_are_refused_or_harmless_and_the_schedule_stays_finite(name):
    """The review's inputs: 1e308 and 1e39 (past float32), 1e-320 then 0.05 (a factor that
    overflows). Each refused one changes nothing; afterwards every LR the run uses is finite."""
    opt, sched = make(name)
    loop = LoopLike(opt, sched)
    for k in range(1, 4):
        advance(opt, sched, k)
    for spec in ("1e308", "1e39", "1e-320"):
        before = _snapshot(opt, sched)
        with pytest.raises(CommandError, match="Nothing was changed"):
            apply_lr(loop, spec, None)
        assert _snapshot(opt, sched) == before, f"{name}: {spec} changed something"
    apply_lr(loop, "0.05", None)
    for k in range(4, STEPS + 1):
        advance(opt, sched, k)
        for i, lr in enumerate(lrs(opt)):
            assert math.isfinite(lr) and 0 <= lr <= 3.4e38, f"{name} step {k} group {i}: lr {lr}"
        for attr in ("base_lrs", "min_lrs", "max_lrs", "eta_min"):
            val = getattr(sched, attr, None)
            for x in val if isinstance(val, list) else [val] if val is not None else []:
                if isinstance(x, float):
                    assert math.isfinite(x), f"{name}: {attr} became {x}"


def test_a_rate_the_scheduler_keeps_past_float32_refuses_the_change_atomically():
    """OneCycleLR starts at max_lr / 25: an LR of 3e38 is in range now, but max_lr would be
    7.5e39 and the schedule would overflow a few steps later. Refused; nothing changes."""
    opt, sched = make("OneCycleLR")
    advance(opt, sched, 1)
    before = _snapshot(opt, sched)
    with pytest.raises(CommandError, match="max_lr"):
        apply_lr(LoopLike(opt, sched), "3e38", None)
    assert _snapshot(opt, sched) == before


def test_a_shared_eta_min_that_would_vanish_refuses_the_change():
    opt, sched = make("CosineAnnealingLR-eta_min")  # eta_min 1e-3, lrs 0.1 / 0.02
    advance(opt, sched, 1)
    before = _snapshot(opt, sched)
    with pytest.raises(CommandError, match="eta_min"):
        apply_lr(LoopLike(opt, sched), "*2e-36", None)  # lrs 2e-37 ok, eta_min 2e-39 is not
    assert _snapshot(opt, sched) == before


def test_half_precision_parameters_bound_the_lr_by_their_own_range():
    torch.manual_seed(0)
    model = nn.Linear(3, 3).half()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = LoopLike(opt, None)
    with pytest.raises(CommandError, match="6.6e\\+04|65504|6.5e\\+04"):
        apply_lr(loop, "1e5", None)  # fp16 overflows past 65504
    assert lrs(opt) == [0.1]
    apply_lr(loop, "1e-5", None)  # a small LR is fine in fp16 (a subnormal step)
    assert lrs(opt) == [1e-5]
