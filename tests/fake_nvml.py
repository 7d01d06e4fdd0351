"""A fake `pynvml`: the subset of nvidia-ml-py's API dltui uses, on made-up GPUs.

Two ways in. Tests call `make(...)` for a fresh module object and inject it, `Nvml(make(...))`.
The real dashboard is pointed at it through the environment, which loads this file as the
engine's NVML and configures it from DLTUI_FAKE_NVML_CONFIG (JSON with make()'s arguments):

    DLTUI_FAKE_NVML=tests/fake_nvml.py dltui train examples/mnist_mlp.py   # 8 GPUs, processes

Readings move with the clock (utilisation and power follow a slow wave) so histories show shape.
The engine's own process is listed on GPUs 0 and 1, as a run using two GPUs would be.
"""

from __future__ import annotations

import json
import math
import os
import time
import types
from typing import Any

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2
NVML_DEVICE_MIG_ENABLE, NVML_DEVICE_MIG_DISABLE = 1, 0
nvmlMemory_v2 = 0x02000028

# Error codes as nvml.h numbers them, and the pynvml class name each maps to.
ERRORS = {
    1: ("Uninitialized", "Uninitialized"),
    2: ("InvalidArgument", "Invalid Argument"),
    3: ("NotSupported", "Not Supported"),
    4: ("NoPermission", "Insufficient Permissions"),
    9: ("DriverNotLoaded", "Driver Not Loaded"),
    10: ("Timeout", "Timeout"),
    12: ("LibraryNotFound", "NVML Shared Library Not Found"),
    13: ("FunctionNotFound", "Function Not Found"),
    15: ("GpuIsLost", "GPU is lost"),
    999: ("Unknown", "Unknown Error"),
}
CODE = {name: code for code, (name, _) in ERRORS.items()}


class NVMLError(Exception):
    """As pynvml's: NVMLError(code) is an instance of the code's subclass."""

    _by_code: dict[int, type] = {}

    def __new__(cls, value: int):
        if cls is NVMLError:
            cls = NVMLError._by_code.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return ERRORS.get(self.value, ("", f"NVML Error with code {self.value}"))[1]


for _code, (_name, _) in ERRORS.items():
    _cls = type(f"NVMLError_{_name}", (NVMLError,), {})
    NVMLError._by_code[_code] = _cls
    globals()[_cls.__name__] = _cls


def make(
    gpus: int = 8,
    name: str = "NVIDIA H200",
    memory: float = 141 * 2**30,
    init_error: str | None = None,
    mig: tuple[int, ...] = (),
    broken: dict[str, str] | None = None,
    processes: str | None = None,
    hang: dict[str, float] | None = None,
    own_gpus: tuple[int, ...] = (0, 1),
    extra_pids: tuple[int, ...] | None = None,
) -> types.ModuleType:
    """A fresh fake pynvml module.

    init_error: an error name nvmlInit raises (DriverNotLoaded, LibraryNotFound, NoPermission).
    mig: GPUs in MIG mode (utilisation NotSupported there, processes not listed).
    broken: call name -> error name it raises on every GPU ("power": "GpuIsLost").
    processes: an error name every process listing raises ("NoPermission").
    hang: call name -> seconds the call sleeps (a stuck driver).
    own_gpus: GPUs this process (the engine) appears on; extra_pids: other processes, spread
    over the GPUs (default: pid 1 and the parent process, real pids psutil can describe).
    """
    m = types.ModuleType("fake_pynvml")
    m.NVMLError = NVMLError
    for cls in NVMLError._by_code.values():
        setattr(m, cls.__name__, cls)
    m.NVML_TEMPERATURE_GPU, m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM = 0, 1, 2
    m.NVML_DEVICE_MIG_ENABLE, m.nvmlMemory_v2 = 1, nvmlMemory_v2
    m.calls = {}
    m.inits = m.shutdowns = 0
    broken = dict(broken or {})
    hang = dict(hang or {})
    others = (1, os.getppid()) if extra_pids is None else tuple(extra_pids)

    def api(call: str):
        def wrap(fn):
            def inner(*args, **kwargs):
                m.calls[call] = m.calls.get(call, 0) + 1
                if call in hang:
                    time.sleep(hang[call])
                if call in broken:
                    raise NVMLError(CODE[broken[call]])
                return fn(*args, **kwargs)

            return inner

        return wrap

    def gpu(h: Any) -> int:
        if not (isinstance(h, tuple) and h[0] == "fake-gpu"):
            raise NVMLError(CODE["InvalidArgument"])
        return h[1]

    def wave(i: int, period: float = 30.0) -> float:
        return 0.5 + 0.5 * math.sin(time.time() * 2 * math.pi / period + i)

    @api("init")
    def nvmlInit() -> None:
        if init_error:
            raise NVMLError(CODE[init_error])
        m.inits += 1

    def nvmlShutdown() -> None:
        m.shutdowns += 1

    m.nvmlInit, m.nvmlShutdown = nvmlInit, nvmlShutdown
    m.nvmlDeviceGetCount = api("count")(lambda: gpus)

    @api("handle")
    def handle(i: int):
        if not 0 <= i < gpus:
            raise NVMLError(CODE["InvalidArgument"])
        return ("fake-gpu", i)

    m.nvmlDeviceGetHandleByIndex = handle
    m.nvmlDeviceGetName = api("name")(lambda h: f"{name}")
    m.nvmlDeviceGetUUID = api("uuid")(lambda h: f"GPU-fa6e0000-0000-0000-0000-00000000000{gpu(h)}")
    m.nvmlDeviceGetPciInfo = api("pci")(
        lambda h: types.SimpleNamespace(busId=f"00000000:{0x18 + 0x10 * gpu(h):02X}:00.0")
    )

    @api("mig")
    def mig_mode(h):
        return [1, 1] if gpu(h) in mig else [0, 0]

    m.nvmlDeviceGetMigMode = mig_mode

    @api("util")
    def util(h):
        i = gpu(h)
        if i in mig:
            raise NVMLError(CODE["NotSupported"])
        u = 0 if idle(i) else 40 + 55 * wave(i)
        return types.SimpleNamespace(gpu=int(u), memory=int(u * 0.6))

    m.nvmlDeviceGetUtilizationRates = util

    def idle(i: int) -> bool:  # on a box of more than two, the last two GPUs are free
        return gpus > 2 and i >= gpus - 2

    def used(i: int) -> float:
        return 0.0 if idle(i) else memory * (0.3 + 0.4 * wave(i, 120))

    m.nvmlDeviceGetMemoryInfo = api("memory")(
        lambda h, version=None: types.SimpleNamespace(
            used=int(used(gpu(h))), total=int(memory), free=int(memory - used(gpu(h)))
        )
    )
    temp = api("temperature")(lambda h, sensor: int(34 + 40 * wave(gpu(h), 90)))
    m.nvmlDeviceGetTemperatureV = temp
    m.nvmlDeviceGetTemperature = temp
    m.nvmlDeviceGetPowerUsage = api("power")(
        lambda h: 72_000 if idle(gpu(h)) else int(1000 * (90 + 560 * wave(gpu(h))))
    )
    m.nvmlDeviceGetEnforcedPowerLimit = api("power limit")(lambda h: 700_000)
    m.nvmlDeviceGetClockInfo = api("clocks")(
        lambda h, kind: int((1980 if kind == NVML_CLOCK_SM else 2619) * (0.4 + 0.6 * wave(gpu(h))))
    )

    @api("fan")
    def fan(h):
        raise NVMLError(CODE["NotSupported"])  # data-centre GPUs have no fan of their own

    m.nvmlDeviceGetFanSpeed = fan

    @api("processes")
    def compute(h):
        i = gpu(h)
        if processes:
            raise NVMLError(CODE[processes])
        if i in mig:
            raise NVMLError(CODE["NotSupported"])
        out = []
        if i in own_gpus:
            out.append(types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=int(used(i) * 0.8)))
        if others and not idle(i) and i not in own_gpus:
            pid = others[i % len(others)]
            out.append(types.SimpleNamespace(pid=pid, usedGpuMemory=int(used(i) * 0.15)))
        return out

    m.nvmlDeviceGetComputeRunningProcesses = compute
    m.nvmlDeviceGetGraphicsRunningProcesses = api("graphics")(lambda h: [])
    return m


def _from_env() -> None:
    """Loaded through DLTUI_FAKE_NVML: become the module make() describes."""
    config = json.loads(os.environ.get("DLTUI_FAKE_NVML_CONFIG") or "{}")
    for key in ("mig", "own_gpus", "extra_pids"):
        if key in config and config[key] is not None:
            config[key] = tuple(config[key])
    fake = make(**config)
    globals().update({k: v for k, v in vars(fake).items() if not k.startswith("__")})


if __name__ != "__main__" and __name__ == "dltui_fake_nvml":
    _from_env()
