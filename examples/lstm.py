"""An LSTM forecasts a noisy wave one step ahead.

The series is a sum of two sines plus noise. Each sample is a window of 32 past values;
the target is the value that comes next. The LSTM reads the window in order and its last
hidden state goes through a linear head to give the forecast. ReduceLROnPlateau cuts the
learning rate when the validation loss stops improving (the engine passes it the
validation loss at the end of every epoch).

Run it:  dltui train examples/lstm.py
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)

# --- data -------------------------------------------------------------------------------
WINDOW = 32
t = torch.arange(8000, dtype=torch.float32)
series = torch.sin(0.07 * t) + 0.5 * torch.sin(0.31 * t) + 0.1 * torch.randn(len(t))

# Sliding windows: x[i] = series[i : i+32] as [32, 1] (32 time steps, 1 feature each),
# y[i] = series[i+32] as [1].
x = series.unfold(0, WINDOW, 1)[:-1].unsqueeze(-1)
y = series[WINDOW:].unsqueeze(-1)

# Validate on the last 20% of time, never seen in training: the honest test for a forecast.
split = int(0.8 * len(x))
train_loader = DataLoader(TensorDataset(x[:split], y[:split]), batch_size=64, shuffle=True)
val_loader = DataLoader(TensorDataset(x[split:], y[split:]), batch_size=256)


# --- model ------------------------------------------------------------------------------
class Forecaster(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.lstm = nn.LSTM(input_size=1, hidden_size=hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # out: [B, 32, hidden], one hidden state per time step
        return self.head(out[:, -1])  # keep the last one: it has seen the whole window


model = Forecaster()

# --- loss -------------------------------------------------------------------------------
loss_fn = nn.MSELoss()  # the noise alone gives a floor of 0.1**2 = 0.01

# --- optimizer --------------------------------------------------------------------------
optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)

# --- scheduler --------------------------------------------------------------------------
# Halve the learning rate after 1 epoch without a better validation loss.
scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
scheduler_interval = "epoch"

epochs = 10
hparams = {"window": WINDOW, "hidden": 64, "lr": 5e-3, "batch_size": 64}
