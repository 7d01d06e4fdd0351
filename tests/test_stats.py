"""Layer statistics: exact against a plain per-tensor reference, memory-neutral, None gradients
skipped, one host read for every histogram, and the probe's alerts on non-finite gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dltui.engine import stats
from dltui.engine.stats import HIST_BINS, LayerStats, flat_view, strided_sample
from dltui.run import wire

COL = {c: i for i, c in enumerate(wire.LAYER_STAT_COLUMNS)}


def reference(before: torch.Tensor, after: torch.Tensor, grad: torch.Tensor | None) -> dict:
    """The statistics computed the obvious way, one tensor at a time, in float64."""
    w, out = before.double(), {}
    out.update(w_norm=w.norm(), w_mean=w.mean(), w_std=w.std(), w_maxabs=w.abs().max())
    if grad is not None:
        g = grad.double()
        out.update(g_norm=g.norm(), g_mean=g.mean(), g_std=g.std(), g_maxabs=g.abs().max())
        out["zero_frac"] = (g == 0).double().mean()
    out["update_ratio"] = (after.double() - w).norm() / w.norm()
    return {k: float(v) for k, v in out.items()}


def model_with_unused() -> nn.Module:
    torch.manual_seed(0)
    m = nn.ModuleDict({"a": nn.Linear(20, 30), "unused": nn.Linear(5, 5), "b": nn.Linear(30, 4)})
    return m


def train_step(m: nn.Module, opt: torch.optim.Optimizer, stats: LayerStats) -> torch.Tensor:
    x = torch.randn(16, 20, dtype=m["a"].weight.dtype)
    loss = m["b"](torch.relu(m["a"](x))).square().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    m["a"].bias.grad[:7] = 0.0  # some exact zeros to count
    stats.before_step()
    opt.step()
    return torch.tensor(stats.read(stats.after_step()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64: model.double()
def test_rows_match_a_per_tensor_reference_and_none_gradients_are_nan(dtype):
    m = model_with_unused().to(dtype)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    ls = LayerStats(m)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    grads: dict[str, torch.Tensor | None] = {}

    real_step = opt.step

    def step_and_keep(*a, **k):
        grads.update(
            {n: None if p.grad is None else p.grad.clone() for n, p in m.named_parameters()}
        )
        return real_step(*a, **k)

    opt.step = step_and_keep
    rows = train_step(m, opt, ls)
    assert rows.shape == (6, len(wire.LAYER_STAT_COLUMNS))
    for i, (name, p) in enumerate(m.named_parameters()):
        ref = reference(before[name], p.detach(), grads[name])
        row = rows[i].tolist()
        for col, want in ref.items():
            assert row[COL[col]] == pytest.approx(want, rel=1e-4, abs=1e-7), (name, col)
        if grads[name] is None:  # the unused layer: gradient columns NaN, not zeros
            assert name.startswith("unused")
            for col in ("g_norm", "g_mean", "g_std", "g_maxabs", "zero_frac"):
                assert math.isnan(row[COL[col]])
        assert row[COL["nonfinite"]] == 0
    assert rows[1, COL["zero_frac"]].item() == pytest.approx(7 / 30)


def test_nonfinite_counts_a_nan_gradient_but_not_a_missing_one():
    m = model_with_unused()
    ls = LayerStats(m)
    m["a"].weight.grad = torch.full_like(m["a"].weight, math.nan)
    ls.before_step()
    rows = torch.tensor(ls.read(ls.after_step()))
    nonfinite = rows[:, COL["nonfinite"]].tolist()
    assert nonfinite == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_a_zero_element_parameter_gets_a_nan_row_and_the_others_are_exact():
    """A parameter with no elements (a 0-wide layer: a rank-0 adapter, a pruned head) has
    nothing to measure: its row is NaN where a number needs elements, no histogram, and the
    other rows are unchanged. It used to stop the stats: aminmax refuses an empty tensor."""
    torch.manual_seed(0)
    m = nn.ModuleDict({"a": nn.Linear(20, 30), "none": nn.Linear(30, 0), "b": nn.Linear(30, 4)})
    ls = LayerStats(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    h = torch.relu(m["a"](torch.randn(16, 20)))
    loss = m["b"](h).square().mean() + m["none"](h).sum()
    loss.backward()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    ls.before_step()
    opt.step()
    rows = dict(zip(ls.names, ls.read(ls.after_step()), strict=True))
    empty = rows["none.weight"]
    assert all(math.isnan(empty[COL[c]]) for c in ("w_norm", "g_std", "zero_frac", "update_ratio"))
    assert empty[COL["nonfinite"]] == 0.0
    for name in ("a.weight", "b.bias"):
        p = dict(m.named_parameters())[name]
        ref = reference(before[name], p.detach(), p.grad)
        for col, want in ref.items():
            assert rows[name][COL[col]] == pytest.approx(want, rel=1e-4, abs=1e-6), (name, col)
    assert {n for n, _, _, _, _ in ls.histograms()} == {"a.weight", "a.bias", "b.weight", "b.bias"}


def test_no_full_size_copy_of_weights_or_gradients(monkeypatch):
    """A 16M-element weight (64 MB): the stats hold a bounded sample, never a copy, and a
    parameter without a gradient gets no zeros_like."""
    big = nn.Linear(4096, 4096, bias=False)
    small = nn.Linear(8, 8)
    m = nn.Sequential(big, small)
    big.weight.grad = torch.randn_like(big.weight)
    ls = LayerStats(m)

    def no_zeros_like(*a, **k):
        raise AssertionError("zeros_like would materialise a full-size gradient")

    monkeypatch.setattr(torch, "zeros_like", no_zeros_like)
    param_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
    ls.before_step()
    kept = [sample for *_, sample in ls._pending]  # each group's weight sample
    assert sum(t.numel() * t.element_size() for t in kept) <= 4 * stats.SAMPLE * 3
    big.weight.data.add_(0.01)
    rows = torch.tensor(ls.read(ls.after_step()))
    assert ls.extra_bytes_bound() <= 0.01 * param_bytes + 64 * 2**20
    # the sampled update ratio of a uniform shift is close to the exact one
    exact = 0.01 * math.sqrt(big.weight.numel()) / float((big.weight.detach() - 0.01).norm())
    assert rows[0, COL["update_ratio"]].item() == pytest.approx(exact, rel=0.05)
    assert math.isnan(rows[1, COL["g_norm"]].item())  # small has no gradient


def test_sample_budget_shrinks_with_many_tensors():
    m = nn.ParameterList([nn.Parameter(torch.randn(20_000)) for _ in range(600)])
    ls = LayerStats(m)
    (g,) = ls.groups()
    assert g.per_sample * 600 <= stats.TOTAL_SAMPLE and sum(g.sizes) <= stats.TOTAL_SAMPLE


def test_channels_last_weight_is_sampled_without_a_copy():
    w = torch.randn(64, 32, 3, 3).to(memory_format=torch.channels_last)
    assert not w.is_contiguous()
    flat = flat_view(w)
    assert flat.data_ptr() == w.data_ptr() and flat.numel() == w.numel()
    assert sorted(flat.tolist()) == sorted(w.reshape(-1).tolist())
    s = strided_sample(w, 1000)
    assert s.numel() <= 1000 and s.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()


def test_histograms_match_histc_and_read_the_host_twice(monkeypatch):
    m = model_with_unused()
    ls = LayerStats(m)
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    m["unused"].bias.grad = torch.full((5,), 3.0)  # one value: a unit-wide range around it
    reads = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or real(self))
    hists = ls.histograms()  # all finite: every sample binned at once
    assert len(reads) == 2  # every range at once, every count at once: not per tensor
    assert_histograms_match_histc(m, hists)
    m["b"].bias.grad = torch.tensor([1.0, math.inf, 2.0, math.nan])  # non-finite left out
    assert_histograms_match_histc(m, ls.histograms())  # a sample at a time (the rare path)


def assert_histograms_match_histc(m: nn.Module, hists: list) -> None:
    assert [(n, k) for n, k, *_ in hists][:2] == [("a.weight", "weight"), ("a.weight", "grad")]
    by = {(n, k): (lo, hi, c) for n, k, lo, hi, c in hists}
    assert len(by) == 12
    for name, p in m.named_parameters():
        for kind, t in (("weight", p.detach()), ("grad", p.grad)):
            lo, hi, counts = by[(name, kind)]
            x = t.reshape(-1)
            x = x[torch.isfinite(x)]
            want_lo, want_hi = float(x.min()), float(x.max())
            if want_lo == want_hi:
                want_lo, want_hi = want_lo - 0.5, want_hi + 0.5
            assert (lo, hi) == pytest.approx((want_lo, want_hi))
            assert len(counts) == HIST_BINS and sum(counts) == x.numel()
            want = torch.histc(x, bins=HIST_BINS, min=want_lo, max=want_hi)
            # float rounding may move a value sitting on a bin edge by one bin
            assert sum(abs(a - int(b)) for a, b in zip(counts, want.tolist(), strict=True)) <= 2
