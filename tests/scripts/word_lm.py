"""Shape (d): PyTorch's word_language_model example (examples/word_language_model/main.py): an
LSTM language model over batchified token streams, truncated BPTT with the hidden state carried
across batches and detached (repackage_hidden), clip_grad_norm_, and the LR annealed by 4 when
the validation loss stops improving, assigned to the optimizer's param groups. The corpus is a
generated token stream (a random Markov chain), so nothing is downloaded. Logs perplexity with
dltui.log, and the validation perplexity with phase="val".

    python word_lm.py --epochs 2 --lr 0.01
"""

import argparse
import bisect
import json
import math

import torch
import torch.nn as nn

import dltui

parser = argparse.ArgumentParser(description="PyTorch LSTM language model on a generated corpus")
parser.add_argument("--emsize", type=int, default=32, help="size of word embeddings")
parser.add_argument("--nhid", type=int, default=64, help="number of hidden units per layer")
parser.add_argument("--nlayers", type=int, default=2, help="number of layers")
parser.add_argument("--lr", type=float, default=0.002, help="initial learning rate")
parser.add_argument("--clip", type=float, default=0.25, help="gradient clipping")
parser.add_argument("--epochs", type=int, default=6, help="upper epoch limit")
parser.add_argument(
    "--batch_size", "--batch-size", type=int, default=16, metavar="N", help="batch size"
)
parser.add_argument("--bptt", type=int, default=20, help="sequence length")
parser.add_argument(
    "--dropout", type=float, default=0.2, help="dropout applied to layers (0 = no dropout)"
)
parser.add_argument("--corpus-size", type=int, default=20_000, help="tokens of training text")
parser.add_argument("--seed", type=int, default=1111, help="random seed")
parser.add_argument("--log-interval", type=int, default=10, metavar="N", help="report interval")
parser.add_argument("--trace", metavar="FILE", help="write a JSON line per batch (tests)")
args = parser.parse_args()

# Set the random seed manually for reproducibility.
torch.manual_seed(args.seed)
device = torch.device("cpu")

###############################################################################
# Load data
###############################################################################
ntokens = 40


def markov_corpus(n, generator):
    """A token stream from a fixed random Markov chain with peaked transitions."""
    logits = 3.0 * torch.randn(ntokens, ntokens, generator=torch.Generator().manual_seed(7))
    cdf = torch.softmax(logits, dim=1).cumsum(1).tolist()
    out, tok = [], 0
    for u in torch.rand(n, generator=generator).tolist():
        tok = min(bisect.bisect(cdf[tok], u), ntokens - 1)
        out.append(tok)
    return torch.tensor(out)


def batchify(data, bsz):
    # Work out how cleanly we can divide the dataset into bsz parts.
    nbatch = data.size(0) // bsz
    # Trim off any extra elements that wouldn't cleanly fit (remainders).
    data = data.narrow(0, 0, nbatch * bsz)
    # Evenly divide the data across the bsz batches.
    data = data.view(bsz, -1).t().contiguous()
    return data.to(device)


gen = torch.Generator().manual_seed(args.seed)
eval_batch_size = 10
train_data = batchify(markov_corpus(args.corpus_size, gen), args.batch_size)
val_data = batchify(markov_corpus(2_000, gen), eval_batch_size)


###############################################################################
# Build the model
###############################################################################
class RNNModel(nn.Module):
    """Container module with an encoder, a recurrent module, and a decoder."""

    def __init__(self, ntoken, ninp, nhid, nlayers, dropout=0.5):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.init_weights()
        self.nhid = nhid
        self.nlayers = nlayers

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output)
        decoded = decoded.view(-1, self.ntoken)
        return nn.functional.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (
            weight.new_zeros(self.nlayers, bsz, self.nhid),
            weight.new_zeros(self.nlayers, bsz, self.nhid),
        )


model = RNNModel(ntokens, args.emsize, args.nhid, args.nlayers, args.dropout).to(device)
criterion = nn.NLLLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

# --trace FILE: a JSON line per batch for dltui's acceptance tests (what backward() saw, the LR the
# optimizer used and the LR this script set). It only reads values; it changes nothing.
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


###############################################################################
# Training code
###############################################################################
def repackage_hidden(h):
    """Wraps hidden states in new Tensors, to detach them from their history."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    else:
        return tuple(repackage_hidden(v) for v in h)


def get_batch(source, i):
    seq_len = min(args.bptt, len(source) - 1 - i)
    data = source[i : i + seq_len]
    target = source[i + 1 : i + 1 + seq_len].view(-1)
    return data, target


def evaluate(data_source):
    # Turn on evaluation mode which disables dropout.
    model.eval()
    total_loss = 0.0
    hidden = model.init_hidden(eval_batch_size)
    with torch.no_grad():
        for i in range(0, data_source.size(0) - 1, args.bptt):
            data, targets = get_batch(data_source, i)
            output, hidden = model(data, hidden)
            hidden = repackage_hidden(hidden)
            total_loss += len(data) * criterion(output, targets).item()
    return total_loss / (len(data_source) - 1)


def train(epoch):
    # Turn on training mode which enables dropout.
    global seen
    model.train()
    total_loss = 0.0
    last_loss = None
    hidden = model.init_hidden(args.batch_size)
    for batch, i in enumerate(range(0, train_data.size(0) - 1, args.bptt)):
        data, targets = get_batch(train_data, i)
        # Starting each batch, we detach the hidden state from how it was previously produced.
        # If we didn't, the model would try backpropagating all the way to start of the dataset.
        hidden = repackage_hidden(hidden)
        optimizer.zero_grad()
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()

        # `clip_grad_norm` helps prevent the exploding gradient problem in RNNs / LSTMs.
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()

        total_loss += loss.item()
        last_loss = loss.item()
        logged = {}
        if batch % args.log_interval == 0 and batch > 0:
            cur_loss = total_loss / args.log_interval
            logged = {"ppl": math.exp(cur_loss)}
            dltui.log(**logged)
            print(
                f"| epoch {epoch:3d} | {batch:5d}/{len(train_data) // args.bptt:5d} batches | lr {lr:02.4f} | loss {cur_loss:5.2f} | ppl {math.exp(cur_loss):8.2f}"
            )
            total_loss = 0
        if trace_file:
            trace_file.write(
                json.dumps(
                    {
                        "opt": seen,
                        "training": model.training,
                        "epoch": epoch,
                        "losses": [loss.item()],
                        "lr_set": [lr],
                        "log": logged,
                    }
                )
                + "\n"
            )
            trace_file.flush()
            seen = {}
    return last_loss


# Loop over epochs.
lr = args.lr
best_val_loss = None
last_loss = None
for epoch in range(1, args.epochs + 1):
    last_loss = train(epoch)
    val_loss = evaluate(val_data)
    dltui.log(phase="val", val_ppl=math.exp(val_loss))
    if trace_file:
        trace_file.write(json.dumps({"val_log": {"val_ppl": math.exp(val_loss)}}) + "\n")
        trace_file.flush()
    print("-" * 89)
    print(
        f"| end of epoch {epoch:3d} | valid loss {val_loss:5.2f} | valid ppl {math.exp(val_loss):8.2f}"
    )
    print("-" * 89)
    # Save the model if the validation loss is the best we've seen so far.
    if not best_val_loss or val_loss < best_val_loss:
        best_val_loss = val_loss
    else:
        # Anneal the learning rate if no improvement has been seen in the validation dataset.
        lr /= 4.0
        for group in optimizer.param_groups:
            group["lr"] = lr

print(f"final loss {last_loss!r}")
