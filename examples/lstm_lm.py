"""An LSTM language model that carries its hidden state from batch to batch.

The corpus is generated here (seeded, offline) from a small word-level Markov chain. It is cut
into 16 parallel streams and read in order, 32 tokens at a time, so each batch continues
where the last one stopped: the LSTM's hidden state is carried over (detached: gradients
stop at the batch edge, truncated backpropagation through time). `on_epoch_start(ctx)`
drops it when the text starts over. The outputs are logits [B, T, V] against targets
[B, T], so dltui charts token accuracy and perplexity without a `metrics` line.

Validation reads the held-out streams in one pass, carrying the state the same way.

Run it:  dltui train examples/lstm_lm.py
"""

import torch
from torch import nn
from torch.nn import functional as F

torch.manual_seed(0)

# --- data -------------------------------------------------------------------------------
VOCAB, STREAMS, BPTT = 40, 16, 32
# Each word has 3 likely successors: a text with structure an LSTM can learn.
successors = torch.randint(0, VOCAB, (VOCAB, 3))


def corpus(n: int, g: torch.Generator) -> torch.Tensor:
    ids = [0]
    for _ in range(n - 1):
        nxt = successors[ids[-1], torch.randint(0, 3, (), generator=g)]
        ids.append(
            int(nxt)
            if torch.rand((), generator=g) > 0.1
            else int(torch.randint(0, VOCAB, (), generator=g))
        )
    return torch.tensor(ids)


def streams(ids: torch.Tensor) -> torch.Tensor:
    """[STREAMS, N]: the corpus as parallel rows, each read left to right."""
    n = len(ids) // STREAMS
    return ids[: n * STREAMS].view(STREAMS, n)


g = torch.Generator().manual_seed(0)
train_ids, val_ids = streams(corpus(24_000, g)), streams(corpus(4_000, g))
# Batch i is columns [32 i, 32 i + 32) of every stream; the target is the next token.
train_loader = [
    (train_ids[:, i : i + BPTT], train_ids[:, i + 1 : i + BPTT + 1])
    for i in range(0, train_ids.shape[1] - BPTT - 1, BPTT)
]
val_loader = [(val_ids[:, :-1], val_ids[:, 1:])]  # the whole held-out text: one batch


# --- model ------------------------------------------------------------------------------
class LSTMLM(nn.Module):
    def __init__(self, hidden: int = 96):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.lstm = nn.LSTM(32, hidden, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, x: torch.Tensor, state=None):
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state  # logits [B, T, VOCAB]


model = LSTMLM()


# --- loss -------------------------------------------------------------------------------
def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


# --- optimizer, scheduler ---------------------------------------------------------------
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

# --- the carried state ------------------------------------------------------------------
state = None  # (h, c) after the last training batch


def on_epoch_start(ctx):
    global state
    state = None  # the streams start over: nothing to carry


def train_step(batch, ctx):
    global state
    x, y = batch
    logits, new_state = model(x, state)
    state = tuple(s.detach() for s in new_state)  # keep the values, cut the graph
    return loss_fn(logits, y), logits, y


def eval_step(batch, ctx):
    x, y = batch
    chunks, carried = [], None  # the held-out text read in BPTT chunks, state carried across
    for i in range(0, x.shape[1], BPTT):
        logits, carried = model(x[:, i : i + BPTT], carried)
        chunks.append(logits)
    logits = torch.cat(chunks, dim=1)
    return loss_fn(logits, y), logits, y


epochs = 5
hparams = {"vocab": VOCAB, "streams": STREAMS, "bptt": BPTT, "hidden": 96, "lr": 3e-3}
