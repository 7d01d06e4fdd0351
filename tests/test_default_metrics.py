"""dltui's default metrics (engine/default_metrics.py) against torchmetrics, which they replace
for the defaults: the same batch values and accumulated values on random batches (several shapes,
ignore_index, an all-ignored batch, binary logits), on the CPU and on CUDA where there is one;
the default-metric path leaves torchmetrics and scipy unimported; compute() sums over DDP ranks."""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dltui.engine.default_metrics import (
    BinaryAccuracy,
    ClassAccuracy,
    MeanAbsoluteError,
    Perplexity,
)
from dltui.engine.metrics import Feed, MetricSet, user_feed

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]
Batch = tuple[torch.Tensor, torch.Tensor]


@pytest.fixture(scope="module")
def tm():
    """torchmetrics, imported only by the tests that compare against it (~2.6 s)."""
    import torchmetrics

    return torchmetrics


def ignoring(target: torch.Tensor, frac: float, value: int, g: torch.Generator) -> torch.Tensor:
    """`target` with about `frac` of its entries set to `value`."""
    return torch.where(torch.rand(target.shape, generator=g) < frac, value, target)


def agree(ours, theirs, feed: Feed, batches: list[Batch], device: str) -> None:
    """Each batch's value and the accumulated value agree, for `m(p, t)` and for `update()`;
    a deepcopy (MetricSet's val copy) is independent, and reset() starts afresh."""
    ours, theirs = ours.to(device), theirs.to(device)
    quiet = copy.deepcopy(ours)
    for out, target in batches:
        p, t = feed(out.to(device), target.to(device))
        got = ours(p, t)
        assert got.ndim == 0 and got.device.type == torch.device(device).type
        torch.testing.assert_close(got, theirs(p, t).float(), equal_nan=True)
        quiet.update(p, t)
    want = theirs.compute().float()
    torch.testing.assert_close(ours.compute(), want, equal_nan=True)
    torch.testing.assert_close(quiet.compute(), want, equal_nan=True)
    ours.reset()
    p, t = feed(batches[0][0].to(device), batches[0][1].to(device))
    ours.update(p, t)
    theirs.reset()
    theirs.update(p, t)
    torch.testing.assert_close(ours.compute(), theirs.compute().float(), equal_nan=True)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ignore", [None, -100, 2])
def test_multiclass_rows(tm, gen, device: str, ignore: int | None) -> None:
    batches = [
        (torch.randn(n, c, generator=gen), torch.randint(0, c, (n,), generator=gen))
        for n, c in [(7, 5), (64, 5), (1, 5)]
    ]
    if ignore is not None:
        batches = [(o, ignoring(t, 0.3, ignore, gen)) for o, t in batches]
        batches.insert(1, (torch.randn(4, 5, generator=gen), torch.full((4,), ignore)))
    ours = ClassAccuracy(5, ignore_index=ignore)
    theirs = tm.classification.MulticlassAccuracy(
        num_classes=5, average="micro", ignore_index=ignore, validate_args=False
    )
    agree(ours, theirs, Feed(classes_last=True), batches, device)


@pytest.mark.parametrize("device", DEVICES)
def test_multiclass_classes_in_dim_1(tm, gen, device: str) -> None:
    """[B, C, H, W] scores with [B, H, W] labels, as a segmentation model's; 255 ignored."""
    batches = [
        (torch.randn(b, 4, h, w, generator=gen), torch.randint(0, 4, (b, h, w), generator=gen))
        for b, h, w in [(2, 3, 5), (3, 8, 8)]
    ]
    batches = [(o, ignoring(t, 0.2, 255, gen)) for o, t in batches]
    ours = ClassAccuracy(4, ignore_index=255)
    theirs = tm.classification.MulticlassAccuracy(
        num_classes=4, average="micro", ignore_index=255, validate_args=False
    )
    agree(ours, theirs, Feed(), batches, device)


@pytest.mark.parametrize("device", DEVICES)
def test_language_model_accuracy_and_perplexity(tm, gen, device: str) -> None:
    """[B, T, V] logits with [B, T] tokens, padding (-100) ignored, one batch all padding."""
    batches = [
        (3 * torch.randn(b, t, 11, generator=gen), torch.randint(0, 11, (b, t), generator=gen))
        for b, t in [(2, 9), (4, 16)]
    ]
    batches = [(o, ignoring(t, 0.25, -100, gen)) for o, t in batches]
    batches.append((torch.randn(2, 3, 11, generator=gen), torch.full((2, 3), -100)))
    agree(
        ClassAccuracy(11, ignore_index=-100),
        tm.classification.MulticlassAccuracy(
            num_classes=11, average="micro", ignore_index=-100, validate_args=False
        ),
        Feed(classes_last=True),
        batches,
        device,
    )
    agree(
        Perplexity(ignore_index=-100),
        tm.text.Perplexity(ignore_index=-100),
        Feed(as_is=True),
        batches,
        device,
    )
    no_pad = [(o, t.clamp(min=0)) for o, t in batches[:2]]
    agree(Perplexity(), tm.text.Perplexity(), Feed(as_is=True), no_pad, device)


def binary_cases(g: torch.Generator) -> Iterator[tuple[str, Feed, list[Batch]]]:
    labels = [torch.randint(0, 2, (n,), generator=g) for n in (9, 40, 3)]
    logits = [torch.randn(len(t), 1, generator=g) * 3 for t in labels]  # [N, 1] out, [N] target
    yield "logits, BCEWithLogitsLoss", Feed(sigmoid=True), list(zip(logits, labels, strict=True))
    floats = [t.float() for t in labels]
    probs = [x.sigmoid() for x in logits]
    yield "probabilities, BCELoss", Feed(), list(zip(probs, floats, strict=True))
    small = (torch.tensor([0.3, 0.2, -2.0, 3.0]), torch.ones(4, dtype=torch.long))  # 3 of 4
    raw = [*zip(logits, labels, strict=True), small]
    yield "raw scores: a sigmoid if any is outside [0, 1]", Feed(), raw
    exact = [torch.tensor([0.5, 0.50001, 0.0, 1.0]), torch.tensor([1.0, 0.2])]
    yield "at the threshold", Feed(), [(p, (p > 0.3).long()) for p in exact]


@pytest.mark.parametrize("device", DEVICES)
def test_binary(tm, gen, device: str) -> None:
    for case, feed, batches in binary_cases(gen):
        theirs = tm.classification.BinaryAccuracy(validate_args=False)
        try:
            agree(BinaryAccuracy(), theirs, feed, batches, device)
        except AssertionError as e:
            raise AssertionError(f"{case}: {e}") from None


@pytest.mark.parametrize("device", DEVICES)
def test_mean_absolute_error(tm, gen, device: str) -> None:
    for shape in [(17,), (5, 3), (2, 4, 6)]:
        batches = [
            (torch.randn(shape, generator=gen), torch.randn(shape, generator=gen) * 4)
            for _ in range(3)
        ]
        agree(MeanAbsoluteError(), tm.regression.MeanAbsoluteError(), Feed(), batches, device)


def test_sums_are_exact_types_and_bad_shapes_say_so() -> None:
    """Counts are int64 and sums float64, so a long validation pass loses nothing; a batch
    that cannot be scored raises one clear ValueError (MetricSet drops the metric)."""
    acc, mae, ppl = ClassAccuracy(3), MeanAbsoluteError(), Perplexity()
    assert (acc.total.dtype, acc.count.dtype) == (torch.int64, torch.int64)
    assert mae.total.dtype == ppl.total.dtype == torch.float64
    big = 2**24 + 1  # float32 cannot hold it; the count must
    label = torch.zeros(1, dtype=torch.long).expand(big)  # labels as preds; no memory to speak of
    acc.update(label, label)
    acc.update(torch.zeros(1, 3), torch.ones(1, dtype=torch.long))
    assert int(acc.count) == big + 1
    assert int(acc.total) == big
    with pytest.raises(ValueError, match=r"accuracy: predictions \[4\] do not match"):
        acc(torch.zeros(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="perplexity wants"):
        ppl(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="differ in shape"):
        mae(torch.zeros(2, 3), torch.zeros(3, 2))


def test_recipe_binary_accuracy_still_gets_probabilities(tm) -> None:
    """A recipe's own torchmetrics BinaryAccuracy (either spelling) under BCEWithLogitsLoss is
    fed sigmoid(logits), found without importing torchmetrics in user_feed."""
    logit = nn.BCEWithLogitsLoss()
    assert user_feed(tm.classification.BinaryAccuracy(), logit).sigmoid
    assert user_feed(tm.Accuracy(task="binary"), logit).sigmoid
    assert not user_feed(tm.classification.BinaryAccuracy(), nn.BCELoss()).sigmoid
    assert not user_feed(tm.classification.MulticlassAccuracy(3), logit).sigmoid
    assert not user_feed(BinaryAccuracy(), logit).sigmoid  # never a recipe's own metric


def run_defaults(device: str, no_sync: Callable[[], Any] = contextlib.nullcontext) -> list[str]:
    """Every default kind through MetricSet as the engine runs it: chosen at the first batch
    (one host read, for binary targets), then a batch value and a val batch under `no_sync`;
    returns the val metrics' names."""
    dev = torch.device(device)
    cases = [
        (nn.CrossEntropyLoss(), torch.randn(8, 5), torch.randint(0, 5, (8,))),
        (nn.CrossEntropyLoss(), torch.randn(2, 6, 7), torch.randint(0, 7, (2, 6))),
        (nn.CrossEntropyLoss(), torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))),
        (nn.BCEWithLogitsLoss(), torch.randn(8, 1), torch.randint(0, 2, (8, 1)).float()),
        (nn.MSELoss(), torch.randn(8, 2), torch.randn(8, 2)),
    ]
    names = []
    for loss_fn, out, target in cases:
        out, target = out.to(dev), target.to(dev)
        ms = MetricSet(None, loss_fn, dev)
        ms.ensure(out, target)
        with no_sync():
            values = ms.batch_values(out, target)
            ms.update_val(out, target)
        assert values, ms.reason
        names += sorted(ms.compute_val())
    return names


DEFAULT_NAMES = ["acc", "acc", "ppl", "acc", "acc", "mae"]


def test_default_metrics_import_neither_torchmetrics_nor_scipy() -> None:
    """In a fresh process (this one may have imported them): the defaults, and user_feed."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from torch import nn\n"
        "from test_default_metrics import run_defaults, user_feed\n"
        "names = run_defaults('cpu'); user_feed(object(), nn.BCEWithLogitsLoss())\n"
        "print(json.dumps([names, 'torchmetrics' in sys.modules, 'scipy' in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    names, torchmetrics, scipy = json.loads(done.stdout)
    assert names == DEFAULT_NAMES
    assert not torchmetrics and not scipy


@contextlib.contextmanager
def cuda_syncs_raise() -> Iterator[None]:
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_batch_values_never_sync_on_cuda() -> None:
    assert run_defaults("cuda", cuda_syncs_raise) == DEFAULT_NAMES


# One rank of a two-process gloo group: its own half of the batches, then compute().
RANK = """
import json, sys, torch
import torch.distributed as dist
from dltui.engine.default_metrics import ClassAccuracy, MeanAbsoluteError
rank = int(sys.argv[2])
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=rank, world_size=2)
g = torch.Generator().manual_seed(rank)
acc, mae = ClassAccuracy(3, ignore_index=-100), MeanAbsoluteError()
target = torch.randint(0, 3, (10 + 7 * rank,), generator=g)
target[: 2 + rank] = -100
scores, x = torch.randn(len(target), 3, generator=g), torch.randn(5 + rank, generator=g)
acc.update(scores, target)
mae.update(x, torch.zeros_like(x))
local = {"acc": acc.compute().item(), "mae": mae.compute().item()}
print(json.dumps({"rank": rank, "local_count": int(acc.count), "synced": local,
    "hits": int(acc.total), "abs": float(mae.total), "n": int(mae.count)}))
dist.destroy_process_group()
"""


def test_compute_sums_over_ddp_ranks(tmp_path) -> None:
    """Under a process group, compute() is over every rank's batches (a DDP recipe's val
    accuracy covers the whole val set, as torchmetrics' did), and the local state is kept."""
    rendezvous = str(tmp_path / "rendezvous")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, rendezvous, str(r)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            outs.append(json.loads(out))
    finally:
        for p in procs:
            p.kill()
    hits = sum(o["hits"] for o in outs)
    counted = sum(o["local_count"] for o in outs)
    abs_sum, n = sum(o["abs"] for o in outs), sum(o["n"] for o in outs)
    assert outs[0]["local_count"] != counted  # the state stayed local; only compute() summed
    for o in outs:
        assert o["synced"]["acc"] == pytest.approx(hits / counted, rel=1e-6)
        assert o["synced"]["mae"] == pytest.approx(abs_sum / n, rel=1e-6)
