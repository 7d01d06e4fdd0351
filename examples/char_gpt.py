"""A tiny character-level GPT, trained the way nanoGPT trains: gradient accumulation, bf16
autocast and gradient clipping, with a OneCycleLR sized from the run's real length.

The text is generated here (seeded, offline): sentences from a small grammar, so there is
structure to learn. The model sees 32 characters and predicts each next one: logits
[B, T, V] against targets [B, T]. The recipe sets no `metrics`: dltui picks token accuracy
and perplexity from those shapes, and shows tokens/s because the inputs are [B, T] token ids.

`def recipe(ctx)` gets what will run: `ctx.epochs` is --epochs (None when not given), and
`ctx.args` is this file's own argv, so the model's size can come from the command line.

Run it:  dltui train examples/char_gpt.py
         dltui train --epochs 4 examples/char_gpt.py --n-embd 64 --n-layer 2
"""

import argparse
import math
import random

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

BLOCK = 32  # characters of context


# --- data -------------------------------------------------------------------------------
def make_text(n_sentences: int, rng: random.Random) -> str:
    subjects = ["the cat", "a dog", "my friend", "the old man", "a bird", "the child"]
    verbs = ["sees", "likes", "follows", "finds", "watches", "hears"]
    objects = ["the ball", "a tree", "the river", "a small house", "the moon", "some bread"]
    ends = [".", " today.", " again.", " at night."]
    return " ".join(
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(ends)}"
        for _ in range(n_sentences)
    )


def windows(ids: torch.Tensor, step: int) -> TensorDataset:
    """x = 32 characters, y = the same 32 shifted by one: every position predicts the next."""
    starts = torch.arange(0, len(ids) - BLOCK - 1, step)
    x = torch.stack([ids[s : s + BLOCK] for s in starts])
    y = torch.stack([ids[s + 1 : s + BLOCK + 1] for s in starts])
    return TensorDataset(x, y)


# --- model ------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = nn.MultiheadAttention(n_embd, n_head, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    def __init__(self, vocab: int, n_embd: int, n_layer: int, n_head: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, n_embd)
        self.pos = nn.Embedding(BLOCK, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab)
        causal = torch.triu(torch.ones(BLOCK, BLOCK, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", causal)  # True above the diagonal: no peeking ahead

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x, self.mask[:t, :t])
        return self.head(self.ln(x))  # [B, T, vocab] logits


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


def recipe(ctx) -> dict:
    p = argparse.ArgumentParser(prog="char_gpt.py")
    p.add_argument("--n-embd", type=int, default=32)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--sentences", type=int, default=400)
    opt = p.parse_args(ctx.args)

    torch.manual_seed(0)
    text = make_text(opt.sentences, random.Random(0))
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    split = int(0.9 * len(ids))
    micro_batch, accumulate = 8, 4  # an optimizer step sees 4 x 8 = 32 windows
    train_loader = DataLoader(windows(ids[:split], step=8), batch_size=micro_batch, shuffle=True)
    val_loader = DataLoader(windows(ids[split:], step=BLOCK), batch_size=64)

    model = CharGPT(len(chars), opt.n_embd, opt.n_layer, opt.n_head)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=0.01)

    # Sized from what will run: --epochs 4 gives a 4-epoch schedule, not a crash at epoch 3.
    epochs = ctx.epochs or 2
    steps_per_epoch = math.ceil(len(train_loader) / accumulate)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=opt.lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    return {
        "model": model,
        "optimizer": optimizer,
        "loss_fn": loss_fn,
        "train_loader": train_loader,
        "val_loader": val_loader,
        "scheduler": scheduler,
        "scheduler_interval": "step",
        "epochs": epochs,
        "accumulate": accumulate,  # micro-batches per optimizer step, loss averaged over them
        "amp": "bf16",  # autocast; bf16 needs no loss scaling
        "grad_clip": 1.0,  # max total gradient norm (recorded as grad_norm before clipping)
        "hparams": {**vars(opt), "vocab": len(chars), "block": BLOCK, "accumulate": accumulate},
    }
