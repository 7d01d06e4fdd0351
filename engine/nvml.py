"""NVIDIA GPU readings through NVML, loaded lazily, giving "not available" values instead of raising."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Nothing NVIDIA-specific happens at import time: `pynvml` is imported and nvmlInit() is called on
# the first gpus() (tens of milliseconds with a driver, one failed dlopen without). The outcome,
# handles or the reason there are none, is cached until shutdown(), so a machine without a GPU
# pays for the failed probe once, not once per sample.

FIELDS = ("util", "mem_used", "mem_total", "temp", "power")


@dataclass(frozen=True)
class GpuHandle:
    """One NVML device: its NVML index (PCI bus order, as nvidia-smi numbers it) and raw handle."""

    index: int
    raw: Any


_lock = threading.Lock()  # gpus() may race between the sampler thread and a caller of name()
_pynvml: Any = None  # the imported module once nvmlInit() succeeded, else None
_cache: tuple[list[GpuHandle], str | None] | None = None


def gpus() -> tuple[list[GpuHandle], str | None]:
    """The GPUs NVML sees and None, or an empty list and a short reason why there are none."""
    global _cache
    with _lock:
        if _cache is None:
            _cache = _probe()
        handles, reason = _cache
        return list(handles), reason


def _probe() -> tuple[list[GpuHandle], str | None]:
    global _pynvml
    try:
        import pynvml
    except ImportError:
        return [], "NVML library not found (nvidia-ml-py is not installed)"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError subclasses, or OSError from a broken libnvidia-ml
        if isinstance(e, getattr(pynvml, "NVMLError_LibraryNotFound", ())):
            return [], "NVML library not found"
        if isinstance(e, getattr(pynvml, "NVMLError_DriverNotLoaded", ())):
            return [], "no NVIDIA driver"
        return [], f"NVML error: {e}"
    try:
        count = pynvml.nvmlDeviceGetCount()
    except Exception as e:
        _quiet_shutdown(pynvml)
        return [], f"NVML error: {e}"
    handles = []
    for i in range(count):
        try:
            handles.append(GpuHandle(i, pynvml.nvmlDeviceGetHandleByIndex(i)))
        except Exception:
            # A lost or inaccessible GPU is left out; the others keep their NVML index.
            continue
    if not handles:
        _quiet_shutdown(pynvml)
        return [], "no NVIDIA GPU"
    _pynvml = pynvml
    return handles, None


def _try(*calls: Callable[[], Any]) -> Any:
    """The first call that succeeds, else None: the newer NVML API first, then the older one.

    A failed call costs a few microseconds (an NVML return code, or a symbol lookup an old driver
    lacks), so trying both each second is cheaper than remembering which one works.
    """
    for call in calls:
        try:
            return call()
        except Exception:  # NVMLError (NotSupported, GpuIsLost, FunctionNotFound...), TypeError
            continue
    return None


def read(handle: GpuHandle) -> dict[str, float | None]:
    """One reading of a GPU: util %, mem_used/mem_total bytes, temp C, power W; None where unknown.

    Five NVML calls, each a driver query of well under a millisecond; never raises.
    """
    out: dict[str, float | None] = dict.fromkeys(FIELDS)
    nv = _pynvml
    raw = getattr(handle, "raw", None)
    if nv is None or raw is None:
        return out
    util = _try(lambda: nv.nvmlDeviceGetUtilizationRates(raw).gpu)
    # v2 memory info reports "used" without the driver's reserved memory, as nvidia-smi does;
    # v1 (older drivers) counts the reserved part as used.
    mem = _try(
        lambda: nv.nvmlDeviceGetMemoryInfo(raw, version=nv.nvmlMemory_v2),
        lambda: nv.nvmlDeviceGetMemoryInfo(raw),
    )
    # nvmlDeviceGetTemperature is deprecated (removed in CUDA 14); the V call needs a newer driver.
    temp = _try(
        lambda: nv.nvmlDeviceGetTemperatureV(raw, nv.NVML_TEMPERATURE_GPU),
        lambda: nv.nvmlDeviceGetTemperature(raw, nv.NVML_TEMPERATURE_GPU),
    )
    power_mw = _try(lambda: nv.nvmlDeviceGetPowerUsage(raw))
    out["util"] = _num(util)
    out["mem_used"] = _num(getattr(mem, "used", None))
    out["mem_total"] = _num(getattr(mem, "total", None))
    out["temp"] = _num(temp)
    out["power"] = None if power_mw is None else _num(power_mw / 1000.0)
    return out


def _num(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def name(handle: GpuHandle) -> str:
    """The device's marketing name ("NVIDIA H100 80GB HBM3"), or "GPU <index>" if NVML won't say."""
    fallback = f"GPU {getattr(handle, 'index', '?')}"
    nv = _pynvml
    raw = getattr(handle, "raw", None)
    if nv is None or raw is None:
        return fallback
    value = _try(lambda: nv.nvmlDeviceGetName(raw))
    if isinstance(value, bytes):  # nvidia-ml-py before 11.5 returned bytes
        value = value.decode(errors="replace")
    return value or fallback


def shutdown() -> None:
    """Release NVML; the next gpus() initialises it again. Safe to call when never initialised."""
    global _pynvml, _cache
    with _lock:
        if _pynvml is not None:
            _quiet_shutdown(_pynvml)
        _pynvml = None
        _cache = None


def _quiet_shutdown(nv: Any) -> None:
    try:
        nv.nvmlShutdown()
    except Exception:
        pass  # nothing useful to do about a failing shutdown at exit


def _reset_for_tests() -> None:
    """Forget the cached state without calling NVML, so a test can swap `pynvml` in sys.modules."""
    global _pynvml, _cache
    with _lock:
        _pynvml = None
        _cache = None
