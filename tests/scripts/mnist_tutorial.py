"""Shape (a): the PyTorch MNIST example (pytorch/examples mnist/main.py), unmodified in shape:
argparse inside main() under `if __name__ == "__main__"`, train()/test() functions, Adadelta +
StepLR stepped per epoch, dropout. MNIST is replaced by generated 12x12 "digits" (class templates
plus noise) so nothing is downloaded. It does not import dltui.

    python mnist_tutorial.py --epochs 2 --lr 0.01
"""

import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(256, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def synthetic_digits(n, generator):
    """n noisy 1x12x12 images of 10 fixed class templates, with their labels."""
    templates = (
        torch.rand(10, 1, 12, 12, generator=torch.Generator().manual_seed(0)) > 0.6
    ).float()
    labels = torch.randint(0, 10, (n,), generator=generator)
    images = templates[labels] + 0.8 * torch.randn(n, 1, 12, 12, generator=generator)
    return TensorDataset((images - 0.4) / 0.9, labels)


class StepTrace:
    """`--trace FILE`: one JSON line per training iteration, for dltui's acceptance tests (what
    backward() saw, the LR the optimizer used, the LR the script meant). Changes nothing."""

    def __init__(self, path, optimizers, models):
        self.file = open(path, "w") if path else None
        self.models, self.seen = models, {}
        if self.file is None:
            return
        for name, opt in optimizers.items():
            opt.register_step_pre_hook(
                lambda o, a, k, name=name: self.seen.__setitem__(
                    name, {"stepped": False, "lr": [g["lr"] for g in o.param_groups]}
                )
            )
            opt.register_step_post_hook(
                lambda o, a, k, name=name: self.seen[name].update(stepped=True)
            )
        self.write(
            models={
                n: {
                    "params": [k for k, p in m.named_parameters() if p.requires_grad],
                    "state": list(m.state_dict()),
                }
                for n, m in models.items()
            }
        )

    def write(self, **record):
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def step(self, **record):
        if self.file is not None:
            self.write(
                opt=self.seen, training=all(m.training for m in self.models.values()), **record
            )
        self.seen = {}


def train(args, model, device, train_loader, optimizer, epoch, trace):
    model.train()
    last = None
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        last = loss.item()
        trace.step(losses=[last], lr_set=[args.lr * args.gamma ** (epoch - 1)])
        if batch_idx % args.log_interval == 0:
            print(
                f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(train_loader.dataset)} ({100.0 * batch_idx / len(train_loader):.0f}%)]\tLoss: {loss.item():.6f}"
            )
            if args.dry_run:
                break
    return last


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()  # sum up batch loss
            pred = output.argmax(dim=1, keepdim=True)  # get the index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()

    test_loss /= len(test_loader.dataset)

    print(
        f"\nTest set: Average loss: {test_loss:.4f}, Accuracy: {correct}/{len(test_loader.dataset)} ({100.0 * correct / len(test_loader.dataset):.0f}%)\n"
    )


def main():
    # Training settings
    parser = argparse.ArgumentParser(description="PyTorch MNIST Example (generated digits)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="input batch size for training (default: 32)",
    )
    parser.add_argument(
        "--test-batch-size",
        type=int,
        default=500,
        metavar="N",
        help="input batch size for testing (default: 500)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=14,
        metavar="N",
        help="number of epochs to train (default: 14)",
    )
    parser.add_argument(
        "--lr", type=float, default=1.0, metavar="LR", help="learning rate (default: 1.0)"
    )
    parser.add_argument(
        "--gamma",
        type=float,
        default=0.7,
        metavar="M",
        help="Learning rate step gamma (default: 0.7)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", default=False, help="quickly check a single pass"
    )
    parser.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default: 1)")
    parser.add_argument(
        "--train-size",
        type=int,
        default=1600,
        metavar="N",
        help="generated training images (default: 1600)",
    )
    parser.add_argument(
        "--log-interval",
        type=int,
        default=10,
        metavar="N",
        help="how many batches to wait before logging training status",
    )
    parser.add_argument(
        "--save-model", action="store_true", default=False, help="For Saving the current Model"
    )
    parser.add_argument("--trace", metavar="FILE", help="write a JSON line per step (tests)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device("cpu")

    train_kwargs = {"batch_size": args.batch_size, "shuffle": True}
    test_kwargs = {"batch_size": args.test_batch_size}

    data_gen = torch.Generator().manual_seed(args.seed)
    dataset1 = synthetic_digits(args.train_size, data_gen)
    dataset2 = synthetic_digits(1000, data_gen)
    train_loader = DataLoader(dataset1, **train_kwargs)
    test_loader = DataLoader(dataset2, **test_kwargs)

    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    trace = StepTrace(args.trace, {"optimizer": optimizer}, {"model": model})

    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    loss = None
    for epoch in range(1, args.epochs + 1):
        loss = train(args, model, device, train_loader, optimizer, epoch, trace)
        test(model, device, test_loader)
        scheduler.step()

    if args.save_model:
        torch.save(model.state_dict(), "mnist_cnn.pt")
    print(f"final loss {loss!r}")


if __name__ == "__main__":
    main()
