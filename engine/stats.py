"""Per-parameter statistics in a handful of batched kernels, kept on the device, memory-neutral.

Memory: nothing full-size is copied or allocated. The update-to-weight ratio is computed on a
bounded strided sample of each weight (the whole tensor when it has at most SAMPLE elements), so
the probe's extra device memory is at most a few times TOTAL_SAMPLE floats (tens of MiB) whatever
the model's size; a gradient that is None is skipped, never materialised as zeros.

Cost: per device, one `_foreach_norm`, one sum and one min/max pass per tensor for weights and
gradients (on CUDA one fused max|x| kernel instead), a few kernels over the samples for zero
fractions and update ratios, and one stack of every raw number. The arithmetic on those numbers
(means, stds, ratios, flags) is a few dozen float operations on the host once they are read
back (rows()): at the stats interval a Python op costs more than the number it computes.
Histograms read the host twice per call (two syncs), not per parameter.
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
    per_sample: int  # the sample size each tensor of this group gets
    sizes: list[int]  # the length of each tensor's sample in the group's concatenated sample


def _norms(ts: list[torch.Tensor], ord: float) -> list[torch.Tensor]:
    """Each tensor's `ord`-norm (0-d float32 tensors) in one foreach call: accumulated in
    float32 (fp16/bf16 promoted without a copy), or in float64 where a tensor is float64 (a
    float32 norm of it is refused as narrowing: a model.double() run failed at its first step)."""
    if all(t.dtype != torch.float64 for t in ts):
        return list(torch._foreach_norm(ts, ord, dtype=torch.float32))
    return [n.float() for n in torch._foreach_norm(ts, ord)]


def _extremes(ts: list[torch.Tensor]) -> torch.Tensor:
    """[2n] float32: a pair (a, b) per tensor with max(-a, b) = max |x|, without the |x| copy a
    foreach abs allocates: (min, max) on the CPU, where the inf-norm foreach is a slow generic
    path and aminmax one pass; (max|x|, max|x|) from one fused kernel on CUDA."""
    if ts[0].device.type == "cuda":
        m = torch.stack(_norms(ts, math.inf))
        return torch.stack([m, m], dim=1).flatten()
    zero = torch.zeros((), dtype=ts[0].dtype, device=ts[0].device)
    none = (zero, zero)  # a zero-element tensor's pair (aminmax refuses it; its row says NaN)
    return torch.stack([v for t in ts for v in (torch.aminmax(t) if t.numel() else none)]).float()


def _moments(norm: float, total: float, a: float, b: float, n: int) -> list[float]:
    """norm, mean, std (unbiased), max |x| of a tensor of n elements from its raw numbers."""
    if n == 0:
        return [math.nan] * 4
    mean = total / n
    var = max(norm * norm / n - mean * mean, 0.0) * (n / max(n - 1, 1))
    return [norm, mean, math.sqrt(var), max(-a, b)]  # (sqrt: inf and nan pass through)


def _binned(x: torch.Tensor, bins: int, lo: float, hi: float) -> torch.Tensor:
    """histc(x, bins, lo, hi) for x within [lo, hi]. On the CPU by bincount, with one extra bin
    (bins + 1 counts) for the values equal to hi, which the caller adds to the last: the CPU histc
    is a slow generic path. On CUDA histc is one kernel (bincount reads the host to size its
    output)."""
    if x.device.type != "cpu":
        return torch.histc(x, bins=bins, min=lo, max=hi)
    # x >= lo exactly (lo is the sample's minimum), so no index is negative
    return torch.bincount((x - lo).mul_(bins / (hi - lo)).long(), minlength=bins + 1)


class LayerStats:
    """Computes the layer_stats rows for a model's trainable parameters.

    Call `before_step()` once gradients exist and before optimizer.step(), then `after_step()`:
    it returns the step's raw numbers, a 1-D float32 device tensor (read it back when it suits,
    on CUDA a step or more later), and what rows() needs to turn its values into the rows, one
    per parameter in wire.LAYER_STAT_COLUMNS order. Gradient columns of a parameter without a
    gradient are NaN. `read(after_step())` does both at once.
    """

    def __init__(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._groups: list[_Group] | None = None
        self._pending: list[tuple] | None = None  # per group, what before_step() computed
        self._segments: dict[tuple, torch.Tensor] = {}  # histograms' segment index, by sizes

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
                per = max(1, min(SAMPLE, TOTAL_SAMPLE // len(idx)))
                sizes = [strided_sample(self.params[i].detach(), per).numel() for i in idx]
                self._groups.append(_Group(dev, idx, per, sizes))
        return self._groups

    def extra_bytes_bound(self) -> int:
        """The most device memory one call can hold beyond the parameters: the kept sample, the
        new one, their difference and the concatenated gradient samples (float32 each)."""
        return sum(4 * 3 * sum(g.sizes) for g in self.groups())

    def _weight_sample(self, g: _Group) -> torch.Tensor:
        views = [strided_sample(self.params[i].detach(), g.per_sample) for i in g.idx]
        return torch.cat(views).float()  # one kernel; a copy the size of the sample only

    def before_step(self) -> None:
        """The weights' and gradients' numbers, before the step writes the weights, and a sample
        of each weight for the update ratio."""
        if not self.params:
            return
        pending = []
        for g in self.groups():
            have = [j for j, i in enumerate(g.idx) if self.params[i].grad is not None]
            # a gradient that is None is skipped: no zeros_like of the parameter
            gs = [self.params[g.idx[j]].grad.detach() for j in have]
            ts = [self.params[i].detach() for i in g.idx] + gs  # one batch: each op once for both
            # No signed foreach sum exists (powsum sums |x|): one small reduction per tensor; each
            # reads its tensor once and allocates a scalar.
            sums = [t.sum(dtype=torch.float32) for t in ts]
            # the non-zero elements are counted over a sample (exact for small tensors: counting
            # is a slow pass, ~8x a norm, so a big tensor's fraction is estimated)
            nonzero = self._nonzero([strided_sample(x, g.per_sample) for x in gs], g.device)
            numbers = [*_norms(ts, 2), *sums]
            pending.append((numbers, nonzero, _extremes(ts), have, self._weight_sample(g)))
        self._pending = pending

    def after_step(self) -> tuple[torch.Tensor, list[list[int]]] | None:
        """(raw, have): the raw numbers of the step before_step() saw, on the first parameter's
        device, and per device group the positions (in the group) of the parameters that had a
        gradient. No host read. Per group: the norm of each weight, then of each gradient there
        is; their sums; each gradient sample's non-zero count; each weight sample's update norm
        and norm before the step; the max|x| pair of each weight and gradient."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        parts, have_all = [], []
        first = self.groups()[0].device
        for g, (numbers, nonzero, ext, have, before) in zip(self.groups(), pending, strict=True):
            diff = self._weight_sample(g).sub_(before)  # -(the update), on the sample
            update = torch._foreach_norm(diff.split(g.sizes))
            weight = torch._foreach_norm(before.split(g.sizes))
            part = torch.cat([torch.stack(numbers), nonzero, torch.stack([*update, *weight]), ext])
            parts.append(part if g.device == first else part.to(first, non_blocking=True))
            have_all.append(have)
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), have_all

    def rows(self, values: list[float], have: list[list[int]]) -> list[list[float]]:
        """The rows from after_step()'s raw numbers, read back (`values`), and its `have`."""
        out: list[list[float]] = [[] for _ in self.params]
        at = 0
        for g, hv in zip(self.groups(), have, strict=True):
            k, h = len(g.idx), len(hv)
            n = k + h
            norms, sums = values[at : at + n], values[at + n : at + 2 * n]
            at += 2 * n
            nonzero, update = values[at : at + h], values[at + h : at + h + k]
            at += h + k
            weight, ext = values[at : at + k], values[at + k : at + k + 2 * n]
            at += k + 2 * n
            numel = [self.params[i].numel() for i in g.idx]
            grad_row = {j: r for r, j in enumerate(hv)}
            for j, i in enumerate(g.idx):
                size = g.sizes[j]  # of its samples (0: a zero-element parameter)
                w = _moments(norms[j], sums[j], ext[2 * j], ext[2 * j + 1], numel[j])
                nonfinite = 0.0 if math.isfinite(norms[j]) else 1.0
                r = grad_row.get(j)
                if r is None:  # no gradient: its columns are NaN (and it is not non-finite)
                    grad = [math.nan] * 5
                else:
                    e = k + r
                    grad = _moments(norms[e], sums[e], ext[2 * e], ext[2 * e + 1], numel[j])
                    grad.append(1 - nonzero[r] / size if size else math.nan)  # the zero fraction
                    nonfinite += 0.0 if math.isfinite(norms[e]) else 1.0
                ratio = update[j] / max(weight[j], 1e-12) if size else math.nan
                out[i] = [*w, *grad, nonfinite, ratio]
        return out

    def read(self, raw: tuple[torch.Tensor, list[list[int]]] | None) -> list[list[float]] | None:
        """rows() of after_step()'s result, read back now (on CUDA: a host sync)."""
        return None if raw is None else self.rows(raw[0].tolist(), raw[1])

    def _nonzero(self, samples: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        """[len(samples)] float32: each sample's count of non-zero elements. On the CPU
        count_nonzero, half the time of an ord-0 norm there (a concatenated sample counted per
        segment by a bincount was slower still); on CUDA ord-0 norms in one foreach call."""
        if not samples:
            return torch.zeros(0, device=device)
        if device.type != "cpu":
            return torch.stack(_norms(samples, 0))
        return torch.stack([torch.count_nonzero(x) for x in samples]).float()

    def _histograms_together(
        self, samples: list[torch.Tensor], bins: int
    ) -> list[tuple[float, float, list[int]]] | None:
        """(lo, hi, counts) of every CPU sample in a dozen ops for them all (one concatenated
        sample, a segment index, scatter_reduce for the ranges, one bincount), not a handful per
        sample: at the histogram interval a small op's call costs more than its arithmetic.
        None if a sample holds a NaN or inf (its range says so; nothing is binned then)."""
        k = len(samples)
        sizes = tuple(x.numel() for x in samples)
        seg = self._segments.get(sizes)
        if seg is None:  # which sample each element is: the same sizes at every call
            seg = torch.arange(k).repeat_interleave(torch.tensor(sizes, dtype=torch.long))
            self._segments[sizes] = seg
        flat = torch.cat(samples)
        lo = flat.new_full((k,), math.inf).scatter_reduce_(0, seg, flat, "amin")
        hi = flat.new_full((k,), -math.inf).scatter_reduce_(0, seg, flat, "amax")
        ends = torch.cat([lo, hi]).tolist()  # read 1: every range (NaN propagates into it)
        if not all(map(math.isfinite, ends)):
            return None
        los, his = ends[:k], ends[k:]
        for i in range(k):
            if los[i] == his[i]:  # one value: a unit-wide range around it
                los[i], his[i] = los[i] - 0.5, his[i] + 0.5
        scale = torch.tensor([bins / (b - a) for a, b in zip(los, his, strict=True)])
        lo = torch.tensor(los)
        # x >= lo in each segment (lo is its minimum): no index is negative; the values equal
        # to hi land in an extra bin (bins + 1 a segment), added to the last below
        # (index_select: a gather 3x quicker than lo[seg] on the CPU)
        idx = flat - lo.index_select(0, seg)
        idx = idx.mul_(scale.index_select(0, seg)).long().add_(seg * (bins + 1))
        table = torch.bincount(idx, minlength=k * (bins + 1)).view(k, bins + 1).tolist()  # read 2
        return [
            (lo_, hi_, [*row[: bins - 1], row[bins - 1] + row[bins]])
            for lo_, hi_, row in zip(los, his, table, strict=True)
        ]

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
        if samples[0].device.type == "cpu":
            got = self._histograms_together(samples, bins)
            if got is not None:
                return [(*key, *g) for key, g in zip(keys, got, strict=True)]
            # a NaN or inf in a sample (rare): each on its own below, its finite values binned
        if samples[0].is_cuda and torch.are_deterministic_algorithms_enabled():
            # histc on CUDA refuses to run in deterministic mode: bin on the CPU instead (the
            # samples are small; one copy, one more sync at this rare interval)
            sizes = [x.numel() for x in samples]
            samples = list(torch.cat(samples).cpu().split(sizes))
        ends = torch.stack([v for x in samples for v in torch.aminmax(x)]).tolist()
        out, counts = [], []
        for (name, kind), x, lo, hi in zip(keys, samples, ends[::2], ends[1::2], strict=True):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                x = x[torch.isfinite(x)]
                if x.numel() == 0:
                    continue  # nothing finite to bin
                lo, hi = torch.stack(torch.aminmax(x)).tolist()
            if lo == hi:  # one value: a unit-wide range around it
                lo, hi = lo - 0.5, hi + 0.5
            out.append((name, kind, lo, hi))
            counts.append(_binned(x, bins, lo, hi))
        if not counts:
            return []
        table = torch.stack(counts).tolist()
        if len(table[0]) > bins:  # _binned's extra bin: the values equal to hi, in the last one
            table = [[*row[: bins - 1], row[bins - 1] + row[bins]] for row in table]
        return [(*o, [int(c) for c in row]) for o, row in zip(out, table, strict=True)]
