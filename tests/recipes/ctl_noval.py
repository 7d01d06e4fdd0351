"""Control-test recipe with NO val_loader: eval mode must pass over the training data.

The training data announces each pass on stdout (the engine records stdout in the store), so a
test can tell an eval pass over it (model in eval mode) from a training epoch.
"""

import time

import torch
from torch import nn

torch.manual_seed(0)


class Batches:
    """Ten fixed (input, target) batches; prints a line at the start of every pass."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(10, 16, 8, generator=g)
        self.y = torch.randint(0, 4, (10, 16), generator=g)

    def __len__(self) -> int:
        return 10

    def __iter__(self):
        print(f"ctl_noval: pass over the training data (model.training={model.training})")
        for i in range(10):
            yield self.x[i], self.y[i]


class SlowMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        if self.training:
            time.sleep(0.02)  # keep training steps slow; eval passes stay fast
        return self.fc2(torch.relu(self.fc1(x)))


train_loader = Batches()
model = SlowMLP()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
epochs = 100_000
