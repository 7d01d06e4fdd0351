"""Both a recipe (model, optimizer, loss_fn, train_loader at module level) and a script (its own
loop under `if __name__ == "__main__"`). `dltui train` treats it as a recipe; `--script` runs the
file's own loop instead.

    python hybrid_recipe.py
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
x = torch.randn(100, 4)
y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
train_loader = DataLoader(TensorDataset(x, y), batch_size=20)
model = nn.Linear(4, 1)
loss_fn = nn.MSELoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
epochs = 1

if __name__ == "__main__":
    for step, (xb, yb) in enumerate(train_loader, 1):
        optimizer.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        print(f"own loop step {step}: loss {loss.item():.4f}")
    print("own loop done")
