"""`dltui export RUN --tensorboard DIR | --json FILE`: a run's record in other tools' formats.

TensorBoard event files are written with TensorBoard's own writer and protobufs (the `tensorboard`
package, imported only when asked for), so what TensorBoard and its readers load is what they
would load from a run logged with SummaryWriter: scalars, histograms, hparams, events as text.
Torch-free, like the rest of dltui.run.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, TextIO

from . import wire
from .reader import RunReader

TB_INSTALL = "pip install tensorboard"


class ExportError(Exception):
    """Something the user can fix (a missing package, an unwritable folder): one line."""


def scalar_tag(name: str, phase: str) -> str:
    """The TensorBoard tag of a scalar: train values under their own name (`loss`, `lr/main`),
    validation values under `val/` (`val/loss`), as SummaryWriter users usually name them."""
    return name if phase == wire.TRAIN else f"{phase}/{name}"


def hparams_of(meta: dict[str, Any]) -> dict[str, bool | float | str]:
    """The run's hyperparameters as TensorBoard's hparams plugin takes them (bool, number, str):
    the recipe's own `hparams`, then what dltui recorded about the run."""
    out: dict[str, bool | float | str] = {}
    for k, v in (meta.get("hparams") or {}).items():
        out[str(k)] = v if isinstance(v, bool | int | float | str) else json.dumps(v)
    for key in ("epochs", "steps_per_epoch", "device", "driver"):
        v = meta.get(key)
        if isinstance(v, bool | int | float | str):
            out.setdefault(key, v)
    for opt in meta.get("optimizers") or []:
        out.setdefault(f"optimizer/{opt.get('name')}", str(opt.get("type")))
    return {
        k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in out.items()
    }


def export_tensorboard(reader: RunReader, out_dir: Path) -> dict[str, int]:
    """Write the run as one TensorBoard event file in `out_dir`; returns what was written."""
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import summary_v2 as hp
        from tensorboard.plugins.text import summary_v2 as text
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        raise ExportError(
            f"TensorBoard export needs the tensorboard package: {TB_INSTALL}"
        ) from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        writer = EventFileWriter(str(out_dir))
    except OSError as e:
        raise ExportError(f"can't write {out_dir}: {e.strerror or e}") from None
    meta = reader.meta()
    counts = {"scalars": 0, "histograms": 0, "events": 0, "hparams": 0}
    start = float(meta.get("started") or 0.0)

    def add(summary: Any, step: int, wall: float) -> None:
        writer.add_event(event_pb2.Event(summary=summary, step=step, wall_time=wall))

    tags: set[str] = set()
    for step, _epoch, phase, wall, name, value in reader.scalar_rows():
        if value is None or not math.isfinite(value):
            continue  # TensorBoard draws NaN as a gap anyway; the CSV keeps them
        tag = scalar_tag(name, phase)
        tags.add(tag)
        val = summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        add(summary_pb2.Summary(value=[val]), step, wall)
        counts["scalars"] += 1

    for step, name, kind, lo, hi, bins in reader.histogram_rows():
        val = summary_pb2.Summary.Value(tag=f"{kind}/{name}", histo=_histogram(lo, hi, bins))
        add(summary_pb2.Summary(value=[val]), step, start)
        counts["histograms"] += 1

    for ev in reader.events(limit=1_000_000):
        line = f"[{ev['level']}] {ev['kind']}: {ev['message']}"
        add(text.text_pb(f"events/{ev['kind']}", line), ev["step"] or 0, ev["wall"])
        counts["events"] += 1

    params = hparams_of(meta)
    if params:
        metrics = [hp.Metric(t) for t in sorted(tags) if t == "loss" or t.startswith("val/")]
        config = hp.hparams_config_pb(hparams=[hp.HParam(k) for k in params], metrics=metrics)
        add(config, 0, start)
        add(
            hp.hparams_pb(params, trial_id=str(meta.get("run_id", "")), start_time_secs=start),
            0,
            start,
        )
        counts["hparams"] = len(params)
    writer.close()
    return counts


def _histogram(lo: float, hi: float, bins: list[int]) -> Any:
    """TensorBoard's HistogramProto from dltui's equal-width bins over [lo, hi]; sums use each
    bin's centre, the best the stored bins know."""
    from tensorboard.compat.proto import summary_pb2

    n = len(bins) or 1
    width = (hi - lo) / n
    edges = [lo + width * (i + 1) for i in range(n)]
    centres = [lo + width * (i + 0.5) for i in range(n)]
    return summary_pb2.HistogramProto(
        min=lo,
        max=hi,
        num=float(sum(bins)),
        sum=float(sum(c * k for c, k in zip(centres, bins, strict=False))),
        sum_squares=float(sum(c * c * k for c, k in zip(centres, bins, strict=False))),
        bucket_limit=edges,
        bucket=[float(k) for k in bins],
    )


def export_csv(reader: RunReader, out: TextIO) -> dict[str, int]:
    """Scalars, wide: one row per (step, phase), a column per scalar (empty where not recorded)."""
    names = sorted({n for n, _ in reader.series_names()}, key=_column_order)
    rows = _wide_rows(reader.scalar_rows(), names)
    w = csv.writer(out)
    w.writerow(["step", "epoch", "phase", "wall", *names])
    w.writerows(rows)
    return {"rows": len(rows), "scalars": len(names)}


def _column_order(name: str) -> tuple:
    """loss first, then metrics and logged scalars, then LRs, then timings."""
    rank = (
        0
        if name == "loss"
        else 3
        if name in wire.TIMING_SCALARS
        else (2 if name.startswith("lr/") else 1)
    )
    return rank, name


def _wide_rows(long_rows, names: list[str]) -> list[list]:
    """One row per (step, phase) with a column per scalar (empty where not recorded at that step)."""
    col = {n: i for i, n in enumerate(names)}
    rows: dict[tuple[int, str], list] = {}
    for step, epoch, phase, wall, name, value in long_rows:
        row = rows.get((step, phase))
        if row is None:
            row = rows[(step, phase)] = [step, epoch, phase, wall] + [""] * len(names)
        row[4 + col[name]] = value
    return sorted(rows.values(), key=lambda r: (r[0], r[2] != "train"))


def export_json(reader: RunReader, out: TextIO) -> dict[str, int]:
    """The run as one JSON document: meta, status, every scalar series as [step, value] pairs
    (null for NaN/Inf), events. For scripts that post-process runs."""
    meta = reader.meta()
    series: dict[str, dict[str, list]] = {}
    n = 0
    for step, _epoch, phase, _wall, name, value in reader.scalar_rows():
        ok = value is not None and math.isfinite(value)
        series.setdefault(phase, {}).setdefault(name, []).append([step, value if ok else None])
        n += 1
    doc = {
        "run": meta.get("run_id"),
        "status": reader.status(meta),
        "meta": {k: meta.get(k) for k in ("script", "started", "device", "hparams", "optimizers")},
        "scalars": series,
        "events": _strict(reader.events(limit=1_000_000)),
    }
    json.dump(doc, out, allow_nan=False)
    out.write("\n")
    return {"scalars": n, "events": len(doc["events"])}


def _strict(obj: Any) -> Any:
    """`obj` with every NaN/Inf float as null: strict JSON that any parser reads."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    return obj
