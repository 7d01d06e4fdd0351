"""A GAN with two optimizers: a generator learns to draw points from a ring of 8 blobs.

The discriminator D scores points (real: from the ring; fake: from the generator G). Each
step trains D once, then G once, each with its own Adam: `optimizer` is a dict of the two,
and `train_step(batch, ctx)` owns the updates with `ctx.backward(loss)` and `ctx.step("d")`.
Both optimizers are steered (`dltui ctl RUN lr '*0.5' --optimizer d`), checkpointed and
resumed. It returns a dict: every entry (D and G losses, D's scores) is charted.

Because train_step steps optimizers, the recipe defines `eval_step` too: evaluation (the `e`
key) computes the same numbers and never trains. Its loss is `mode_dist` (how far the fakes
fall from the real blobs), so `best.pt` keeps the generator that draws the ring best.

Run it:  dltui train examples/gan.py
"""

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)

# --- data -------------------------------------------------------------------------------
MODES = 8
angles = torch.arange(MODES) * (2 * math.pi / MODES)
centers = torch.stack([angles.cos(), angles.sin()], dim=1) * 2.0  # 8 blobs on a circle of radius 2


def ring(n: int) -> torch.Tensor:
    return centers[torch.randint(0, MODES, (n,))] + 0.05 * torch.randn(n, 2)


train_loader = DataLoader(TensorDataset(ring(8192)), batch_size=128, shuffle=True)
val_loader = DataLoader(TensorDataset(ring(1024)), batch_size=512)

# --- model ------------------------------------------------------------------------------
NOISE = 8


def mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, 64),
        nn.LeakyReLU(0.2),
        nn.Linear(64, 64),
        nn.LeakyReLU(0.2),
        nn.Linear(64, n_out),
    )


model = nn.ModuleDict({"g": mlp(NOISE, 2), "d": mlp(2, 1)})  # both halves: one model to watch

# --- loss -------------------------------------------------------------------------------
loss_fn = nn.BCEWithLogitsLoss()

# --- optimizers -------------------------------------------------------------------------
optimizer = {
    "g": torch.optim.Adam(model["g"].parameters(), lr=2e-3, betas=(0.5, 0.999)),
    "d": torch.optim.Adam(model["d"].parameters(), lr=2e-3, betas=(0.5, 0.999)),
}


# --- one step ---------------------------------------------------------------------------
def d_side(real: torch.Tensor, fake: torch.Tensor) -> dict:
    """D's loss on real and (detached: not reaching G) fake points, and D's mean scores."""
    d_real, d_fake = model["d"](real), model["d"](fake.detach())
    d_loss = loss_fn(d_real, torch.ones_like(d_real)) + loss_fn(d_fake, torch.zeros_like(d_fake))
    return {"d_loss": d_loss, "d_x": d_real.sigmoid().mean(), "d_g_z": d_fake.sigmoid().mean()}


def g_side(fake: torch.Tensor) -> dict:
    """G wants D to call its fakes real; mode_dist: how far fakes fall from the nearest blob."""
    score = model["d"](fake)
    mode_dist = torch.cdist(fake.detach(), centers.to(fake.device)).min(dim=1).values.mean()
    return {"g_loss": loss_fn(score, torch.ones_like(score)), "mode_dist": mode_dist}


def train_step(batch, ctx):
    (real,) = batch
    fake = model["g"](torch.randn(len(real), NOISE, device=real.device))
    d = d_side(real, fake)
    ctx.zero_grad("d")
    ctx.backward(d["d_loss"])
    ctx.step("d")
    g = g_side(fake)  # after D's step: G is scored by the updated D
    ctx.zero_grad("g")
    ctx.backward(g["g_loss"])
    ctx.step("g")
    out = {k: v.detach() for k, v in {**d, **g}.items()}
    return {"loss": out["d_loss"] + out["g_loss"], **out}


def eval_step(batch, ctx):
    (real,) = batch
    fake = model["g"](torch.randn(len(real), NOISE, device=real.device))
    out = {**d_side(real, fake), **g_side(fake)}
    # A GAN's losses chase each other; the val loss that picks best.pt is how close G's points
    # fall to the real blobs.
    return {**out, "loss": out["mode_dist"]}


epochs = 3
hparams = {"noise": NOISE, "lr": 2e-3, "batch_size": 128, "modes": MODES}
