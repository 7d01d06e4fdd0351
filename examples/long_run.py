"""A long run to watch: an MLP classifier trained for 200 epochs.

This recipe is for exploring the dashboard, not for a result. It runs for several
minutes at a steady pace (about 10 ms per step on a laptop CPU), so there is time to
watch the charts fill in, pause it, single-step it, change the learning rate, look at
layer statistics and tensors, detach and attach again. Stop it with `q` in the TUI,
`dltui ctl RUN stop` from another shell, or cap it up front with --max-steps.

Run it:  dltui train examples/long_run.py
         dltui train --max-steps 2000 examples/long_run.py
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)

# --- data -------------------------------------------------------------------------------
# Labels come from a fixed random "teacher" network: a bent, 10-way boundary in 32
# dimensions. 20,000 examples are not enough to pin it down, so over the long run the
# train loss keeps falling while the val loss creeps up: overfitting, live on the charts.
N_FEATURES, N_CLASSES = 32, 10
teacher = nn.Sequential(nn.Linear(N_FEATURES, 64), nn.Tanh(), nn.Linear(64, N_CLASSES))


@torch.no_grad()
def dataset(n: int) -> TensorDataset:
    x = torch.randn(n, N_FEATURES)
    return TensorDataset(x, teacher(x).argmax(dim=1))


train_loader = DataLoader(dataset(20_000), batch_size=256, shuffle=True)
val_loader = DataLoader(dataset(2_000), batch_size=512)

# --- model ------------------------------------------------------------------------------
# Wide enough (about 1.3M weights) that one step is ~10 ms of real work on a CPU.
model = nn.Sequential(
    nn.Linear(N_FEATURES, 1024),
    nn.ReLU(),
    nn.Dropout(0.3),  # randomly zeroes 30% of activations in training: slows memorising
    nn.Linear(1024, 1024),
    nn.ReLU(),
    nn.Dropout(0.3),
    nn.Linear(1024, 256),
    nn.ReLU(),
    nn.Linear(256, N_CLASSES),
)

# --- loss -------------------------------------------------------------------------------
loss_fn = nn.CrossEntropyLoss()

# --- optimizer --------------------------------------------------------------------------
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

# --- scheduler --------------------------------------------------------------------------
# A cosine curve from 0.05 down to 0 over all 200 epochs: easy to spot on the LR chart,
# and a good place to try a manual LR change and see the scheduler carry on from it.
epochs = 200
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
scheduler_interval = "epoch"

hparams = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "width": 1024, "dropout": 0.3}
