"""Shape (b): nanoGPT's train.py, cut down: module-level config, get_batch() drawing from torch's
global RNG, a small GPT, AdamW with decay / no-decay param groups, get_lr(it) (linear warmup then
cosine decay) assigned to every param group each iteration, gradient accumulation, GradScaler
(scale -> backward, unscale_, clip_grad_norm_, step, update), estimate_loss() under no_grad.
No main(), no __name__ guard: everything runs at module level. The "text" is a generated token
stream, so nothing is downloaded.

    python nanogpt_train.py --epochs 2 --lr 0.01
"""

import argparse
import json
import math
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F

import dltui

# -----------------------------------------------------------------------------
# default config values, overridable from the command line
parser = argparse.ArgumentParser(description="train a tiny GPT on a generated token stream")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--steps-per-epoch", type=int, default=30, help="iterations between evals")
parser.add_argument("--lr", type=float, default=6e-4, help="max learning rate")
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--gradient-accumulation-steps", type=int, default=4)
parser.add_argument("--seed", type=int, default=1337)
parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
parser.add_argument("--grad-scaler", action="store_true", help="use the GradScaler even in float32")
parser.add_argument("--init-scale", type=float, default=2.0**16, help="GradScaler's initial scale")
parser.add_argument("--trace", metavar="FILE", help="write a JSON line per iteration (tests)")
args = parser.parse_args()

eval_interval = args.steps_per_epoch
log_interval = 10
eval_iters = 10
gradient_accumulation_steps = args.gradient_accumulation_steps
batch_size = args.batch_size
block_size = 32
# model
n_layer = 2
n_head = 2
n_embd = 32
dropout = 0.0
bias = False
vocab_size = 48
# adamw optimizer
learning_rate = args.lr
max_iters = args.epochs * args.steps_per_epoch
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip gradients at this value, or disable if == 0.0
# learning rate decay settings
decay_lr = True
warmup_iters = max(1, args.steps_per_epoch // 3)
lr_decay_iters = max_iters
min_lr = learning_rate / 10
# system
device = "cpu"
dtype = args.dtype
# -----------------------------------------------------------------------------

torch.manual_seed(args.seed)
device_type = "cuda" if "cuda" in device else "cpu"
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
ctx = (
    nullcontext()
    if dtype == "float32"
    else torch.amp.autocast(device_type=device_type, dtype=ptdtype)
)


# data: a stream of "words" (fixed random token strings) drawn with Zipf-like frequencies
def make_text(n_tokens, gen):
    lengths = torch.randint(2, 7, (64,), generator=gen)
    words = [torch.randint(1, vocab_size, (int(k),), generator=gen) for k in lengths]
    weights = 1.0 / torch.arange(1, len(words) + 1, dtype=torch.float)
    picks = torch.multinomial(weights, n_tokens // 3, replacement=True, generator=gen)
    stream = torch.cat(
        [torch.cat([words[i], torch.zeros(1, dtype=torch.long)]) for i in picks.tolist()]
    )
    return stream[:n_tokens]


text = make_text(40_000, torch.Generator().manual_seed(0))
n = int(0.9 * len(text))
train_data, val_data = text[:n], text[n:]


def get_batch(split):
    data = train_data if split == "train" else val_data
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return x.to(device), y.to(device)


# model
class LayerNorm(nn.Module):
    """LayerNorm but with an optional bias. PyTorch doesn't support simply bias=False"""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(n_embd, dim=2)
        k = k.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, n_head, C // n_head).transpose(1, 2)
        v = v.view(B, T, n_head, C // n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention()
        self.ln_2 = LayerNorm(n_embd, bias=bias)
        self.mlp = MLP()

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                drop=nn.Dropout(dropout),
                h=nn.ModuleList([Block() for _ in range(n_layer)]),
                ln_f=LayerNorm(n_embd, bias=bias),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1
            )
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas)


iter_num = 0
model = GPT()
model.to(device)

# initialize a GradScaler. If enabled=False scaler is a no-op
scaler = torch.amp.GradScaler(
    device_type, enabled=(dtype == "float16" or args.grad_scaler), init_scale=args.init_scale
)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)


# --trace FILE: a JSON line per iteration for dltui's acceptance tests (what backward() saw, the LR
# the optimizer used and the LR this script set). It only reads values; it changes nothing.
trace_file = open(args.trace, "w") if args.trace else None
seen = {}
if trace_file:
    optimizer.register_step_pre_hook(
        lambda o, a, k: seen.update(
            optimizer={"stepped": False, "lr": [g["lr"] for g in o.param_groups]}
        )
    )
    optimizer.register_step_post_hook(lambda o, a, k: seen["optimizer"].update(stepped=True))
    trace_file.write(
        json.dumps(
            {
                "models": {
                    "model": {
                        "params": [k for k, p in model.named_parameters()],
                        "state": list(model.state_dict()),
                    }
                }
            }
        )
        + "\n"
    )


@torch.no_grad()
def estimate_loss():
    out = {}
    model.eval()
    for split in ["train", "val"]:
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            X, Y = get_batch(split)
            with ctx:
                logits, loss = model(X, Y)
            losses[k] = loss.item()
        out[split] = losses.mean()
    model.train()
    return out


# learning rate decay scheduler (cosine with warmup)
def get_lr(it):
    # 1) linear warmup for warmup_iters steps
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    # 2) if it > lr_decay_iters, return min learning rate
    if it > lr_decay_iters:
        return min_lr
    # 3) in between, use cosine decay down to min learning rate
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # coeff ranges 0..1
    return min_lr + coeff * (learning_rate - min_lr)


# training loop
X, Y = get_batch("train")  # fetch the very first batch
best_val_loss = 1e9
lossf = float("nan")
while True:
    # determine and set the learning rate for this iteration
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr

    # evaluate the loss on train/val sets
    if iter_num % eval_interval == 0:
        losses = estimate_loss()
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        best_val_loss = min(best_val_loss, float(losses["val"]))

    # forward backward update, with optional gradient accumulation to simulate larger batch size
    micro_losses = []
    for micro_step in range(gradient_accumulation_steps):  # noqa: B007
        with ctx:
            logits, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps  # scale the loss to account for accumulation
        micro_losses.append(loss.item())
        # immediately async prefetch next batch while model is doing the forward pass
        X, Y = get_batch("train")
        # backward pass, with gradient scaling if training in fp16
        scaler.scale(loss).backward()
    # clip the gradient
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    # step the optimizer and scaler if training in fp16
    scaler.step(optimizer)
    scaler.update()
    # flush the gradients as soon as we can, no need for this memory anymore
    optimizer.zero_grad(set_to_none=True)
    dltui.log(grad_norm=norm)  # a 0-d tensor: dltui reads it back later, without a sync here

    if trace_file:
        trace_file.write(
            json.dumps(
                {
                    "opt": seen,
                    "training": model.training,
                    "it": iter_num,
                    "losses": micro_losses,
                    "lr_set": [lr, lr],
                    "log": {"grad_norm": float(norm)},
                }
            )
            + "\n"
        )
        trace_file.flush()
        seen = {}

    if iter_num % log_interval == 0:
        # get loss as float. note: this is a CPU-GPU sync point
        # scale up to undo the division above, approximating the true total loss (exact would have been a sum)
        lossf = loss.item() * gradient_accumulation_steps
        print(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.3e}")
    iter_num += 1

    # termination conditions
    if iter_num > max_iters:
        break

lossf = loss.item() * gradient_accumulation_steps
print(f"best val loss {best_val_loss:.4f}")
print(f"final loss {lossf!r}")
