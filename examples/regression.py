"""Linear regression: the smallest complete recipe.

Learns y = 3*x1 - 2*x2 + 0.5 from noisy samples with one nn.Linear layer. Watch the loss
fall to the noise floor (about 0.01) and the weights settle near 3, -2 and 0.5.

Run it:  dltui train examples/regression.py
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)  # same data and same starting weights on every run

# --- data -------------------------------------------------------------------------------
# 10,000 points for training, 1,000 held out for validation. The noise (std 0.1) is what the
# model can never learn, so the loss bottoms out near 0.1**2 = 0.01.
n_train, n_val = 10_000, 1_000
x = torch.randn(n_train + n_val, 2)
y = 3 * x[:, :1] - 2 * x[:, 1:] + 0.5 + 0.1 * torch.randn(n_train + n_val, 1)  # shape [N, 1]

train_loader = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=32, shuffle=True)
val_loader = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=256)

# --- model ------------------------------------------------------------------------------
# One weight per input plus a bias: exactly the shape of the formula above.
model = nn.Linear(2, 1)

# --- loss -------------------------------------------------------------------------------
# Mean squared error: the standard loss for predicting a real number. The output [B, 1]
# and the target [B, 1] have the same shape, so nothing is broadcast by accident.
loss_fn = nn.MSELoss()

# --- optimizer --------------------------------------------------------------------------
# Plain SGD is enough for a convex problem like this one. A small learning rate makes the
# descent last a few epochs, so it is easy to follow on the charts.
optimizer = torch.optim.SGD(model.parameters(), lr=0.002)

epochs = 10
hparams = {"lr": 0.002, "batch_size": 32, "noise_std": 0.1}
