"""Control-test recipe for --pause-on-anomaly: NaN loss at step 10, a gradient spike at step 30.

The NaN comes from adding a constant NaN to the loss, so the gradients (and the weights) stay
finite. The spike adds 1e3 * sum(fc2.weight**2), which multiplies only fc2.weight's gradient.
"""

import time

import torch
from torch import nn

torch.manual_seed(0)

NAN_STEP, SPIKE_STEP = 10, 30

g = torch.Generator().manual_seed(4)
X = torch.randn(8, 16, 8, generator=g)
Y = torch.randint(0, 4, (8, 16), generator=g)


class Endless:
    def __len__(self) -> int:
        return 1_000_000

    def __iter__(self):
        for i in range(len(self)):
            yield X[i % 8], Y[i % 8]


model = nn.Sequential()
model.add_module("fc1", nn.Linear(8, 16))
model.add_module("act", nn.ReLU())
model.add_module("fc2", nn.Linear(16, 4))
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
train_loader = Endless()
epochs = 10
calls = 0


def train_step(model, batch):
    global calls
    x, y = batch
    out = model(x)
    loss = loss_fn(out, y)
    if model.training:
        calls += 1  # == the optimizer step this call is for (1-based)
        time.sleep(0.02)
        if calls == NAN_STEP:
            loss = loss + torch.tensor(float("nan"))  # NaN value, finite gradients
        elif calls == SPIKE_STEP:
            loss = loss + 1e3 * (model.fc2.weight**2).sum()  # only fc2.weight's gradient spikes
    return loss, out, y
