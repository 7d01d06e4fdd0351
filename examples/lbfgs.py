"""A closure optimizer: LBFGS fits a damped oscillation with a small MLP, full batch.

LBFGS re-evaluates the loss several times per step (a line search), so its step() needs a
closure that runs forward and backward again. The engine builds that closure from the
recipe's model and loss_fn: nothing special to write here, just `optimizer = LBFGS(...)`.
Each epoch is one batch, so one LBFGS step (of up to 10 inner iterations).

Run it:  dltui train examples/lbfgs.py
"""

import torch
from torch import nn

torch.manual_seed(0)

# --- data -------------------------------------------------------------------------------
x = torch.linspace(0, 6, 256).unsqueeze(1)
y = torch.exp(-0.3 * x) * torch.sin(3 * x) + 0.02 * torch.randn_like(x)
train_loader = [(x, y)]  # one full batch: LBFGS wants the whole, noise-free gradient
val_loader = [(x + 0.01, torch.exp(-0.3 * (x + 0.01)) * torch.sin(3 * (x + 0.01)))]

# --- model ------------------------------------------------------------------------------
model = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))

# --- loss -------------------------------------------------------------------------------
loss_fn = nn.MSELoss()

# --- optimizer --------------------------------------------------------------------------
optimizer = torch.optim.LBFGS(
    model.parameters(), lr=0.5, max_iter=10, line_search_fn="strong_wolfe"
)

epochs = 50
hparams = {"hidden": 32, "max_iter": 10, "line_search": "strong_wolfe"}
