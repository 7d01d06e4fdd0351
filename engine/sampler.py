"""A ~1 Hz daemon thread recording CPU, RAM, process, per-GPU (NVML) and torch.cuda memory samples."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

# Cost: one sample is a handful of /proc reads (psutil) plus five NVML calls per GPU, roughly a
# millisecond of this thread's time per second. All of it runs off the training thread; psutil and
# NVML drop the GIL in their C calls, so the training loop barely notices.

NOTE_PREFIX = "GPU metrics unavailable: "


class Sampler:
    """Samples the system every `interval` seconds on a daemon thread and hands each to `record`."""

    def __init__(
        self,
        record: Callable[[float, dict[str, float]], None],
        note: Callable[[str], None],
        interval: float = 1.0,
        gpu_source: Any = None,
    ) -> None:
        self._record = record
        self._note = note
        self._interval = interval
        self._gpu_source = gpu_source  # None: dltui.engine.nvml, resolved on the first sample
        self._gpus: list[Any] | None = None  # handles, fetched once (NVML init is not free)
        self._gpu_noted = False  # at most one GPU note per lifetime: a broken GPU must not spam
        self._error_noted = False
        self._proc = psutil.Process()  # cached: psutil keeps per-Process state for cpu_percent
        # cpu_percent(interval=None) measures since the previous call and never sleeps; this first
        # call only sets the starting point (its own result is a meaningless 0.0). psutil keeps the
        # system-wide starting point per thread, so _run() primes it again on its own thread.
        psutil.cpu_percent(interval=None)
        self._proc.cpu_percent(interval=None)
        self._lock = threading.Lock()  # sample_once() may also be called from another thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the sampling thread; does nothing if it is already running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dltui-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it; safe to call more than once, or before start().

        NVML is not shut down here: the nvml module is shared and keeps its handles cached.
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            # Bounded: a GPU that hangs an NVML call must not hang the engine's exit (daemon thread).
            thread.join(timeout=self._interval + 5.0)

    def _run(self) -> None:
        # The first sample comes one interval after start, so cpu_percent has a real window.
        psutil.cpu_percent(interval=None)
        # Deadlines are on the monotonic clock so the rate does not drift by the sampling time.
        deadline = time.monotonic() + self._interval
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            deadline += self._interval
            if deadline < time.monotonic():  # slept through (suspended laptop): don't catch up
                deadline = time.monotonic() + self._interval
            try:
                self.sample_once()
            except Exception as e:  # a failing record() or psutil must not kill the thread
                if not self._error_noted:
                    self._error_noted = True
                    self._safe_note(f"system sampler error: {type(e).__name__}: {e}")

    def sample_once(self) -> dict[str, float]:
        """Take one reading, pass it to record(time.time(), values) and return it."""
        with self._lock:
            wall = time.time()
            values: dict[str, float] = {}
            self._sample_system(values)
            self._sample_gpus(values)
            _sample_torch_cuda(values)
        self._record(wall, values)
        return values

    def _sample_system(self, values: dict[str, float]) -> None:
        values["cpu_percent"] = float(psutil.cpu_percent(interval=None))
        vm = psutil.virtual_memory()
        # "used" as total - available, so it agrees with ram_percent (psutil's vm.used leaves
        # out buffers/cache differently on each platform).
        values["ram_used"] = float(vm.total - vm.available)
        values["ram_total"] = float(vm.total)
        values["ram_percent"] = float(vm.percent)
        with self._proc.oneshot():  # one /proc/<pid>/stat read for both values
            values["proc_rss"] = float(self._proc.memory_info().rss)
            # Like top: 100 per fully busy core, so up to 100 * cores.
            values["proc_cpu"] = float(self._proc.cpu_percent(interval=None))

    def _sample_gpus(self, values: dict[str, float]) -> None:
        source = self._gpu_source
        if self._gpus is None:
            self._gpus = []
            try:
                if source is None:
                    from dltui.engine import nvml as source

                    self._gpu_source = source
                handles, reason = source.gpus()
            except Exception as e:  # gpus() should not raise, but a broken source is not fatal
                handles, reason = [], f"{type(e).__name__}: {e}"
            if reason is not None or not handles:
                self._note_gpu(reason or "no NVIDIA GPU")
                return
            self._gpus = list(handles)
        for position, handle in enumerate(self._gpus):
            index = getattr(handle, "index", position)
            try:
                reading = source.read(handle)
            except Exception as e:  # nvml.read never raises; other sources might
                self._note_gpu(f"reading GPU {index} failed: {type(e).__name__}: {e}")
                continue
            for key, value in reading.items():
                if value is not None:
                    values[f"gpu{index}.{key}"] = float(value)

    def _note_gpu(self, reason: str) -> None:
        if not self._gpu_noted:
            self._gpu_noted = True
            self._safe_note(NOTE_PREFIX + reason)

    def _safe_note(self, message: str) -> None:
        try:
            self._note(message)
        except Exception:
            pass  # the note is advisory; a failing sink must not stop sampling


def _sample_torch_cuda(values: dict[str, float]) -> None:
    """This process's caching-allocator memory per CUDA device, only if the run already uses CUDA.

    torch is never imported here (the sampler stays torch-free), and is_initialized() is checked
    first: asking for memory on an uninitialised CUDA would otherwise be the thing that creates a
    context (hundreds of MB of GPU memory, seconds of start-up). The reads themselves are host-side
    counters: no device sync. Indices are CUDA's (after CUDA_VISIBLE_DEVICES), not NVML's.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        cuda = torch.cuda
        if not cuda.is_initialized():
            return
        for d in range(cuda.device_count()):
            values[f"cuda{d}.allocated"] = float(cuda.memory_allocated(d))
            values[f"cuda{d}.reserved"] = float(cuda.memory_reserved(d))
            values[f"cuda{d}.peak"] = float(cuda.max_memory_allocated(d))
    except Exception:
        return  # torch half-imported by the main thread, or CUDA in a bad state: skip this sample


def gpu_names() -> list[str]:
    """The NVML names of the GPUs, in NVML order; [] when NVML or a GPU is unavailable."""
    from dltui.engine import nvml

    handles, _ = nvml.gpus()
    return [nvml.name(h) for h in handles]
