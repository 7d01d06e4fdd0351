"""A script with its own loop that logs 32 scalars a step through dltui.log (and 2 at validation),
the way a real script logs per-layer and per-head numbers: for the Metrics grid's paging and
filter. `many_scalars.py [STEPS] [LR]` (defaults 40 and 0.05)."""

import sys

import torch

import dltui

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
lr = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
torch.manual_seed(0)
x = torch.randn(64, 8)
y = x @ torch.randn(8, 1)
model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=lr)
for step in range(steps):
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        hidden = torch.tanh(model[0](x))
        dltui.log(
            **{f"unit_{i:02d}/mean": hidden[:, i].mean() for i in range(8)},
            **{f"unit_{i:02d}/std": hidden[:, i].std() for i in range(8)},
            **{f"grad/{n.replace('.', '_')}": p.grad.norm() for n, p in model.named_parameters()},
            **{f"weight/{n.replace('.', '_')}": p.norm() for n, p in model.named_parameters()},
            **{f"extra/{k}": float(step * k) for k in range(8)},
        )
    if step % 10 == 9:
        dltui.log(phase="val", acc=1.0 / (1.0 + loss.item()), err=loss.item())
print(f"done: loss {loss.item():.4f}")
