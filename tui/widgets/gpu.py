"""The GPU part of the system panel: what a snapshot says about each GPU, and its lines.

Everything here reads data the engine wrote: system rows `gpu<i>.<field>` (NVML index) and
`cuda<d>.allocated|reserved|peak` (CUDA index), meta['gpus'] (names, MIG, this run's GPUs, the
CUDA -> NVML map, or the note saying why there are none) and meta['gpu_processes'].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text

from dltui.run import wire

from ..poller import RunSnapshot
from .format import fmt_bytes
from .sparkline import sparkline

GPU_KEY = re.compile(r"gpu(\d+)\.")
CUDA_KEY = re.compile(r"cuda(\d+)\.")
RUN_MARK = "*"  # this run's GPUs and processes; bold too, so NO_COLOR sees it
RUN_STYLE = "bold"


@dataclass
class Gpu:
    """One GPU as the panel draws it."""

    index: int
    name: str = ""
    mig: bool = False
    run: bool = False
    values: dict[str, float] = field(default_factory=dict)
    cuda: list[int] = field(default_factory=list)  # this run's CUDA indices on this GPU

    def get(self, key: str) -> float | None:
        return self.values.get(key)


@dataclass
class GpuPicture:
    """The GPUs of a snapshot, this run's CUDA memory and the processes."""

    gpus: list[Gpu]
    note: str | None
    cuda: dict[int, dict[str, float]]  # CUDA index -> allocated/reserved/peak
    cuda_gpu: dict[int, int]  # CUDA index -> NVML index
    processes: list[dict[str, Any]]
    process_notes: dict[int, str]


def picture(snap: RunSnapshot) -> GpuPicture:
    v = snap.system
    meta = snap.meta.get(wire.META_GPUS)
    meta = meta if isinstance(meta, dict) else {}
    devices = {int(d["index"]): d for d in meta.get("devices") or [] if isinstance(d, dict)}
    indices = sorted(set(devices) | {int(m.group(1)) for k in v if (m := GPU_KEY.match(k))})
    run = {int(i) for i in meta.get("run") or []}
    cuda_gpu = {int(c): int(n) for c, n in (meta.get("cuda") or {}).items()}
    cuda: dict[int, dict[str, float]] = {}
    for k, value in v.items():
        if m := CUDA_KEY.match(k):
            cuda.setdefault(int(m.group(1)), {})[k[m.end() :]] = value
    gpus = []
    for i in indices:
        d = devices.get(i, {})
        prefix = f"gpu{i}."
        gpus.append(
            Gpu(
                index=i,
                name=str(d.get("name") or ""),
                mig=bool(d.get("mig")),
                run=i in run,
                values={k[len(prefix) :]: x for k, x in v.items() if k.startswith(prefix)},
                cuda=sorted(c for c, n in cuda_gpu.items() if n == i),
            )
        )
    procs = snap.meta.get(wire.META_GPU_PROCESSES)
    procs = procs if isinstance(procs, dict) else {}
    rows = [r for r in procs.get("rows") or [] if isinstance(r, dict)]
    rows.sort(key=lambda r: (not r.get("run"), r.get("gpu", 0), -(r.get("mem") or 0)))
    notes = {int(k): str(n) for k, n in (procs.get("notes") or {}).items()}
    return GpuPicture(gpus, meta.get("note"), cuda, cuda_gpu, rows, notes)


def _pct(x: float | None) -> str:
    return "N/A" if x is None else f"{x:.0f}%"


def _unit(x: float | None, unit: str) -> str:
    return "N/A" if x is None else f"{x:.0f}{unit}"


def _mem(g: Gpu) -> str:
    return f"{fmt_bytes(g.get('mem_used'))}/{fmt_bytes(g.get('mem_total'))}"


def _label(g: Gpu) -> tuple[str, str]:
    return f"{g.index}{RUN_MARK if g.run else ' '}", RUN_STYLE if g.run else ""


def cell(g: Gpu, width: int) -> Text:
    """A GPU in a few characters, for a grid of many: `0* 87% 98G/141G 62C 512W`."""
    text = Text(no_wrap=True, overflow="ellipsis")
    label, style = _label(g)
    util = "MIG" if g.mig and g.get("util") is None else _pct(g.get("util"))
    mem = _mem(g)
    used, total = g.get("mem_used"), g.get("mem_total")
    if 3 + 5 + len(mem) > width and used is not None and total:
        mem = f"m{100 * used / total:.0f}%"  # too narrow for bytes: memory as a percentage
    tight = 3 + 4 + 1 + len(mem) > width  # `0*100% m45%`: no padding to spare
    text.append(label if tight else label.ljust(3), style or "bold")
    text.append(f"{util:>4} {mem}")
    for extra in (f" {_unit(g.get('temp'), 'C')}", f" {_unit(g.get('power'), 'W')}"):
        if len(text) + len(extra) <= width:
            text.append(extra)
    text.truncate(width, pad=True)
    return text


def row(g: Gpu, width: int, history: dict, ascii: bool) -> Text:
    """A GPU on one line, with its utilisation history where the width allows."""
    text = Text(no_wrap=True, overflow="ellipsis")
    label, style = _label(g)
    text.append(f"GPU{label}".ljust(6), style or "bold")
    util = "MIG" if g.mig and g.get("util") is None else _pct(g.get("util"))
    tail = f" {_mem(g)} {_unit(g.get('temp'), 'C')} {_unit(g.get('power'), 'W')}"
    clocks = f" {_unit(g.get('clock_sm'), 'MHz')}"
    spark_w = width - 6 - 5 - len(tail) - 1
    if spark_w >= 8 + len(clocks):
        tail += clocks
        spark_w -= len(clocks)
    text.append(f"{util:>4} ")
    if spark_w >= 4:
        text.append(_spark(history, g, "util", spark_w, ascii, 0, 100), "green")
    text.append(tail)
    return text


def block(g: Gpu, width: int, history: dict, ascii: bool, cuda: dict) -> list[Text]:
    """A GPU with room: name, then util, memory with histories, temperature/power/clocks and
    this run's CUDA memory on it."""
    label, style = _label(g)
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append(f"GPU{label}", style or "bold")
    head.append(f" {g.name}" if g.name else "")
    if g.run:
        head.append("  (this run)", "dim")
    if g.mig:
        head.append("  MIG on: utilisation is per instance", "dim")
    lines = [head]
    value_w = 16
    spark_w = max(0, width - 2 - value_w - 1)
    for label_text, key, lo, hi in (
        ("util " + _pct(g.get("util")), "util", 0, 100),
        ("mem " + _mem(g), "mem_used", 0, g.get("mem_total")),
    ):
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("  " + label_text.ljust(value_w))
        if spark_w >= 4:
            t.append(" ")
            t.append(_spark(history, g, key, spark_w, ascii, lo, hi), "green")
        lines.append(t)
    power = _unit(g.get("power"), "W")
    if g.get("power_limit") is not None:
        power += f"/{g.get('power_limit'):.0f}W"
    clocks = f"SM {_unit(g.get('clock_sm'), ' MHz')}  mem {_unit(g.get('clock_mem'), ' MHz')}"
    lines.append(
        Text(f"  {_unit(g.get('temp'), 'C')}  {power}  {clocks}", no_wrap=True, overflow="ellipsis")
    )
    for d in g.cuda:
        if d in cuda:
            lines.append(cuda_line(d, cuda[d], prefix="  this run "))
    return lines


def cuda_line(d: int, m: dict[str, float], prefix: str = "") -> Text:
    """This run's caching-allocator memory on one CUDA device."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{prefix}cuda:{d} ", RUN_STYLE)
    text.append(
        f"alloc {fmt_bytes(m.get('allocated'))}  reserved {fmt_bytes(m.get('reserved'))}  "
        f"peak {fmt_bytes(m.get('peak'))}"
    )
    return text


def process_header() -> Text:
    return Text("GPU     PID USER       GPU MEM COMMAND", "dim", no_wrap=True, overflow="ellipsis")


def process_row(r: dict[str, Any]) -> Text:
    """`0*  12345 alice        79.5G python train.py`; the user and command are '?' where the
    engine could not see them (another container's pid namespace)."""
    mine = bool(r.get("run"))
    text = Text(no_wrap=True, overflow="ellipsis")
    gpu = f"{r.get('gpu', '?')}{RUN_MARK if mine else ''}"
    user = str(r.get("user") or "?")[:10]
    mem = fmt_bytes(r["mem"]) if r.get("mem") is not None else "N/A"
    text.append(
        f"{gpu:<4}{r.get('pid', '?'):>7} {user:<10} {mem:>7} {short_command(r.get('command'))}",
        RUN_STYLE if mine else "",
    )
    return text


def short_command(command: str | None) -> str:
    """The command line with its program's directory left out: `/usr/bin/python3 train.py`
    reads `python3 train.py`."""
    if not command:
        return "?"
    program, _, args = command.partition(" ")
    return (program.rsplit("/", 1)[-1] + (" " + args if args else "")).strip()


def _spark(history: dict, g: Gpu, key: str, width: int, ascii: bool, lo, hi) -> str:
    return sparkline(history.get(f"gpu{g.index}.{key}", ()), width, ascii=ascii, lo=lo, hi=hi)
