"""Shape (c): the PyTorch DCGAN tutorial's training loop on a 2-D toy distribution (a ring of 8
Gaussians) instead of CelebA: a generator with BatchNorm and a discriminator, BCELoss, two Adam
optimizers (D's created first), two backward() calls for D per iteration (real, then fake) and
one for G. Registers dltui.on_eval(evaluate); logs D(x) and D(G(z)) with dltui.log.

    python dcgan_toy.py --epochs 2 --lr 0.01
"""

import argparse
import json
import math
import random

import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset

import dltui

parser = argparse.ArgumentParser(description="DCGAN-style training on a ring of Gaussians")
parser.add_argument("--epochs", type=int, default=5, help="number of training epochs")
parser.add_argument("--lr", type=float, default=0.0002, help="learning rate for both optimizers")
parser.add_argument("--beta1", type=float, default=0.5, help="beta1 for Adam")
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--dataset-size", type=int, default=4096, help="real samples per epoch")
parser.add_argument("--nz", type=int, default=8, help="size of the latent vector")
parser.add_argument("--seed", type=int, default=999)
parser.add_argument("--trace", metavar="FILE", help="write a JSON line per iteration (tests)")
args = parser.parse_args()

# Set random seed for reproducibility
manualSeed = args.seed
random.seed(manualSeed)
torch.manual_seed(manualSeed)

nz = args.nz  # size of z latent vector (i.e. size of generator input)
ngf = 64  # size of feature maps in generator
ndf = 64  # size of feature maps in discriminator


def ring_of_gaussians(n, generator):
    angles = torch.randint(0, 8, (n,), generator=generator).float() * (2 * math.pi / 8)
    centers = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * 2.0
    return centers + 0.05 * torch.randn(n, 2, generator=generator)


dataset = TensorDataset(ring_of_gaussians(args.dataset_size, torch.Generator().manual_seed(0)))
dataloader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)


# custom weights initialization called on netG and netD
def weights_init(m):
    classname = m.__class__.__name__
    if classname.find("Linear") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
        nn.init.constant_(m.bias.data, 0)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.Linear(nz, ngf),
            nn.BatchNorm1d(ngf),
            nn.ReLU(True),
            nn.Linear(ngf, ngf),
            nn.BatchNorm1d(ngf),
            nn.ReLU(True),
            nn.Linear(ngf, 2),
        )

    def forward(self, input):
        return self.main(input)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.Linear(2, ndf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(ndf, ndf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(ndf, 1),
            nn.Sigmoid(),
        )

    def forward(self, input):
        return self.main(input)


netG = Generator()
netG.apply(weights_init)
netD = Discriminator()
netD.apply(weights_init)

criterion = nn.BCELoss()
fixed_noise = torch.randn(256, nz)
eval_real = dataset.tensors[0][:256]
real_label = 1.0
fake_label = 0.0

# Setup Adam optimizers for both G and D
optimizerD = optim.Adam(netD.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
optimizerG = optim.Adam(netG.parameters(), lr=args.lr, betas=(args.beta1, 0.999))


@dltui.on_eval
def evaluate():
    """How well D tells real samples from G's samples of the fixed noise."""
    fake = netG(fixed_noise)
    d_real = netD(eval_real).mean().item()
    d_fake = netD(fake).mean().item()
    print(
        f"eval: D(real) {d_real:.4f}  D(G(z)) {d_fake:.4f}  netD.training={netD.training} "
        f"netG.training={netG.training} grad_enabled={torch.is_grad_enabled()}"
    )
    return {"d_real": d_real, "d_fake": d_fake}


# --trace FILE: a JSON line per iteration for dltui's acceptance tests (what backward() saw, the LR
# each optimizer used). It only reads values; it changes nothing.
trace_file = open(args.trace, "w") if args.trace else None
seen = {}
if trace_file:
    for name, opt in (("optimizerD", optimizerD), ("optimizerG", optimizerG)):
        opt.register_step_pre_hook(
            lambda o, a, k, name=name: seen.__setitem__(
                name, {"stepped": False, "lr": [g["lr"] for g in o.param_groups]}
            )
        )
        opt.register_step_post_hook(lambda o, a, k, name=name: seen[name].update(stepped=True))
    trace_file.write(
        json.dumps(
            {
                "models": {
                    n: {
                        "params": [k for k, p in m.named_parameters()],
                        "state": list(m.state_dict()),
                    }
                    for n, m in (("netD", netD), ("netG", netG))
                }
            }
        )
        + "\n"
    )

# Training Loop
G_losses = []
D_losses = []
iters = 0

print("Starting Training Loop...")
for epoch in range(args.epochs):
    for i, data in enumerate(dataloader, 0):  # noqa: B007  (the tutorial's loop)
        ############################
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        ###########################
        ## Train with all-real batch
        netD.zero_grad()
        real_cpu = data[0]
        b_size = real_cpu.size(0)
        label = torch.full((b_size,), real_label, dtype=torch.float)
        output = netD(real_cpu).view(-1)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.mean().item()

        ## Train with all-fake batch
        noise = torch.randn(b_size, nz)
        fake = netG(noise)
        label.fill_(fake_label)
        output = netD(fake.detach()).view(-1)
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.mean().item()
        errD = errD_real + errD_fake
        optimizerD.step()

        ############################
        # (2) Update G network: maximize log(D(G(z)))
        ###########################
        netG.zero_grad()
        label.fill_(real_label)  # fake labels are real for generator cost
        output = netD(fake).view(-1)
        errG = criterion(output, label)
        errG.backward()
        D_G_z2 = output.mean().item()
        optimizerG.step()

        dltui.log(d_x=D_x, d_g_z=D_G_z1)
        if trace_file:
            trace_file.write(
                json.dumps(
                    {
                        "opt": seen,
                        "training": netD.training and netG.training,
                        "it": iters,
                        "losses": [errD_real.item(), errD_fake.item()],
                        "g_losses": [errG.item()],
                        "lr_set": [args.lr],
                        "log": {"d_x": D_x, "d_g_z": D_G_z1},
                    }
                )
                + "\n"
            )
            trace_file.flush()
            seen = {}

        G_losses.append(errG.item())
        D_losses.append(errD.item())
        iters += 1

    # Output training stats
    print(
        f"[{epoch}/{args.epochs}]\tLoss_D: {errD.item():.4f}\tLoss_G: {errG.item():.4f}"
        f"\tD(x): {D_x:.4f}\tD(G(z)): {D_G_z1:.4f} / {D_G_z2:.4f}"
    )

with torch.no_grad():
    samples = netG.eval()(fixed_noise)
radius = samples.norm(dim=1).mean().item()
print(f"mean radius of generated samples {radius:.6f} (real: 2.0)")
print(f"final loss {D_losses[-1]!r} {G_losses[-1]!r}")
