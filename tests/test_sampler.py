"""Tests for the system sampler and the NVML wrapper: real psutil, fakes only for NVIDIA hardware."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import types

import psutil
import pytest

from dltui.engine import nvml
from dltui.engine.sampler import NOTE_PREFIX, Sampler, gpu_names

GPU_FIELDS = ("util", "mem_used", "mem_total", "temp", "power")


def _real_gpu_count() -> int:
    nvml._reset_for_tests()
    try:
        return len(nvml.gpus()[0])
    finally:
        nvml.shutdown()


HAS_GPU = _real_gpu_count() > 0


@pytest.fixture(autouse=True)
def fresh_nvml():
    """Each test starts with NVML uninitialised and leaves it that way."""
    nvml._reset_for_tests()
    yield
    nvml.shutdown()
    nvml._reset_for_tests()


class Recorder:
    """Collects record() and note() calls from any thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.notes: list[str] = []
        self._lock = threading.Lock()

    def record(self, wall: float, values: dict[str, float]) -> None:
        with self._lock:
            self.samples.append((wall, dict(values)))

    def note(self, message: str) -> None:
        with self._lock:
            self.notes.append(message)

    def wait_for(self, n: int, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.samples) < n:
            assert time.monotonic() < deadline, f"only {len(self.samples)} samples in {timeout}s"
            time.sleep(0.01)


class FakeGpus:
    """A gpu_source with `n` GPUs; `fail` names fields read() reports as None."""

    def __init__(self, n: int = 2, fail: tuple[str, ...] = ()) -> None:
        self.n = n
        self.fail = fail
        self.reads = 0

    def gpus(self):
        return [nvml.GpuHandle(i, object()) for i in range(self.n)], None

    def read(self, handle):
        self.reads += 1
        i = handle.index
        values = {
            "util": 50.0 + i,
            "mem_used": 1e9 * (i + 1),
            "mem_total": 8e10,
            "temp": 40.0 + i,
            "power": 300.0 + i,
        }
        return {k: (None if k in self.fail else v) for k, v in values.items()}


def fake_pynvml(n: int = 2, init_error: str | None = None, broken: tuple[str, ...] = ()):
    """A stand-in for the `pynvml` module with `n` devices; calls named in `broken` raise."""
    m = types.ModuleType("pynvml")
    m.NVMLError = type("NVMLError", (Exception,), {})
    m.NVMLError_LibraryNotFound = type("NVMLError_LibraryNotFound", (m.NVMLError,), {})
    m.NVMLError_DriverNotLoaded = type("NVMLError_DriverNotLoaded", (m.NVMLError,), {})
    m.NVML_TEMPERATURE_GPU, m.nvmlMemory_v2, m.shutdowns = 0, 0x02000028, 0
    errors = {"lib": m.NVMLError_LibraryNotFound, "driver": m.NVMLError_DriverNotLoaded}

    def call(name, result):
        def fn(*args, **kwargs):
            if name in broken:
                raise m.NVMLError("Not Supported")
            return result(*args, **kwargs)

        return fn

    def init():
        if init_error:
            raise errors.get(init_error, m.NVMLError)(init_error)

    def shutdown():
        m.shutdowns += 1

    m.nvmlInit, m.nvmlShutdown = init, shutdown
    m.nvmlDeviceGetCount = lambda: n
    m.nvmlDeviceGetHandleByIndex = lambda i: ("dev", i)
    m.nvmlDeviceGetName = call("name", lambda h: b"Fake GPU %d" % h[1])
    m.nvmlDeviceGetUtilizationRates = call("util", lambda h: types.SimpleNamespace(gpu=70 + h[1]))
    m.nvmlDeviceGetMemoryInfo = call(
        "mem", lambda h, version=None: types.SimpleNamespace(used=2**30, total=2**34)
    )
    m.nvmlDeviceGetTemperatureV = call("temp", lambda h, s: 55)
    m.nvmlDeviceGetTemperature = call("temp", lambda h, s: 55)
    m.nvmlDeviceGetPowerUsage = call("power", lambda h: 250_000)  # milliwatts
    return m


def test_real_sampler_records_sane_system_values():
    rec = Recorder()
    sampler = Sampler(rec.record, rec.note)
    before = time.time()
    values = sampler.sample_once()
    sampler.sample_once()
    wall, recorded = rec.samples[0]
    assert before - 1 <= wall <= time.time() + 1 and recorded == values
    cores = psutil.cpu_count() or 1
    assert 0 <= values["cpu_percent"] <= 100
    assert 0 < values["ram_used"] <= values["ram_total"]
    assert 0 < values["ram_percent"] <= 100
    assert 10 * 2**20 < values["proc_rss"] < values["ram_total"]  # this python + pytest
    assert 0 <= values["proc_cpu"] <= 100 * cores
    if HAS_GPU:
        assert values["gpu0.mem_total"] > 0 and rec.notes == []
    else:
        assert not any(k.startswith("gpu") for k in values)
        assert len(rec.notes) == 1 and rec.notes[0].startswith(NOTE_PREFIX)
        assert len(rec.notes[0]) > len(NOTE_PREFIX)  # a reason is given


def test_thread_samples_until_stopped_and_stop_is_idempotent():
    rec = Recorder()
    sampler = Sampler(rec.record, rec.note, interval=0.05)
    sampler.stop()  # before start: harmless
    sampler.start()
    sampler.start()  # already running: no second thread
    rec.wait_for(3)
    assert sum(t.name == "dltui-sampler" for t in threading.enumerate()) == 1
    sampler.stop()
    assert not any(t.name == "dltui-sampler" for t in threading.enumerate())
    count = len(rec.samples)
    sampler.stop()
    time.sleep(0.15)
    assert len(rec.samples) == count
    walls = [w for w, _ in rec.samples]
    assert walls == sorted(walls)
    assert len(rec.notes) <= 1  # the GPU note at most once, however many samples


def test_fake_source_with_two_gpus_gives_per_gpu_keys_and_drops_none():
    rec = Recorder()
    source = FakeGpus(2, fail=("temp",))
    values = Sampler(rec.record, rec.note, gpu_source=source).sample_once()
    for i in (0, 1):
        for field in GPU_FIELDS:
            assert (f"gpu{i}.{field}" in values) == (field != "temp")
    assert values["gpu1.util"] == 51.0 and values["gpu0.mem_used"] == 1e9
    assert "gpu2.util" not in values and rec.notes == []


def test_nvml_error_on_one_field_gives_none_and_handles_are_cached(monkeypatch):
    fake, opened = fake_pynvml(2, broken=("temp",)), []
    fake.nvmlDeviceGetHandleByIndex = lambda i: opened.append(i) or ("dev", i)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    handles, reason = nvml.gpus()
    assert reason is None and [h.index for h in handles] == [0, 1]
    assert nvml.read(handles[1]) == {
        "util": 71.0,
        "mem_used": 2.0**30,
        "mem_total": 2.0**34,
        "temp": None,
        "power": 250.0,
    }
    rec = Recorder()
    values = Sampler(rec.record, rec.note).sample_once()  # default source: the nvml module
    assert values["gpu0.power"] == 250.0 and values["gpu1.util"] == 71.0
    assert "gpu0.temp" not in values and "gpu1.temp" not in values and rec.notes == []
    assert gpu_names() == ["Fake GPU 0", "Fake GPU 1"]  # bytes from old pynvml decoded
    assert opened == [0, 1]  # once, however many callers
    nvml.shutdown()
    nvml.shutdown()  # idempotent
    assert fake.shutdowns == 1
    assert nvml.read(handles[0]) == dict.fromkeys(GPU_FIELDS)  # after shutdown: unknown, no raise


@pytest.mark.parametrize(
    "n, init_error, expected",
    [
        (2, "lib", "NVML library not found"),
        (2, "driver", "no NVIDIA driver"),
        (2, "Insufficient Permissions", "NVML error: Insufficient Permissions"),
        (0, None, "no NVIDIA GPU"),
    ],
)
def test_nvml_unavailable_reasons(monkeypatch, n, init_error, expected):
    fake = fake_pynvml(n, init_error=init_error)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert nvml.gpus() == ([], expected)
    assert fake.shutdowns == (1 if init_error is None else 0)  # a successful init is released
    rec = Recorder()
    sampler = Sampler(rec.record, rec.note)
    values = sampler.sample_once()
    sampler.sample_once()
    assert rec.notes == [NOTE_PREFIX + expected] and "cpu_percent" in values


def test_pynvml_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    handles, reason = nvml.gpus()
    assert handles == [] and reason.startswith("NVML library not found")
    assert gpu_names() == []
    rec = Recorder()
    sampler = Sampler(rec.record, rec.note, interval=0.05)
    sampler.start()
    rec.wait_for(3)
    sampler.stop()
    assert rec.notes == [NOTE_PREFIX + reason]
    assert all("ram_used" in values for _, values in rec.samples)


def test_failing_gpus_call_notes_once_and_thread_keeps_sampling():
    class Broken(FakeGpus):
        def gpus(self):
            raise RuntimeError("NVML exploded")

    rec = Recorder()
    sampler = Sampler(rec.record, rec.note, interval=0.05, gpu_source=Broken())
    sampler.start()
    rec.wait_for(4)
    sampler.stop()
    assert rec.notes == [NOTE_PREFIX + "RuntimeError: NVML exploded"]
    assert all("cpu_percent" in v and "gpu0.util" not in v for _, v in rec.samples)


def test_read_error_later_notes_once_and_keeps_sampling():
    class Flaky(FakeGpus):
        def read(self, handle):
            if self.reads >= 2:  # works for the first sample, then the GPU "falls off the bus"
                self.reads += 1
                raise RuntimeError("GPU is lost")
            return super().read(handle)

    rec = Recorder()
    source = Flaky(2)
    sampler = Sampler(rec.record, rec.note, interval=0.05, gpu_source=source)
    sampler.start()
    rec.wait_for(4)
    sampler.stop()
    assert "gpu1.util" in rec.samples[0][1]
    assert all("gpu0.util" not in v and "proc_rss" in v for _, v in rec.samples[1:])
    assert rec.notes == [NOTE_PREFIX + "reading GPU 0 failed: RuntimeError: GPU is lost"]
    assert source.reads >= 6  # still trying each sample: a GPU may come back


def test_failing_record_does_not_kill_the_thread():
    class FailsOnce(Recorder):
        def record(self, wall, values):
            super().record(wall, values)
            if len(self.samples) == 1:
                raise OSError("store closed")

    rec = FailsOnce()
    sampler = Sampler(rec.record, rec.note, interval=0.05, gpu_source=FakeGpus(0))
    sampler.start()
    rec.wait_for(3)
    sampler.stop()
    assert "system sampler error: OSError: store closed" in rec.notes


def test_torch_cuda_memory_only_when_cuda_is_initialised(monkeypatch):
    calls = []
    cuda = types.SimpleNamespace(
        is_initialized=lambda: False,
        device_count=lambda: 2,
        memory_allocated=lambda d: calls.append(d) or 100.0 * (d + 1),
        memory_reserved=lambda d: 200.0 * (d + 1),
        max_memory_allocated=lambda d: 150.0 * (d + 1),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    sampler = Sampler(lambda w, v: None, lambda m: None, gpu_source=FakeGpus(0))
    assert not any(k.startswith("cuda") for k in sampler.sample_once())
    assert calls == []  # never touched: reading could create a CUDA context
    cuda.is_initialized = lambda: True
    values = sampler.sample_once()
    assert values["cuda1.allocated"] == 200.0 and values["cuda0.reserved"] == 200.0
    assert values["cuda1.peak"] == 300.0


def test_importing_the_sampler_imports_neither_torch_nor_pynvml():
    code = (
        "import sys, dltui.engine.sampler, dltui.engine.nvml\n"
        "print(sorted(m for m in ('torch', 'pynvml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not HAS_GPU, reason="NVML sees no NVIDIA GPU on this machine")
def test_real_nvml_reads_a_gpu():
    handles, reason = nvml.gpus()
    assert reason is None and handles
    reading = nvml.read(handles[0])
    assert 0 <= reading["util"] <= 100
    assert 0 < reading["mem_used"] <= reading["mem_total"]
    assert reading["temp"] is None or 0 < reading["temp"] < 120
    assert reading["power"] is None or 0 < reading["power"] < 2000
    assert gpu_names()[0] and isinstance(gpu_names()[0], str)
    rec = Recorder()
    values = Sampler(rec.record, rec.note).sample_once()
    assert values["gpu0.mem_total"] == reading["mem_total"] and rec.notes == []
