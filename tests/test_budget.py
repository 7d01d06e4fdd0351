"""benchmarks/budget.py times the engine's per-step methods by name: each must still exist."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_every_method_the_budget_times_exists(monkeypatch):
    """A renamed or removed hot-path method would make budget.py fail (KeyError) or, worse, time
    nothing; each (class, method) it wraps is defined on that class itself."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, "budget", raising=False)
    import budget

    targets = budget.targets()
    assert len(targets) > 20
    missing = [f"{cls.__name__}.{name}" for _, _, cls, name in targets if name not in vars(cls)]
    assert not missing, missing
    parts = {part for group, part, _, _ in targets if group == budget.ENGINE}
    assert {"script-mode hooks", "probe bookkeeping", "headless printer", "store append"} <= parts
