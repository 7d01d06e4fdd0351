"""The system panel: every GPU at a glance (utilisation, memory, temperature, power, clocks, with
history where there is room), this run's CUDA memory, the processes on the GPUs, then the host:
CPU, RAM and the engine process' own memory and CPU, each labelled for what it is.

The layout is chosen from the space: a block with histories per GPU when few GPUs have room, a
line each when more, a grid of compact cells when many (eight fit at 120x40). No GPU is one line
saying why, from the engine's data (meta['gpus']['note']), never a crash.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from dltui.run import wire

from ..poller import RunSnapshot
from . import gpu as G
from .format import fmt_bytes, join_lines
from .ranks import rank_lines
from .sparkline import sparkline

LABEL_W, VALUE_W = 11, 14
CELL_W = 27  # a GPU's cell in the grid layout, everything shown
MIN_CELL_W = 15  # narrower cells only to show every GPU: util and memory as a percentage


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"


class SystemPanel(Widget):
    """Draws the newest system sample; redraws only when the sample or the GPU meta changed."""

    DEFAULT_CSS = """
    SystemPanel { width: 1fr; height: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, *, ascii: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ascii = ascii
        self.snap: RunSnapshot | None = None
        self._shown: tuple = ()

    def show(self, snap: RunSnapshot) -> None:
        key = (
            tuple(snap.system.items()),
            repr(snap.meta.get(wire.META_GPUS)),
            repr(snap.meta.get(wire.META_GPU_PROCESSES)),
            repr(snap.meta.get("ranks")),  # a distributed run's Ranks view (widgets/ranks.py)
            snap.live,
        )
        self.snap = snap
        if key != self._shown:
            self._shown = key
            self.refresh()

    # -- host ----------------------------------------------------------------------------------
    def _host(self, width: int, full: bool) -> list[Text]:
        v = self.snap.system
        ram = f"{fmt_bytes(v.get('ram_used'))}/{fmt_bytes(v.get('ram_total'))}"
        rss, pcpu = fmt_bytes(v.get("proc_rss")), v.get("proc_cpu")
        # The engine's CPU is top's: 100% per busy core, so say "of one core" once it tops 100.
        pcpu_s = "-" if pcpu is None else f"{pcpu:.0f}%"
        if not full:
            text = Text(no_wrap=True, overflow="ellipsis")
            text.append("CPU ", "bold")
            text.append(f"{_pct(v.get('cpu_percent'))}  ")
            text.append("RAM ", "bold")
            text.append(f"{ram}  ")
            text.append("engine ", "bold")
            text.append(f"RSS {rss} CPU {pcpu_s}")
            return [text]
        spark_w = max(0, width - LABEL_W - VALUE_W - 1)
        rows = (
            ("CPU", _pct(v.get("cpu_percent")), "cpu_percent", 0, 100),
            ("RAM", ram, "ram_used", 0, v.get("ram_total")),
            # auto range: slow growth (a leak) shows
            ("engine RSS", rss, "proc_rss", None, None),
            (
                "engine CPU",
                pcpu_s + (" (1 core=100%)" if pcpu and pcpu > 100 else ""),
                "proc_cpu",
                0,
                None,
            ),
        )
        return [self._row(label, value, key, spark_w, lo, hi) for label, value, key, lo, hi in rows]

    def _row(self, label: str, value: str, key: str, spark_w: int, lo, hi) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(label.ljust(LABEL_W), "bold")
        text.append(value.ljust(VALUE_W))
        hist = self.snap.system_history.get(key, ())
        spark = sparkline(hist, spark_w, ascii=self.ascii, lo=lo, hi=hi)
        if spark.strip():
            text.append(" ")
            text.append(spark, "green")
        return text

    # -- layout --------------------------------------------------------------------------------
    def render(self) -> Text:
        s = self.snap
        w, h = self.size.width, self.size.height
        if s is None or not s.system:
            waiting = s is None or s.live
            return Text(
                "waiting for the first system sample…" if waiting else "no system samples recorded",
                "dim",
            )
        pic = G.picture(s)
        hist = s.system_history
        subtitle = f"{len(pic.gpus)} GPUs" if len(pic.gpus) > 1 else ""
        if any(g.run for g in pic.gpus) or any(r.get("run") for r in pic.processes):
            subtitle += ("  " if subtitle else "") + f"{G.RUN_MARK} this run"
        if self.border_subtitle != subtitle:
            self.border_subtitle = subtitle
        notes = self._notes(pic) + rank_lines(s.meta)
        procs = self._process_lines(pic)
        loose_cuda = self._cuda_lines(pic, mapped=False)
        # (GPU lines, full host lines, process lines it must leave room for), best first
        table = min(len(procs), 3)  # the header and a process or two
        layouts: list[tuple[list[Text], bool, int]] = []
        if pic.gpus:
            blocks = [line for g in pic.gpus for line in G.block(g, w, hist, self.ascii, pic.cuda)]
            rows = [G.row(g, w, hist, self.ascii) for g in pic.gpus] + self._cuda_lines(pic)
            layouts = [(blocks, True, table), (blocks, False, table)]
            layouts += [(rows, True, table), (rows, False, table)]
            # grids: wide cells; more columns to leave the process table room, as long as a
            # cell stays readable; then whatever it takes to show every GPU
            fixed = len(notes) + len(loose_cuda) + len(self._cuda_lines(pic)) + 1
            n = len(pic.gpus)
            wide = max(1, (w + 1) // (CELL_W + 1))
            fit_table = max(wide, -(-n // max(1, h - fixed - table)))
            fit = max(wide, -(-n // max(1, h - fixed)))
            for cols, leave in ((wide, table), (fit_table, table), (fit, 0)):
                cell_w = (w + 1) // cols - 1
                if leave and cols != wide and cell_w < MIN_CELL_W:
                    continue
                grid = [
                    Text(" ").join(G.cell(g, cell_w) for g in pic.gpus[i : i + cols])
                    for i in range(0, n, cols)
                ]
                layouts.append((grid + self._cuda_lines(pic), False, leave))
        else:
            # no note: a run recorded before the sampler wrote one, or it has not looked yet
            said = f"no GPU readings: {pic.note}" if pic.note else "no GPU readings recorded"
            line = Text(said, "dim", no_wrap=True, overflow="ellipsis")
            layouts = [([line], True, table), ([line], False, table), ([line], False, 0)]
        for gpu_lines, full_host, leave in layouts:
            host = self._host(w, full_host)
            need = len(gpu_lines) + len(loose_cuda) + len(notes) + len(host) + leave
            if need <= h:
                break
        lines = [*gpu_lines, *loose_cuda, *notes]
        room = h - len(lines) - len(host)
        if procs and room >= 3:  # the header and at least one process
            if len(procs) > room:
                more = len(procs) - (room - 1)
                procs = procs[: room - 1] + [Text(f"… {more} more processes", "dim")]
            lines += procs
        elif procs and room >= 1:
            mine = sum(1 for r in pic.processes if r.get("run"))
            summary = (
                f"{len(pic.processes)} GPU processes ({mine} this run's): more room shows them"
            )
            lines.append(Text(summary, "dim", no_wrap=True, overflow="ellipsis"))
        lines += host
        return join_lines(lines[: max(1, h)] if h else lines)

    def _notes(self, pic: G.GpuPicture) -> list[Text]:
        """MIG GPUs and why processes cannot be listed: one readable line each kind."""
        out = []
        mig = [g.index for g in pic.gpus if g.mig]
        if mig:
            which = ", ".join(str(i) for i in mig)
            out.append(
                Text(f"MIG on GPU {which}: utilisation is per MIG instance (N/A here)", "dim")
            )
        by_note: dict[str, list[int]] = {}
        for i, note in sorted(pic.process_notes.items()):
            by_note.setdefault(note, []).append(i)
        for note, idx in by_note.items():
            where = (
                "all GPUs" if len(idx) == len(pic.gpus) > 1 else "GPU " + ", ".join(map(str, idx))
            )
            out.append(Text(f"processes ({where}): {note}", "dim"))
        for t in out:
            t.no_wrap, t.overflow = True, "ellipsis"
        return out

    def _process_lines(self, pic: G.GpuPicture) -> list[Text]:
        if not pic.processes:
            return []
        return [G.process_header(), *(G.process_row(r) for r in pic.processes)]

    def _cuda_lines(self, pic: G.GpuPicture, mapped: bool = True) -> list[Text]:
        """This run's CUDA memory per device: those on a known GPU (mapped), or the others."""
        known = {g.index for g in pic.gpus}
        out = []
        for d, m in sorted(pic.cuda.items()):
            on = pic.cuda_gpu.get(d)
            if (on in known) != mapped:
                continue
            out.append(G.cuda_line(d, m, prefix=f"GPU{on} " if on in known else "this run "))
        return out
