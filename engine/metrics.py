"""Pick the task's default metrics from the first batch, feed them (or the recipe's own
torchmetrics metrics) the right shapes, and drop (with a warning) any metric that fails instead of
failing the run."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .default_metrics import BinaryAccuracy, ClassAccuracy, MeanAbsoluteError, Perplexity

Notify = Callable[..., None]  # notify(message, level="warning", data=None)


@dataclass
class Feed:
    """How a batch's (output, target) become one metric's (preds, target)."""

    classes_last: bool = False  # [..., C] logits with [...] targets: flattened to [N, C] and [N]
    as_is: bool = False  # [B, T, V] logits with [B, T] targets, as perplexity wants them
    sigmoid: bool = False  # a binary logit, turned into a probability

    def __call__(
        self, output: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = output.detach()
        if out.is_floating_point() and out.dtype != torch.float64:
            out = out.float()  # bf16/fp16 outputs under autocast: metrics compute in float32
        if self.classes_last:
            return out.reshape(-1, out.shape[-1]), target.reshape(-1)
        if self.as_is:
            return out.contiguous(), target.contiguous()
        if out.shape != target.shape and out.numel() == target.numel():
            out = out.reshape(target.shape)
        if self.sigmoid:
            out = out.sigmoid()
        return out.contiguous(), target.contiguous()  # a strided target is not a failure


def _binary_targets(target: torch.Tensor) -> bool:
    # One host read, at the first batch only.
    return bool(((target == 0) | (target == 1)).all())


def _ignore_index(loss_fn: Any) -> int | None:
    ii = getattr(loss_fn, "ignore_index", None)
    return ii if isinstance(ii, int) and isinstance(loss_fn, nn.CrossEntropyLoss) else None


def choose(output: Any, target: Any, loss_fn: Any) -> tuple[dict[str, Any], dict[str, Feed], str]:
    """The default metrics for this task from the shapes, how to feed them, and a sentence
    saying why (recorded as an event). dltui's own metrics (default_metrics), not torchmetrics':
    importing torchmetrics costs ~2 s (it pulls in scipy), on the training thread."""
    if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor):
        return {}, {}, "no default metric: outputs or targets are not single tensors"
    shape = f"outputs {list(output.shape)}, targets {list(target.shape)} {str(target.dtype)[6:]}"
    int_target = not target.is_floating_point() and target.dtype != torch.bool
    ignore = _ignore_index(loss_fn)
    if int_target and output.is_floating_point() and output.ndim == target.ndim + 1:
        n = output.shape[-1]
        if output.shape[:-1] == target.shape and n > 1:  # [B, V] / [B], [B, T, V] / [B, T]
            acc = ClassAccuracy(num_classes=n, ignore_index=ignore)
            if output.ndim == 3:  # a language model: per-token accuracy and perplexity
                return (
                    {"acc": acc, "ppl": Perplexity(ignore_index=ignore)},
                    {"acc": Feed(classes_last=True), "ppl": Feed(as_is=True)},
                    f"language model: token accuracy over {n} classes and perplexity ({shape})",
                )
            return (
                {"acc": acc},
                {"acc": Feed(classes_last=True)},
                (f"multiclass accuracy over {n} classes ({shape})"),
            )
        c = output.shape[1]
        if output.shape[0] == target.shape[0] and output.shape[2:] == target.shape[1:] and c > 1:
            acc = ClassAccuracy(num_classes=c, ignore_index=ignore)
            return (
                {"acc": acc},
                {"acc": Feed()},
                f"multiclass accuracy over {c} classes in dim 1 ({shape})",
            )
    binary_loss = isinstance(loss_fn, (nn.BCEWithLogitsLoss, nn.BCELoss))
    same = output.numel() == target.numel()
    if same and (binary_loss or not target.is_floating_point()) and _binary_targets(target):
        feed = Feed(sigmoid=isinstance(loss_fn, nn.BCEWithLogitsLoss))
        return (
            {"acc": BinaryAccuracy()},
            {"acc": feed},
            f"binary accuracy ({shape})",
        )
    if same and target.is_floating_point():
        return (
            {"mae": MeanAbsoluteError()},
            {"mae": Feed()},
            f"regression: mean absolute error ({shape})",
        )
    return {}, {}, f"no default metric for {shape}: set `metrics` in the recipe"


def _is_torchmetrics_binary_accuracy(metric: Any) -> bool:
    # A recipe that made one has imported torchmetrics; one that did not must not pay for it here.
    tm = sys.modules.get("torchmetrics.classification")
    cls = getattr(tm, "BinaryAccuracy", None)
    return cls is not None and isinstance(metric, cls)


def user_feed(metric: Any, loss_fn: Any) -> Feed:
    """A recipe's own metric gets the output reshaped to the target's shape (and a probability
    for a binary accuracy over logits)."""
    return Feed(
        sigmoid=isinstance(loss_fn, nn.BCEWithLogitsLoss)
        and _is_torchmetrics_binary_accuracy(metric)
    )


class MetricSet:
    """Train and val copies of the run's metrics, on the run's device. A metric that raises is
    dropped from both, with a warning through `notify`; the run goes on."""

    def __init__(
        self,
        user: dict[str, Any] | None,
        loss_fn: Any,
        device: torch.device,
        notify: Notify | None = None,
    ) -> None:
        self.loss_fn = loss_fn
        self.device = device
        self.notify = notify or (lambda *a, **k: None)
        self.reason = "metrics from the recipe" if user else ""
        self.train: dict[str, Any] | None = None
        self.val: dict[str, Any] | None = None
        self.feeds: dict[str, Feed] = {}
        if user:
            self._set(user, {k: user_feed(m, loss_fn) for k, m in user.items()})

    def _set(self, metrics: dict[str, Any], feeds: dict[str, Feed]) -> None:
        self.feeds = feeds
        self.train = {k: m.to(self.device) for k, m in metrics.items()}
        self.val = {k: copy.deepcopy(m).to(self.device) for k, m in self.train.items()}

    def _drop(self, name: str, when: str, e: BaseException) -> None:
        for d in (self.train, self.val):
            if d is not None:
                d.pop(name, None)
        self.notify(
            f"metric '{name}' failed {when} and was dropped; training goes on "
            f"({type(e).__name__}: {e})",
            "warning",
            {"metric": name, "error": repr(e)},
        )

    def ensure(self, output: Any, target: Any) -> str | None:
        """Choose defaults on the first batch; returns the reason the first time, else None."""
        if self.train is not None:
            return None
        try:
            chosen, feeds, self.reason = choose(output, target, self.loss_fn)
        except Exception as e:  # dltui's own choice failed: no default metric, never a failed run
            chosen, feeds = {}, {}
            self.reason = f"no default metric: choosing one failed ({type(e).__name__}: {e})"
            self.notify(
                f"the default metric could not be chosen; training goes on ({e})", "warning"
            )
        self._set(chosen, feeds)
        return self.reason

    def _feed(self, name: str, output: Any, target: Any) -> tuple[Any, Any]:
        feed = self.feeds.get(name) or Feed()
        if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor):
            return (
                output,
                target,
            )  # a recipe's metric over structured outputs takes them as they are
        return feed(output, target)

    def batch_values(self, output: Any, target: Any) -> dict[str, torch.Tensor]:
        """This batch's value of each train metric (as device tensors: no host read here)."""
        out = {}
        for name, m in list((self.train or {}).items()):
            try:
                v = m(*self._feed(name, output, target))
            except Exception as e:
                self._drop(name, "on a training batch", e)
                continue
            out[name] = v if v.numel() == 1 else v.float().mean()  # per-class results: their mean
        return out

    def update_val(self, output: Any, target: Any) -> None:
        for name, m in list((self.val or {}).items()):
            try:
                m.update(*self._feed(name, output, target))
            except Exception as e:
                self._drop(name, "on a validation batch", e)

    def compute_val(self) -> dict[str, float]:
        out = {}
        for name, m in list((self.val or {}).items()):
            try:
                v = m.compute()
                out[name] = float(v) if v.numel() == 1 else float(v.float().mean())
            except Exception as e:
                self._drop(name, "computing its validation value", e)
            finally:
                m.reset()
        return out

    def reset_train(self) -> None:
        for m in (self.train or {}).values():
            m.reset()
