"""Issue 13, item 12: a mid-epoch resume deals exactly the batches the uninterrupted run would
have (the epoch's shuffle comes back from the checkpoint), so its losses are the same, step by
step, with the same seed on CPU; dropout's draws continue where they stopped too."""

from __future__ import annotations

import torch
from conftest import by_step, linear_recipe, train_in_process

SHUFFLED = """
from torch.utils.data import DataLoader, TensorDataset
train_loader = DataLoader(TensorDataset(x, y), batch_size=20, shuffle=True)
model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
"""
OWN_GENERATOR = """
from torch.utils.data import DataLoader, TensorDataset
g = torch.Generator().manual_seed(7)
train_loader = DataLoader(TensorDataset(x, y), batch_size=20, shuffle=True, generator=g)
"""


def _resume_matches(tmp_path, write_recipe, extra: str) -> None:
    # 10 batches per epoch, 3 epochs; interrupted after 14 steps: 4 into the second epoch.
    path = write_recipe(linear_recipe(n=200, batch=20, epochs=3, extra=extra))
    whole = train_in_process(path, tmp_path / "whole", seed=1)
    part = train_in_process(path, tmp_path / "part", seed=1, max_steps=14)
    assert part.loop.step == 14 and part.loop.batch == 4
    ck = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=False)
    rest = train_in_process(path, tmp_path / "part", seed=1, resume=ck)
    assert whole.status == rest.status == "finished"
    want = by_step(whole.table(), "loss")
    got = {**by_step(part.table(), "loss"), **by_step(rest.table(), "loss")}
    assert sorted(want) == list(range(1, 31)) and sorted(got) == sorted(want)
    for step in want:
        assert got[step] == want[step], f"step {step}: resumed loss {got[step]} != {want[step]}"


def test_mid_epoch_resume_sees_the_same_shuffle_and_the_same_losses(tmp_path, write_recipe):
    _resume_matches(tmp_path, write_recipe, SHUFFLED)


def test_a_loader_with_its_own_generator_resumes_exactly_too(tmp_path, write_recipe):
    _resume_matches(tmp_path, write_recipe, OWN_GENERATOR)
