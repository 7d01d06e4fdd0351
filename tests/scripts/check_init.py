"""Script (e): a sanity check people run before training, and it never steps an optimizer: build
the model and optimizer, check the untrained loss is near ln(num_classes) and that every parameter
gets a gradient, then exit 0. Under dltui this must end with one clear "never stepped" message.

    python check_init.py --classes 10
"""

import argparse
import math

import torch
from torch import nn

parser = argparse.ArgumentParser(description="check a classifier's loss at initialisation")
parser.add_argument("--classes", type=int, default=10)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

torch.manual_seed(args.seed)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, args.classes))
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)  # what training would use

x = torch.randn(512, 20)
y = torch.randint(0, args.classes, (512,))
loss = nn.functional.cross_entropy(model(x), y)
loss.backward()
missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
expected = math.log(args.classes)
print(f"initial loss {loss.item():.4f} (expected about {expected:.4f})")
print("every parameter gets a gradient" if not missing else f"no gradient for {missing}")
print("ok" if abs(loss.item() - expected) < 0.5 and not missing else "suspicious initialisation")
