"""dltui's default metrics: accuracy, mean absolute error and perplexity, giving torchmetrics'
values through the protocol MetricSet uses, without importing torchmetrics (whose import pulls in
scipy: 1.7-2.9 s measured, on the training thread of every recipe run that relies on the defaults).

Each metric keeps two device tensors, a sum and a count (integer counts; sums in float64 except
on MPS, which has no float64), so a long validation pass stays exact. `m(preds, target)` adds the
batch and returns its value as a 0-d float32 device tensor: no host read, no sync. `compute()`
sums over the ranks when a process group is up (as torchmetrics' compute does), so a DDP run's
validation accuracy is over every rank's shard.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# cross_entropy's own default: a target equal to it is never a token, with or without ignore_index
_CE_IGNORE = -100


def _float_for(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class _SumCount:
    """A running sum and count on the device, and the metric protocol over them. Subclasses
    say what one batch adds (`_batch`) and what a sum and a count mean (`_value`)."""

    integer_sum = False  # accuracy counts hits (int64); the others sum floats

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.reset()

    def _batch(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor | int]:
        raise NotImplementedError

    def _value(self, total: Tensor, count: Tensor | int) -> Tensor:
        raise NotImplementedError

    def __call__(self, preds: Tensor, target: Tensor) -> Tensor:
        total, count = self._batch(preds, target)
        self._add(total, count)
        return self._value(total, count).float()

    def update(self, preds: Tensor, target: Tensor) -> None:
        self._add(*self._batch(preds, target))

    def _add(self, total: Tensor, count: Tensor | int) -> None:
        self.total += total  # in place: a Python-int count goes in as a kernel argument, no copy
        self.count += count

    def compute(self) -> Tensor:
        total, count = self.total, self.count
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            both = torch.stack([total.double(), count.double()])  # int64 counts exact to 2**53
            torch.distributed.all_reduce(both)  # one collective; every rank computes at val end
            total, count = both[0].to(total.dtype), both[1].to(count.dtype)
        return self._value(total, count).float()

    def reset(self) -> None:
        sum_dtype = torch.int64 if self.integer_sum else _float_for(self.device)
        self.total = torch.zeros((), dtype=sum_dtype, device=self.device)
        self.count = torch.zeros((), dtype=torch.int64, device=self.device)

    def to(self, device: torch.device | str) -> _SumCount:
        self.device = torch.device(device)
        sum_dtype = self.total.dtype if self.integer_sum else _float_for(self.device)
        self.total = self.total.to(self.device, sum_dtype)
        self.count = self.count.to(self.device)
        return self


class _Accuracy(_SumCount):
    """Hits over counted elements, both int64."""

    integer_sum = True
    name = "accuracy"

    def _same_size(self, preds: Tensor, target: Tensor) -> None:
        if preds.numel() != target.numel():
            raise ValueError(
                f"{self.name}: predictions {list(preds.shape)} do not match targets "
                f"{list(target.shape)}"
            )

    def _value(self, total: Tensor, count: Tensor | int) -> Tensor:
        """total / count (divided in float64: counts past 2**24 stay exact), and 0 for no
        counted element (torchmetrics' zero_division default)."""
        hits = total.to(_float_for(total.device))
        if isinstance(count, int):
            return hits / count if count else torch.zeros_like(hits)
        return torch.where(count != 0, hits / count.clamp(min=1), 0.0)


class ClassAccuracy(_Accuracy):
    """Multiclass accuracy, micro average (as torchmetrics' MulticlassAccuracy(average="micro")):
    preds [N, C] or [B, C, ...] scores (argmax over dim 1) or labels shaped like the target;
    targets equal to `ignore_index` are left out."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def _batch(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor | int]:
        if preds.is_floating_point() and preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=1)
        self._same_size(preds, target)
        hit = preds.reshape(-1) == target.reshape(-1)
        if self.ignore_index is None:
            return hit.sum(), target.numel()
        keep = target.reshape(-1) != self.ignore_index
        return (hit & keep).sum(), keep.sum()


class BinaryAccuracy(_Accuracy):
    """Binary accuracy at threshold 0.5 (as torchmetrics' BinaryAccuracy): scores outside [0, 1]
    anywhere in the batch are taken as logits and go through a sigmoid first; only targets that
    are 0 or 1 count."""

    name = "binary accuracy"
    threshold = 0.5

    def _batch(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor | int]:
        if preds.is_floating_point():
            logits = ((preds < 0) | (preds > 1)).any()  # a device tensor: no host read
            preds = torch.where(logits, preds.sigmoid(), preds) > self.threshold
        self._same_size(preds, target)
        target = target.reshape(-1)
        counted = (target == 0) | (target == 1)
        return ((preds.reshape(-1) == target) & counted).sum(), counted.sum()


class MeanAbsoluteError(_SumCount):
    """Mean of |preds - target| over every element (as torchmetrics' MeanAbsoluteError)."""

    def _batch(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor | int]:
        if preds.shape != target.shape:
            raise ValueError(
                f"mean absolute error: predictions {list(preds.shape)} and targets "
                f"{list(target.shape)} differ in shape"
            )
        total = (preds - target).abs().sum(dtype=self.total.dtype)
        return total, target.numel()

    def _value(self, total: Tensor, count: Tensor | int) -> Tensor:
        return total / count  # no element: nan, as torchmetrics


class Perplexity(_SumCount):
    """exp(mean negative log-likelihood per token) of [B, T, V] logits against [B, T] token ids
    (as torchmetrics' Perplexity); targets equal to `ignore_index` are left out."""

    def __init__(self, ignore_index: int | None = None) -> None:
        self.ignore_index = _CE_IGNORE if ignore_index is None else ignore_index
        super().__init__()

    def _batch(self, preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor | int]:
        if preds.ndim != 3 or target.ndim != 2 or preds.shape[:2] != target.shape:
            raise ValueError(
                f"perplexity wants [batch, seq, vocab] logits and [batch, seq] targets, got "
                f"{list(preds.shape)} and {list(target.shape)}"
            )
        flat = target.reshape(-1).long()
        nll = F.cross_entropy(  # log-softmax and pick in one kernel: no [N, V] probabilities
            preds.reshape(-1, preds.shape[-1]),
            flat,
            ignore_index=self.ignore_index,
            reduction="sum",
        )
        return nll.to(self.total.dtype), (flat != self.ignore_index).sum()

    def _value(self, total: Tensor, count: Tensor | int) -> Tensor:
        return torch.exp(total / count)  # every token ignored: nan, as torchmetrics
