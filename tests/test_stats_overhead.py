"""Per-step costs the probe's overhead budget cannot afford (benchmarks/overhead.py)."""

from __future__ import annotations

import inspect

import torch

from dltui.engine import recipe


def test_needs_closure_inspects_each_optimizer_class_once(monkeypatch):
    p = [torch.nn.Parameter(torch.zeros(2))]
    sgd, sgd2, lbfgs = torch.optim.SGD(p, lr=0.1), torch.optim.SGD(p, lr=0.2), torch.optim.LBFGS(p)
    recipe._NEEDS_CLOSURE.clear()
    calls = []
    real = inspect.signature
    monkeypatch.setattr(recipe.inspect, "signature", lambda f: calls.append(f) or real(f))
    for _ in range(100):  # as at every step of a run
        assert recipe.needs_closure(sgd) is False and recipe.needs_closure(sgd2) is False
        assert recipe.needs_closure(lbfgs) is True
    monkeypatch.undo()
    assert len(calls) == 2  # once per class, not once per step
