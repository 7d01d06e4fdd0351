"""Binary classification: a small MLP separates two interleaved moons.

The two classes are curved and hooked into each other, so no straight line splits them;
the hidden layers have to learn a bent boundary. The model emits one logit per sample
and BCEWithLogitsLoss turns it into a probability inside the loss (more stable than a
sigmoid followed by BCELoss). StepLR halves the learning rate every 5 epochs.

Run it:  dltui train examples/binary.py
"""

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)


# --- data -------------------------------------------------------------------------------
def moons(n: int, noise: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """Two half circles, one shifted under the other; labels 0 and 1 as floats [n, 1]."""
    t = torch.rand(n) * math.pi
    label = torch.randint(0, 2, (n,))
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    x = torch.where(label[:, None] == 0, upper, lower) + noise * torch.randn(n, 2)
    return x, label.float().unsqueeze(1)


train_loader = DataLoader(TensorDataset(*moons(5000)), batch_size=64, shuffle=True)
val_loader = DataLoader(TensorDataset(*moons(1000)), batch_size=256)

# --- model ------------------------------------------------------------------------------
# Two hidden layers of 32 units; the last layer gives one raw score (a logit) per sample.
model = nn.Sequential(
    nn.Linear(2, 32),
    nn.ReLU(),
    nn.Linear(32, 32),
    nn.ReLU(),
    nn.Linear(32, 1),  # output [B, 1], same shape as the 0/1 targets
)

# --- loss -------------------------------------------------------------------------------
loss_fn = nn.BCEWithLogitsLoss()

# --- optimizer --------------------------------------------------------------------------
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

# --- scheduler --------------------------------------------------------------------------
# Big steps early to find the shape of the boundary, smaller ones later to refine it.
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
scheduler_interval = "epoch"

epochs = 20
hparams = {"lr": 1e-2, "hidden": 32, "batch_size": 64, "lr_step": 5, "lr_gamma": 0.5}
