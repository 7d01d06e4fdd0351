"""A small CNN classifies 16x16 pictures of simple shapes.

Each image holds one of five shapes (horizontal bar, vertical bar, hollow square, plus,
X) of random size and position, with random brightness and pixel noise. Two convolution
layers learn local edge and corner detectors that work wherever the shape sits; a linear
layer reads the class off them. OneCycleLR changes the learning rate every step: up for
the first 30% of training, then down to near zero.

Run it:  dltui train examples/cnn.py
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)

# --- data -------------------------------------------------------------------------------
CLASSES = ["hbar", "vbar", "square", "plus", "x"]


def draw(label: int) -> torch.Tensor:
    """One noisy 1x16x16 image of shape `label`, size 5-9 pixels, placed at random."""
    img = torch.zeros(16, 16)
    s = int(torch.randint(5, 10, ()))
    r, c = torch.randint(0, 17 - s, (2,)).tolist()  # top-left corner, shape stays inside
    m = s // 2
    if label == 0:
        img[r + m, c : c + s] = 1
    elif label == 1:
        img[r : r + s, c + m] = 1
    elif label == 2:
        img[r : r + s, c : c + s] = 1
        img[r + 1 : r + s - 1, c + 1 : c + s - 1] = 0
    elif label == 3:
        img[r + m, c : c + s] = 1
        img[r : r + s, c + m] = 1
    else:
        i = torch.arange(s)
        img[r + i, c + i] = 1
        img[r + i, c + s - 1 - i] = 1
    brightness = 0.5 + 0.5 * torch.rand(())
    return (brightness * img + 0.3 * torch.randn(16, 16)).unsqueeze(0)  # channel dim first


def dataset(n: int) -> TensorDataset:
    labels = torch.randint(0, len(CLASSES), (n,))  # integer class ids, as CrossEntropy wants
    images = torch.stack([draw(int(k)) for k in labels])
    return TensorDataset(images, labels)


train_loader = DataLoader(dataset(3000), batch_size=32, shuffle=True)
val_loader = DataLoader(dataset(600), batch_size=256)

# --- model ------------------------------------------------------------------------------
# 16x16 -> conv+pool -> 8x8 -> conv+pool -> 4x4, then one linear layer to 5 class scores.
model = nn.Sequential(
    nn.Conv2d(1, 32, kernel_size=3, padding=1),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(32, 64, kernel_size=3, padding=1),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Flatten(),
    nn.Linear(64 * 4 * 4, len(CLASSES)),
)

# --- loss -------------------------------------------------------------------------------
# Takes raw scores [B, 5] and integer labels [B]; the softmax happens inside the loss.
loss_fn = nn.CrossEntropyLoss()

# --- optimizer --------------------------------------------------------------------------
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

# --- scheduler --------------------------------------------------------------------------
# OneCycleLR needs the total number of optimizer steps up front, and is stepped per batch.
# It is sized from `epochs` here: to train longer, change `epochs` in this file (with
# `--epochs 50` the schedule would run out after epoch 5, and the run fails saying so).
epochs = 5
scheduler = torch.optim.lr_scheduler.OneCycleLR(
    optimizer, max_lr=1e-2, total_steps=epochs * len(train_loader)
)
scheduler_interval = "step"

hparams = {"max_lr": 1e-2, "batch_size": 32, "classes": len(CLASSES), "train_images": 3000}
