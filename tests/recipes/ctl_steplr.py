"""LR-test recipe: SGD at 0.1 with StepLR(step_size=5, gamma=0.8) stepped every optimizer step."""

import time

import torch
from torch import nn

torch.manual_seed(0)

BASE_LR, STEP_SIZE, GAMMA = 0.1, 5, 0.8

g = torch.Generator().manual_seed(5)
X = torch.randn(8, 16, 8, generator=g)
Y = torch.randint(0, 4, (8, 16), generator=g)


class Endless:
    def __len__(self) -> int:
        return 1_000_000

    def __iter__(self):
        for i in range(len(self)):
            yield X[i % 8], Y[i % 8]


class SlowMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        if self.training:
            time.sleep(0.02)
        return self.fc2(torch.relu(self.fc1(x)))


model = SlowMLP()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=BASE_LR)
train_loader = Endless()
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_SIZE, gamma=GAMMA)
scheduler_interval = "step"
epochs = 10
