"""NVIDIA GPU readings through NVML (nvidia-ml-py's `pynvml`), loaded lazily, "not available"
values instead of raising for what the hardware or driver cannot say.

Errors, precisely: NVMLError_NotSupported (and FunctionNotFound, an older driver) reads as None,
"N/A"; any other NVMLError (GpuIsLost, NoPermission, Unknown...) reads as None too and is
reported once per kind and call through `drain_errors()`, named; anything else (a TypeError, an
AttributeError: a bug here) is not caught. Nothing NVIDIA-specific happens at import time.

The module object is injected: `Nvml(module)` drives a fake (tests/fake_nvml.py) through exactly
the code the real library goes through; `Nvml()` loads `pynvml`, or the file or module named by
the environment variable DLTUI_FAKE_NVML, so the real dashboard can be run against a fake 8-GPU box.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAKE_ENV = "DLTUI_FAKE_NVML"
# Per-GPU readings as the sampler records them (system names gpu<i>.<field>).
FIELDS = (
    "util",
    "mem_util",
    "mem_used",
    "mem_total",
    "temp",
    "power",
    "power_limit",
    "clock_sm",
    "clock_mem",
    "fan",
)


@dataclass(frozen=True)
class GpuHandle:
    """One NVML device: its NVML index (PCI bus order, as nvidia-smi numbers it) and raw handle."""

    index: int
    raw: Any


@dataclass(frozen=True)
class GpuInfo:
    """What does not change while a run lasts: name, UUID, PCI bus, MIG mode."""

    index: int
    name: str
    uuid: str | None
    pci_bus: str | None
    mig: bool | None  # None: the GPU cannot do MIG, or NVML would not say


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU, as nvidia-smi lists it."""

    gpu: int
    pid: int
    used_memory: float | None  # bytes; None where NVML cannot say (MIG, some containers)
    kind: str  # "compute" or "graphics"


@dataclass
class Processes:
    """The processes on one GPU, or why they cannot be listed (a readable line)."""

    rows: list[GpuProcess] = field(default_factory=list)
    note: str | None = None


def load_module() -> Any:
    """The NVML module: the fake named by DLTUI_FAKE_NVML (a .py path or a module name), else
    `pynvml`. Raises ImportError when neither can be imported."""
    fake = os.environ.get(FAKE_ENV)
    if fake:
        if fake.endswith(".py"):
            spec = importlib.util.spec_from_file_location("dltui_fake_nvml", Path(fake))
            if spec is None or spec.loader is None:
                raise ImportError(f"{FAKE_ENV}={fake}: not a Python file")
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except FileNotFoundError as e:
                raise ImportError(f"{FAKE_ENV}={fake}: {e.strerror}") from None
            return module
        return importlib.import_module(fake)
    import pynvml

    return pynvml


class Nvml:
    """NVML through one module object; thread-safe, initialised on the first `gpus()`."""

    def __init__(self, module: Any = None, loader: Callable[[], Any] = load_module) -> None:
        self._module = module
        self._loader = loader
        self._nv: Any = None  # the module once nvmlInit() succeeded
        self._cache: tuple[list[GpuHandle], str | None] | None = None
        self._lock = threading.Lock()
        self._reported: set[tuple[str, str]] = set()
        self._errors: list[str] = []

    # -- set-up --------------------------------------------------------------------------------
    def gpus(self) -> tuple[list[GpuHandle], str | None]:
        """The GPUs NVML sees and None, or an empty list and a short reason why there are none.
        The outcome is cached: a machine without a GPU pays for the failed probe once."""
        with self._lock:
            if self._cache is None:
                self._cache = self._probe()
            handles, reason = self._cache
            return list(handles), reason

    def _probe(self) -> tuple[list[GpuHandle], str | None]:
        nv = self._module
        if nv is None:
            try:
                nv = self._loader()
            except ImportError as e:
                if "pynvml" in str(e):
                    return [], "nvidia-ml-py is not installed"
                return [], f"NVML not loaded: {e}"
        try:
            nv.nvmlInit()
        except nv.NVMLError as e:
            return [], _init_reason(nv, e)
        except OSError as e:  # a broken libnvidia-ml.so that dlopen finds but cannot load
            return [], f"NVML library failed to load: {e}"
        try:
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as e:
            _quiet_shutdown(nv)
            return [], f"NVML error: {type(e).__name__}: {e}"
        handles = []
        for i in range(count):
            try:
                handles.append(GpuHandle(i, nv.nvmlDeviceGetHandleByIndex(i)))
            except nv.NVMLError as e:
                # A lost or inaccessible GPU is left out; the others keep their NVML index.
                self._report(f"GPU {i}", "handle", e)
        if not handles:
            _quiet_shutdown(nv)
            return [], "no NVIDIA GPU" if not count else "no NVIDIA GPU is accessible"
        self._nv = nv
        return handles, None

    def shutdown(self) -> None:
        """Release NVML; the next gpus() initialises it again. Safe when never initialised."""
        with self._lock:
            if self._nv is not None:
                _quiet_shutdown(self._nv)
            self._nv, self._cache = None, None

    # -- errors --------------------------------------------------------------------------------
    def _call(self, what: str, where: str, *calls: Callable[[], Any]) -> Any:
        """The first call that gives a value: newer NVML API first, then the older one.

        NotSupported and FunctionNotFound mean "this GPU or driver cannot say": None, silently.
        Any other NVMLError is None and reported once (per call and kind); other exceptions are
        bugs and propagate.
        """
        nv = self._nv
        quiet = _classes(nv, "NVMLError_NotSupported", "NVMLError_FunctionNotFound")
        for call in calls:
            try:
                return call()
            except nv.NVMLError as e:
                if isinstance(e, quiet):
                    continue
                self._report(where, what, e)
                return None
        return None

    def _report(self, where: str, what: str, e: BaseException) -> None:
        key = (what, type(e).__name__)
        if key not in self._reported:
            self._reported.add(key)
            self._errors.append(f"NVML {type(e).__name__} reading {what} of {where}: {e}")

    def drain_errors(self) -> list[str]:
        """NVML errors seen since the last call, each kind of each call once per lifetime."""
        out, self._errors = self._errors, []
        return out

    # -- readings ------------------------------------------------------------------------------
    def read(self, handle: GpuHandle) -> dict[str, float | None]:
        """One reading of a GPU (FIELDS): util/mem_util %, mem bytes, temp C, power and its
        limit W, SM and memory clocks MHz, fan %; None where unknown. About ten driver queries
        of well under a millisecond each."""
        out: dict[str, float | None] = dict.fromkeys(FIELDS)
        nv, raw = self._nv, handle.raw
        if nv is None:
            return out
        where = f"GPU {handle.index}"
        rates = self._call("utilization", where, lambda: nv.nvmlDeviceGetUtilizationRates(raw))
        if rates is not None:
            out["util"], out["mem_util"] = _num(rates.gpu), _num(rates.memory)
        # v2 memory info reports "used" without the driver's reserved memory, as nvidia-smi
        # does; v1 (older drivers) counts the reserved part as used.
        calls = [lambda: nv.nvmlDeviceGetMemoryInfo(raw)]
        if hasattr(nv, "nvmlMemory_v2"):
            calls.insert(0, lambda: nv.nvmlDeviceGetMemoryInfo(raw, version=nv.nvmlMemory_v2))
        mem = self._call("memory", where, *calls)
        if mem is not None:
            out["mem_used"], out["mem_total"] = _num(mem.used), _num(mem.total)
        # nvmlDeviceGetTemperature is deprecated (removed in CUDA 14); the V call needs a newer
        # driver and a newer nvidia-ml-py.
        sensor = nv.NVML_TEMPERATURE_GPU
        calls = [lambda: nv.nvmlDeviceGetTemperature(raw, sensor)]
        if hasattr(nv, "nvmlDeviceGetTemperatureV"):
            calls.insert(0, lambda: nv.nvmlDeviceGetTemperatureV(raw, sensor))
        out["temp"] = _num(self._call("temperature", where, *calls))
        out["power"] = _milli(self._call("power", where, lambda: nv.nvmlDeviceGetPowerUsage(raw)))
        out["power_limit"] = _milli(
            self._call("power limit", where, lambda: nv.nvmlDeviceGetEnforcedPowerLimit(raw))
        )
        for key, clock in (("clock_sm", nv.NVML_CLOCK_SM), ("clock_mem", nv.NVML_CLOCK_MEM)):
            out[key] = _num(
                self._call("clocks", where, lambda c=clock: nv.nvmlDeviceGetClockInfo(raw, c))
            )
        out["fan"] = _num(self._call("fan", where, lambda: nv.nvmlDeviceGetFanSpeed(raw)))
        return out

    def info(self, handle: GpuHandle) -> GpuInfo:
        """Name, UUID, PCI bus id and MIG mode of a GPU (read once per run)."""
        nv, raw, where = self._nv, handle.raw, f"GPU {handle.index}"
        if nv is None:
            return GpuInfo(handle.index, f"GPU {handle.index}", None, None, None)
        name = _text(self._call("name", where, lambda: nv.nvmlDeviceGetName(raw)))
        uuid = _text(self._call("UUID", where, lambda: nv.nvmlDeviceGetUUID(raw)))
        pci = self._call("PCI info", where, lambda: nv.nvmlDeviceGetPciInfo(raw))
        mig = None
        if hasattr(nv, "nvmlDeviceGetMigMode"):
            mode = self._call("MIG mode", where, lambda: nv.nvmlDeviceGetMigMode(raw))
            if mode is not None:
                mig = mode[0] == getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1)
        bus = _text(getattr(pci, "busId", None)) if pci is not None else None
        return GpuInfo(handle.index, name or f"GPU {handle.index}", uuid, bus, mig)

    def processes(self, handle: GpuHandle) -> Processes:
        """Compute and graphics processes on a GPU (one entry per pid), or a note saying why
        they cannot be listed: no permission, not supported (MIG, vGPU), an NVML error."""
        nv, raw = self._nv, handle.raw
        if nv is None:
            return Processes(note="NVML is not initialised")
        out = Processes()
        seen: dict[int, GpuProcess] = {}
        for kind, fn in (
            ("compute", "nvmlDeviceGetComputeRunningProcesses"),
            ("graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
        ):
            call = getattr(nv, fn, None)
            if call is None:
                continue
            try:
                procs = call(raw)
            except nv.NVMLError as e:
                if isinstance(e, _classes(nv, "NVMLError_NoPermission")):
                    out.note = "no permission to list GPU processes"
                elif isinstance(e, _classes(nv, "NVMLError_NotSupported")):
                    out.note = "listing processes is not supported here"
                else:
                    out.note = f"listing processes failed: {type(e).__name__}"
                    self._report(f"GPU {handle.index}", "processes", e)
                continue
            for p in procs:
                pid = int(p.pid)
                mem = getattr(p, "usedGpuMemory", None)
                if pid not in seen:
                    seen[pid] = GpuProcess(handle.index, pid, _num(mem), kind)
        out.rows = sorted(seen.values(), key=lambda p: -(p.used_memory or 0))
        return out


def _classes(nv: Any, *names: str) -> tuple[type, ...]:
    return tuple(c for c in (getattr(nv, n, None) for n in names) if isinstance(c, type))


def _init_reason(nv: Any, e: BaseException) -> str:
    if isinstance(e, _classes(nv, "NVMLError_LibraryNotFound")):
        return "NVML library not found (no driver)"
    if isinstance(e, _classes(nv, "NVMLError_DriverNotLoaded")):
        return "NVIDIA driver not loaded"
    if isinstance(e, _classes(nv, "NVMLError_NoPermission")):
        return "no permission to use NVML"
    return f"NVML error: {type(e).__name__}: {e}"


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _milli(value: Any) -> float | None:
    return None if value is None else float(value) / 1000.0


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):  # nvidia-ml-py before 11.5 returned bytes
        value = value.decode(errors="replace")
    return value or None


def _quiet_shutdown(nv: Any) -> None:
    try:
        nv.nvmlShutdown()
    except nv.NVMLError:
        pass  # nothing useful to do about a failing shutdown at exit


_default: Nvml | None = None
_default_lock = threading.Lock()


def default() -> Nvml:
    """The process's NVML (pynvml, or the DLTUI_FAKE_NVML fake), created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Nvml()
        return _default


def _reset_for_tests() -> None:
    """Forget the process's NVML without calling it, so a test can swap the module."""
    global _default
    with _default_lock:
        _default = None
