"""Per-parameter statistics in a handful of batched (foreach) kernels, kept on the device."""

from __future__ import annotations

import math

import torch
from torch import nn

HIST_BINS = 32


SAMPLE = 16_384  # elements a zero fraction looks at per tensor (strided sample)
HIST_SAMPLE = 4_096  # ... and a histogram: ~128 per bin, plenty for its shape


def _sample(t: torch.Tensor, n: int = SAMPLE) -> torch.Tensor:
    """A strided view of at most ~n elements: no copy, statistically fine for fractions/shapes."""
    flat = t.reshape(-1)
    return flat if flat.numel() <= n else flat[:: flat.numel() // n]


def _maxabs(ts: list[torch.Tensor]) -> torch.Tensor:
    # aminmax reads each tensor once without the |x| copy a foreach abs would allocate.
    mm = [torch.aminmax(t) for t in ts]
    return torch.stack([torch.maximum(-lo, hi) for lo, hi in mm])


def _moments(ts: list[torch.Tensor], numel: torch.Tensor) -> list[torch.Tensor]:
    """norm, mean, std, max|x| of each tensor, as four [k] tensors (no host sync)."""
    norm = torch.stack(torch._foreach_norm(ts))
    maxabs = _maxabs(ts).to(norm.dtype)
    # No foreach sum exists; k tiny reduction kernels, run only at the stats interval.
    mean = torch.stack([t.sum() for t in ts]).to(norm.dtype) / numel
    var = (norm * norm / numel - mean * mean) * (numel / (numel - 1).clamp(min=1))
    return [norm, mean, var.clamp(min=0).sqrt(), maxabs]


class LayerStats:
    """Computes the layer_stats rows for a model's trainable parameters.

    Call `before_step()` once gradients exist and before optimizer.step(), then `after_step()`;
    the result is a [k, 11] float tensor in wire.LAYER_STAT_COLUMNS order, still on the device.
    """

    def __init__(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._numel: torch.Tensor | None = None
        self._pending: tuple | None = None
        self._before: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.params)

    def _counts(self, like: torch.Tensor) -> torch.Tensor:
        if self._numel is None or self._numel.device != like.device:
            self._numel = torch.tensor(
                [p.numel() for p in self.params], dtype=torch.float32, device=like.device
            )
        return self._numel

    def before_step(self) -> None:
        if not self.params:
            return
        ws = [p.detach() for p in self.params]
        numel = self._counts(ws[0])
        w = _moments(ws, numel)
        missing = [p.grad is None for p in self.params]
        gs = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in self.params]
        g = _moments(gs, numel)
        samples = [_sample(x) for x in gs]  # exact for small tensors, sampled for big ones
        zero_frac = torch.stack([(x == 0).float().mean() for x in samples])
        nonfinite = (~torch.isfinite(w[0])).float() + (~torch.isfinite(g[0])).float()
        if any(missing):  # a parameter the loss did not reach: its gradient stats are "none"
            mask = torch.tensor(missing, device=numel.device)
            g = [x.masked_fill(mask, float("nan")) for x in g]
        # Keep a copy of the weights for the update ratio, in buffers reused between calls.
        if self._before is None or self._before[0].device != ws[0].device:
            self._before = [torch.empty_like(x) for x in ws]
        torch._foreach_copy_(self._before, ws)
        self._pending = (w, g, zero_frac, nonfinite)

    def after_step(self) -> torch.Tensor | None:
        if self._pending is None:
            return None
        w, g, zero_frac, nonfinite = self._pending
        self._pending = None
        torch._foreach_sub_(self._before, [p.detach() for p in self.params])  # -(the update)
        update = torch.stack(torch._foreach_norm(self._before)) / w[0].clamp(min=1e-12)
        return torch.stack([*w, *g, zero_frac, nonfinite, update], dim=1).float()

    def histograms(self, bins: int = HIST_BINS) -> list[tuple[str, str, float, float, list[int]]]:
        """(name, 'weight'|'grad', lo, hi, counts) per parameter, over a strided sample of at
        most SAMPLE elements each. Reads min/max on the host, so on CUDA it synchronises:
        call it only at the (rare) histogram interval."""
        out = []
        for name, p in zip(self.names, self.params, strict=True):
            for kind, t in (("weight", p.detach()), ("grad", p.grad)):
                if t is None or t.numel() == 0:
                    continue
                x = _sample(t.detach(), HIST_SAMPLE).float()
                lo, hi = torch.stack(torch.aminmax(x)).tolist()
                if not (math.isfinite(lo) and math.isfinite(hi)):  # rare: drop non-finite values
                    x = x[torch.isfinite(x)]
                    if x.numel() == 0:
                        continue
                    lo, hi = torch.stack(torch.aminmax(x)).tolist()
                if lo == hi:
                    lo, hi = lo - 0.5, hi + 0.5
                counts = torch.histc(x, bins=bins, min=lo, max=hi)
                out.append((name, kind, lo, hi, [int(c) for c in counts.tolist()]))
        return out
