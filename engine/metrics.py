"""Pick the task's torchmetrics metric from the first batch, and feed metrics the right shapes."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def _binary_targets(target: torch.Tensor) -> bool:
    # One host read, at the first batch only.
    return bool(((target == 0) | (target == 1)).all())


def choose(output: Any, target: Any, loss_fn: Any) -> tuple[dict[str, Any], str]:
    """The default metrics for this task and a sentence saying why (recorded as an event)."""
    from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy
    from torchmetrics.regression import MeanAbsoluteError

    if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor):
        return {}, "no default metric: outputs or targets are not single tensors"
    shape = f"outputs {list(output.shape)}, targets {list(target.shape)} {str(target.dtype)[6:]}"
    float_target = target.is_floating_point()
    if not float_target and output.ndim == target.ndim + 1 and output.shape[1] > 1:
        n = output.shape[1]
        return {"acc": MulticlassAccuracy(num_classes=n, average="micro", validate_args=False)}, (
            f"multiclass accuracy over {n} classes ({shape})"
        )
    binary_loss = isinstance(loss_fn, (nn.BCEWithLogitsLoss, nn.BCELoss))
    same = output.numel() == target.numel()
    if same and (binary_loss or not float_target) and _binary_targets(target):
        return {"acc": BinaryAccuracy(validate_args=False)}, f"binary accuracy ({shape})"
    if same and float_target:
        return {"mae": MeanAbsoluteError()}, f"regression: mean absolute error ({shape})"
    return {}, f"no default metric for {shape}: set `metrics` in the recipe"


def preds_for(metric: Any, output: torch.Tensor, target: torch.Tensor, loss_fn: Any) -> torch.Tensor:
    """Shape the model output the way `metric` expects (logits -> probabilities for binary)."""
    from torchmetrics.classification import BinaryAccuracy

    out = output.detach()
    if out.shape != target.shape and out.numel() == target.numel():
        out = out.reshape(target.shape)
    if isinstance(metric, BinaryAccuracy) and isinstance(loss_fn, nn.BCEWithLogitsLoss):
        out = out.sigmoid()
    return out


class MetricSet:
    """Train and val copies of the run's metrics, on the run's device."""

    def __init__(self, user: dict[str, Any] | None, loss_fn: Any, device: torch.device) -> None:
        self.loss_fn = loss_fn
        self.device = device
        self.reason = "metrics from the recipe" if user else ""
        self.train: dict[str, Any] | None = None
        self.val: dict[str, Any] | None = None
        if user:
            self._set(user)

    def _set(self, metrics: dict[str, Any]) -> None:
        self.train = {k: m.to(self.device) for k, m in metrics.items()}
        self.val = {k: copy.deepcopy(m).to(self.device) for k, m in self.train.items()}

    def ensure(self, output: Any, target: Any) -> str | None:
        """Choose defaults on the first batch; returns the reason the first time, else None."""
        if self.train is not None:
            return None
        chosen, self.reason = choose(output, target, self.loss_fn)
        self._set(chosen)
        return self.reason

    def batch_values(self, output: Any, target: Any) -> dict[str, torch.Tensor]:
        """This batch's value of each train metric (as device tensors: no host read here)."""
        out = {}
        for name, m in (self.train or {}).items():
            v = m(preds_for(m, output, target, self.loss_fn), target)
            out[name] = v if v.numel() == 1 else v.float().mean()  # per-class results: their mean
        return out

    def update_val(self, output: Any, target: Any) -> None:
        for m in (self.val or {}).values():
            m.update(preds_for(m, output, target, self.loss_fn), target)

    def compute_val(self) -> dict[str, float]:
        out = {}
        for name, m in (self.val or {}).items():
            v = m.compute()
            out[name] = float(v) if v.numel() == 1 else float(v.float().mean())
            m.reset()
        return out

    def reset_train(self) -> None:
        for m in (self.train or {}).values():
            m.reset()
