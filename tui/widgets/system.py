"""The system panel: per GPU utilization, memory, temperature, power; CPU, RAM and process RSS.

Each value comes with a sparkline of its last couple of minutes. Without NVML it says so, with
the engine's reason, instead of drawing empty GPU rows (no GPU is a state, not an error).
"""

from __future__ import annotations

import re

from rich.text import Text
from textual.widget import Widget

from ..poller import RunSnapshot
from .format import fmt_bytes, fmt_num, join_lines
from .sparkline import sparkline

GPU_KEY = re.compile(r"gpu(\d+)\.")
LABEL_W, VALUE_W = 6, 14


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"


class SystemPanel(Widget):
    """Draws the newest system sample with sparklines; one line per GPU when space is short."""

    DEFAULT_CSS = """
    SystemPanel { width: 1fr; height: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, *, ascii: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ascii = ascii
        self.snap: RunSnapshot | None = None
        self._shown: tuple = ()

    def show(self, snap: RunSnapshot) -> None:
        key = (tuple(snap.system.items()), snap.gpu_note, snap.live)
        self.snap = snap
        if key != self._shown:
            self._shown = key
            self.refresh()

    def _spark(
        self, name: str, width: int, lo: float | None = None, hi: float | None = None
    ) -> str:
        hist = self.snap.system_history.get(name, ()) if self.snap else ()
        return sparkline(hist, width, ascii=self.ascii, lo=lo, hi=hi)

    def render(self) -> Text:
        s = self.snap
        w, h = self.size.width, self.size.height
        if s is None or not s.system:
            return Text(
                "waiting for the first system sample…"
                if s is None or s.live
                else "no system samples recorded",
                "dim",
            )
        v = s.system
        gpus = sorted({int(m.group(1)) for k in v if (m := GPU_KEY.match(k))})
        spark_w = max(0, w - LABEL_W - VALUE_W - 1)
        full = len(gpus) * 4 + 3 <= h
        lines: list[Text] = []
        if not gpus:
            reason = s.gpu_note or "no GPU metrics recorded"
            lines.append(
                Text(f"no NVIDIA GPU ({reason})", "dim", no_wrap=True, overflow="ellipsis")
            )
        for i in gpus:
            g = lambda k, i=i: v.get(f"gpu{i}.{k}")  # noqa: E731
            mem = f"{fmt_bytes(g('mem_used'))}/{fmt_bytes(g('mem_total'))}"
            temp = "-" if g("temp") is None else f"{g('temp'):.0f}C"
            power = "-" if g("power") is None else f"{g('power'):.0f}W"
            if full:  # (label, value, history, sparkline bounds): one line each
                for label, value, key, lo, hi in (
                    (f"GPU{i}", "util " + _pct(g("util")), "util", 0, 100),
                    ("", "mem " + mem, "mem_used", 0, g("mem_total")),
                    ("", "temp " + temp, "temp", None, None),
                    ("", "power " + power, "power", None, None),
                ):
                    lines.append(
                        self._row(label, value, self._spark(f"gpu{i}.{key}", spark_w, lo, hi))
                    )
            else:  # one line per GPU: util and memory sparklines share what width there is
                sw = max(0, (w - 40) // 2)
                text = Text(no_wrap=True, overflow="ellipsis")
                text.append(f"GPU{i} ".ljust(LABEL_W), "bold")
                text.append(f"{_pct(g('util')):>4} ")
                text.append(self._spark(f"gpu{i}.util", sw, 0, 100), "green")
                text.append(f" {mem} ")
                text.append(self._spark(f"gpu{i}.mem_used", sw, 0, g("mem_total")), "cyan")
                text.append(f" {temp} {power}")
                lines.append(text)
        ram = f"{fmt_bytes(v.get('ram_used'))}/{fmt_bytes(v.get('ram_total'))}"
        rss = fmt_bytes(v.get("proc_rss"))
        if v.get("proc_cpu") is not None:
            rss += f" {fmt_num(v['proc_cpu'])}%"
        for label, value, key, lo, hi in (
            ("CPU", _pct(v.get("cpu_percent")), "cpu_percent", 0, 100),
            ("RAM", ram, "ram_used", 0, v.get("ram_total")),
            ("RSS", rss, "proc_rss", None, None),  # auto range: slow growth (a leak) shows
        ):
            lines.append(self._row(label, value, self._spark(key, spark_w, lo, hi)))
        return join_lines(lines[: max(1, h)] if h else lines)

    def _row(self, label: str, value: str, spark: str) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(label.ljust(LABEL_W), "bold")
        text.append(value.ljust(VALUE_W)[: max(VALUE_W, len(value))])
        if spark.strip():
            text.append(" ")
            text.append(spark, "green")
        return text
