"""DDP test recipe: a tiny classifier on a shuffled DataLoader that dltui shards across ranks.

Each forward sleeps DDP_SLOW_S (default 20 ms) so pauses and single steps are observable, and
there are enough epochs that the run never ends during a test. Prints its rank once (console
lines of every rank are kept, tagged).
"""

import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dltui

torch.manual_seed(0)
SLOW_S = float(os.environ.get("DDP_SLOW_S", "0.02"))
ctx = dltui.context()
print(f"recipe loaded on rank {ctx.rank} of {ctx.world_size}")

g = torch.Generator().manual_seed(1)
x = torch.randn(1024, 8, generator=g)
y = (x[:, 0] > 0).long()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            time.sleep(SLOW_S)
        return self.fc2(torch.relu(self.fc1(x)))


model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
train_loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
val_loader = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16)
epochs = 1000
