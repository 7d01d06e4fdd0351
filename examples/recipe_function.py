"""The second recipe form: a `recipe()` function that returns the pieces in a dict.

Module-level names (as in the other examples) are the simplest form. A function is handy
when building the pieces takes parameters or should not run on import, e.g. when another
script imports this file. The keys are the same names. This one also passes its own
`metrics` (instead of the engine's automatic accuracy) and `hparams` for the UI.

The task: sort 2-D points into three Gaussian clusters with a tiny MLP.

Run it:  dltui train examples/recipe_function.py
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy


def recipe(lr: float = 0.01, hidden: int = 16, epochs: int = 10) -> dict:
    torch.manual_seed(0)

    # --- data ---------------------------------------------------------------------------
    # Three overlapping clusters, so even a perfect model is right only ~95% of the time.
    centers = torch.tensor([[0.0, 2.0], [-1.7, -1.0], [1.7, -1.0]])

    def clusters(n: int) -> TensorDataset:
        labels = torch.randint(0, 3, (n,))
        return TensorDataset(centers[labels] + 0.9 * torch.randn(n, 2), labels)

    train_loader = DataLoader(clusters(3000), batch_size=32, shuffle=True)
    val_loader = DataLoader(clusters(1000), batch_size=256)

    # --- model --------------------------------------------------------------------------
    model = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    # --- loss, optimizer ----------------------------------------------------------------
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    return {
        "model": model,
        "loss_fn": loss_fn,
        "optimizer": optimizer,
        "train_loader": train_loader,
        "val_loader": val_loader,
        "epochs": epochs,
        "metrics": MulticlassAccuracy(num_classes=3),
        "hparams": {"lr": lr, "hidden": hidden, "epochs": epochs},
    }
