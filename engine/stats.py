"""Per-parameter statistics in a handful of batched kernels, kept on the device, memory-neutral.

Memory: nothing full-size is copied or allocated. The update-to-weight ratio is computed on a
bounded strided sample of each weight (the whole tensor when it has at most SAMPLE elements), so
the probe's extra device memory is at most a few times TOTAL_SAMPLE floats (tens of MiB) whatever
the model's size; a gradient that is None is skipped, never materialised as zeros.

Cost: per device, one `_foreach_norm`, one max|x| pass and one sum per tensor for weights and
gradients, then a few kernels over one concatenated sample for zero fractions, update ratios and
histograms. The histograms read the host twice per call (two syncs), not per parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

HIST_BINS = 32
SAMPLE = 16_384  # elements per tensor a zero fraction and the update ratio look at
HIST_SAMPLE = 4_096  # ... and a histogram: ~128 per bin, plenty for its shape
# Elements all samples of one device may hold together: with thousands of tensors each gets a
# smaller share, so the update-ratio copy (and each temporary the same size) stays <= 16 MiB fp32.
TOTAL_SAMPLE = 4 * 2**20


def flat_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor's elements as a 1-D view, without a copy, in storage order.

    A channels_last conv weight is not contiguous, and reshape(-1) would copy it whole; it is
    dense, though, so its storage span is exactly its elements and a flat as_strided view of the
    span is free. Only a non-dense tensor (a strided slice, never a registered parameter) falls
    back to reshape, which copies.
    """
    if t.is_contiguous():
        return t.view(-1)
    span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True))
    if t.numel() and span == t.numel() and all(st > 0 for st in t.stride()):
        return t.as_strided((t.numel(),), (1,), t.storage_offset())
    return t.reshape(-1)


def strided_sample(t: torch.Tensor, n: int) -> torch.Tensor:
    """A strided view of at most n elements (all of them when the tensor is that small): no copy,
    statistically fine for fractions, shapes and the update ratio's norms."""
    flat = flat_view(t)
    if flat.numel() <= n:
        return flat
    return flat[:: -(-flat.numel() // n)]


@dataclass
class _Group:
    """The parameters of one device: their positions in LayerStats.params and element counts."""

    device: torch.device
    idx: list[int]
    numel: torch.Tensor  # [k] float32 on the device
    numel2: torch.Tensor  # [2k]: numel twice (weights, then gradients)
    per_sample: int  # the sample size each tensor of this group gets
    sizes: list[int]  # the length of each tensor's sample in the group's concatenated sample
    sizes_t: torch.Tensor  # the same, [k] float32 on the device


def _on(values: list, device: torch.device, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A small host list as a device tensor without a host sync (a plain torch.tensor(...,
    device='cuda') copies synchronously: a sync the stats interval would pay each time)."""
    t = torch.tensor(values, dtype=dtype)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _norms(ts: list[torch.Tensor], ord: float) -> torch.Tensor:
    """Each tensor's `ord`-norm as one [k] float32 tensor, in one foreach call: accumulated in
    float32 (fp16/bf16 promoted without a copy), or in float64 where a tensor is float64 (a
    float32 norm of it is refused as narrowing: a model.double() run failed at its first step)."""
    if all(t.dtype != torch.float64 for t in ts):
        return torch.stack(torch._foreach_norm(ts, ord, dtype=torch.float32))
    return torch.stack([n.float() for n in torch._foreach_norm(ts, ord)])


def _maxabs(ts: list[torch.Tensor]) -> torch.Tensor:
    """max |x| of each tensor as one [k] tensor, without the |x| copy a foreach abs allocates."""
    if ts[0].device.type == "cuda":  # one fused kernel over every tensor
        return _norms(ts, math.inf)
    # On the CPU the inf-norm foreach is a slow generic path; aminmax is one pass per tensor.
    lo, hi = zip(*(torch.aminmax(t) for t in ts), strict=True)
    return torch.maximum(torch.stack(lo).neg_(), torch.stack(hi)).float()


def _moments(ts: list[torch.Tensor], numel: torch.Tensor) -> torch.Tensor:
    """[k, 4]: norm, mean, std, max|x| of each tensor (no host sync, nothing full-size)."""
    norm = _norms(ts, 2)
    # No signed foreach sum exists (powsum sums |x|): one small reduction per tensor, run only at
    # the stats interval; each reads its tensor once and allocates a scalar.
    mean = torch.stack([t.sum(dtype=torch.float32) for t in ts]).div_(numel)
    var = (norm * norm / numel - mean * mean) * (numel / (numel - 1).clamp(min=1))
    return torch.stack([norm, mean, var.clamp_(min=0).sqrt_(), _maxabs(ts)], dim=1)


class LayerStats:
    """Computes the layer_stats rows for a model's trainable parameters.

    Call `before_step()` once gradients exist and before optimizer.step(), then `after_step()`;
    the result is a [k, 11] float tensor in wire.LAYER_STAT_COLUMNS order, on the first
    parameter's device. Gradient columns of a parameter without a gradient are NaN.
    """

    def __init__(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._groups: list[_Group] | None = None
        self._pending: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.params)

    def groups(self) -> list[_Group]:
        """The parameters split by device (a model spread over GPUs), built once (or again
        if the model moved)."""
        devices = [p.device for p in self.params]
        if self._groups is None or [g.device for g in self._groups] != list(dict.fromkeys(devices)):
            self._groups = []
            for dev in dict.fromkeys(devices):
                idx = [i for i, d in enumerate(devices) if d == dev]
                numel = _on([self.params[i].numel() for i in idx], dev, torch.float32)
                per = max(1, min(SAMPLE, TOTAL_SAMPLE // len(idx)))
                sizes = [strided_sample(self.params[i].detach(), per).numel() for i in idx]
                sizes_t = _on(sizes, dev, torch.float32)
                numel2 = torch.cat([numel, numel])
                self._groups.append(_Group(dev, idx, numel, numel2, per, sizes, sizes_t))
        return self._groups

    def extra_bytes_bound(self) -> int:
        """The most device memory one call can hold beyond the parameters: the kept sample, the
        new one, their difference and the concatenated gradient samples (float32 each)."""
        return sum(4 * 3 * sum(g.sizes) for g in self.groups())

    def _weight_sample(self, g: _Group) -> torch.Tensor:
        views = [strided_sample(self.params[i].detach(), g.per_sample) for i in g.idx]
        return torch.cat(views).float()  # one kernel; a copy the size of the sample only

    def before_step(self) -> None:
        if not self.params:
            return
        rows, kept = [], []
        for g in self.groups():
            k = len(g.idx)
            have = [j for j, i in enumerate(g.idx) if self.params[i].grad is not None]
            # a gradient that is None is skipped: no zeros_like of the parameter
            gs = [self.params[g.idx[j]].grad.detach() for j in have]
            part = _on(have, g.device) if len(have) < k else None
            numel, sizes = (
                (g.numel2, g.sizes_t) if part is None else (g.numel[part], g.sizes_t[part])
            )
            # Weights and gradients in one batch: each op is launched once for both.
            both = _moments(
                [self.params[i].detach() for i in g.idx] + gs,
                numel if part is None else torch.cat([g.numel, numel]),
            )
            # 0, 1 or 2: the weight's and the gradient's norms not finite (a missing one is not).
            bad = (~torch.isfinite(both[:, 0])).float()
            nonfinite = bad[:k].clone()
            w, gm = both[:k], both[k:]
            if have:
                # ord 0 counts the non-zero elements, over a sample (exact for small tensors:
                # counting is a slow pass, ~8x a norm, so a big tensor's fraction is estimated).
                samples = [strided_sample(x, g.per_sample) for x in gs]
                zero_frac = 1 - torch.stack(torch._foreach_norm(samples, 0)).float() / sizes
                grad = torch.cat([gm, zero_frac[:, None]], dim=1)  # 4 moments and zero fraction
            if part is None:
                nonfinite += bad[k:]
            else:
                moments = grad if have else None
                grad = torch.full((k, 5), math.nan, device=g.device)
                if moments is not None:
                    grad[part] = moments
                    nonfinite[part] += bad[k:]
            rows.append(torch.cat([w, grad, nonfinite[:, None]], dim=1))
            kept.append(self._weight_sample(g))
        self._pending = (self._assemble(rows), kept)

    def _assemble(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """Per-group rows into one [k, n] tensor in parameter order, on the first device."""
        groups = self.groups()
        if len(groups) == 1:
            return rows[0]
        dev = groups[0].device
        out = torch.empty((len(self.params), rows[0].shape[1]), device=dev)
        for g, r in zip(groups, rows, strict=True):
            out[_on(g.idx, dev)] = r.to(dev, non_blocking=True)
        return out

    def after_step(self) -> torch.Tensor | None:
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        rows, kept = pending
        ratios = []
        for g, before in zip(self.groups(), kept, strict=True):
            diff = self._weight_sample(g).sub_(before)  # -(the update), on the sample
            du = torch._foreach_norm(diff.split(g.sizes))
            wn = torch._foreach_norm(before.split(g.sizes))
            ratios.append((torch.stack(du) / torch.stack(wn).clamp(min=1e-12))[:, None])
        return torch.cat([rows, self._assemble(ratios)], dim=1)

    def histograms(self, bins: int = HIST_BINS) -> list[tuple[str, str, float, float, list[int]]]:
        """(name, 'weight'|'grad', lo, hi, counts) per parameter, over a strided sample of at
        most HIST_SAMPLE elements each, non-finite values left out.

        The host reads every range at once, then every count at once: on CUDA two
        synchronisations per call (not two per tensor), so call it only at the (rare) histogram
        interval. A sample holding NaN or inf (rare) is filtered on its own, one more read.
        """
        keys, samples = [], []
        for name, p in zip(self.names, self.params, strict=True):
            for kind, t in (("weight", p.detach()), ("grad", p.grad)):
                if t is not None and t.numel():
                    keys.append((name, kind))
                    samples.append(strided_sample(t.detach(), HIST_SAMPLE).float())
        if not samples:
            return []
        if samples[0].is_cuda and torch.are_deterministic_algorithms_enabled():
            # histc on CUDA refuses to run in deterministic mode: bin on the CPU instead (the
            # samples are small; one copy, one more sync at this rare interval)
            sizes = [x.numel() for x in samples]
            samples = list(torch.cat(samples).cpu().split(sizes))
        ranges = torch.stack([torch.stack(torch.aminmax(x)) for x in samples]).tolist()
        out, counts = [], []
        for (name, kind), x, (lo, hi) in zip(keys, samples, ranges, strict=True):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                x = x[torch.isfinite(x)]
                if x.numel() == 0:
                    continue  # nothing finite to bin
                lo, hi = torch.stack(torch.aminmax(x)).tolist()
            if lo == hi:  # one value: a unit-wide range around it
                lo, hi = lo - 0.5, hi + 0.5
            out.append((name, kind, lo, hi))
            counts.append(torch.histc(x, bins=bins, min=lo, max=hi))
        if not counts:
            return []
        table = torch.stack(counts).tolist()
        return [(*o, [int(c) for c in row]) for o, row in zip(out, table, strict=True)]
