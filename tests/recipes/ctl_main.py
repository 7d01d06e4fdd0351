"""Control-test recipe: a tiny MLP with BatchNorm, ~20 ms per training step, two Adam groups.

The sleep keeps each step slow enough that pauses and single steps are observable, and the
training data is effectively endless so the run never ends during a test. The environment can
make steps from CTL_SLOW_FROM on (1-based) sleep CTL_SLOW_S instead (a signal test then knows
it lands in the middle of a step) and end by printing CTL_SLOW_PRINTS lines.
"""

import os
import time

import torch
from torch import nn

torch.manual_seed(0)

N_FEATURES, N_CLASSES, BATCH = 8, 4, 16
SLOW_FROM = int(os.environ.get("CTL_SLOW_FROM", "0")) or None
SLOW_S = float(os.environ.get("CTL_SLOW_S", "0.02"))
CHATTY = int(os.environ.get("CTL_SLOW_PRINTS", "0"))  # lines a slow step prints as it ends


class Endless:
    """Fixed batches generated on the fly: len() is huge, so no epoch ends during a test."""

    def __init__(self, n_batches: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(8, BATCH, N_FEATURES, generator=g)
        self.y = torch.randint(0, N_CLASSES, (8, BATCH), generator=g)
        self.n = n_batches

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i in range(self.n):
            yield self.x[i % 8], self.y[i % 8]


class SlowMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(N_FEATURES, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, N_CLASSES)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1  # == the optimizer step this forward is for
            if SLOW_FROM is not None and self.calls >= SLOW_FROM:
                print(f"ctl_main: step {self.calls} sleeps {SLOW_S} s", flush=True)
                time.sleep(SLOW_S)
                for i in range(CHATTY):  # a chatty recipe: the store has these to write
                    print(f"ctl_main: step {self.calls} says {i}")
            else:
                time.sleep(0.02)  # a deliberately slow step (no CPU used)
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


train_loader = Endless(1_000_000, seed=1)
val_loader = Endless(2, seed=2)
model = SlowMLP()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(
    [
        {"params": list(model.fc1.parameters()) + list(model.bn.parameters()), "lr": 0.01},
        {"params": model.fc2.parameters(), "lr": 0.001},
    ]
)
epochs = 1000
