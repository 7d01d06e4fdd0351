"""The system sampler: real psutil, the fake NVML (tests/fake_nvml.py) through the real Nvml class,
GPU description and processes as run meta, the 50 ms bound on an NVML reading."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import types

import psutil
import pytest

from dltui.engine import nvml
from dltui.engine.nvml import Nvml
from dltui.engine.sampler import NOTE_PREFIX, Sampler, cuda_to_nvml
from dltui.run import wire

sys.path.insert(0, os.path.dirname(__file__))
import fake_nvml  # noqa: E402

HAS_GPU = not Nvml().gpus()[1]


class Recorder:
    """Collects record(), note() and meta() calls from any thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.notes: list[str] = []
        self.meta: dict = {}
        self.meta_writes = 0
        self._lock = threading.Lock()

    def record(self, wall: float, values: dict[str, float]) -> None:
        with self._lock:
            self.samples.append((wall, dict(values)))

    def note(self, message: str) -> None:
        with self._lock:
            self.notes.append(message)

    def set_meta(self, **values) -> None:
        with self._lock:
            self.meta.update(values)
            self.meta_writes += 1

    def wait_for(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.samples) < n:
            assert time.monotonic() < deadline, f"only {len(self.samples)} samples in {timeout}s"
            time.sleep(0.01)


def sampler(rec: Recorder, module=None, **kw) -> Sampler:
    source = Nvml(module if module is not None else fake_nvml.make())
    return Sampler(rec.record, rec.note, gpu_source=source, meta=rec.set_meta, **kw)


def test_real_sampler_records_sane_system_values():
    rec = Recorder()
    s = Sampler(rec.record, rec.note, meta=rec.set_meta)
    before = time.time()
    values = s.sample_once()
    s.sample_once()
    wall, recorded = rec.samples[0]
    assert before - 1 <= wall <= time.time() + 1 and recorded == values
    cores = psutil.cpu_count() or 1
    assert 0 <= values["cpu_percent"] <= 100
    assert 0 < values["ram_used"] <= values["ram_total"]
    assert 10 * 2**20 < values["proc_rss"] < values["ram_total"]  # this python + pytest
    assert 0 <= values["proc_cpu"] <= 100 * cores
    for _ in range(30):  # readings close together: CPU time moves in clock ticks, not smoothly
        t = time.perf_counter()
        while time.perf_counter() - t < 0.002:
            pass
        assert 0 <= s.sample_once()["proc_cpu"] <= 100 * cores
    if HAS_GPU:
        assert values["gpu0.mem_total"] > 0 and rec.meta[wire.META_GPUS]["note"] is None
    else:  # this machine: the reason is data (meta), and one readable note event
        assert not any(k.startswith("gpu") for k in values)
        note = rec.meta[wire.META_GPUS]["note"]
        assert note and rec.notes == [NOTE_PREFIX + note]
        assert rec.meta[wire.META_GPUS]["devices"] == []


def test_thread_samples_until_stopped_and_stop_is_idempotent():
    rec = Recorder()
    s = sampler(rec, interval=0.05)
    s.stop()  # before start: harmless
    s.start()
    s.start()  # already running: no second thread
    rec.wait_for(3)
    assert sum(t.name == "dltui-sampler" for t in threading.enumerate()) == 1
    worker = s._worker._thread
    assert worker is not None and worker.is_alive()  # the NVML calls' thread
    s.stop()
    worker.join(timeout=5)
    assert not worker.is_alive()  # no thread left behind
    assert not any(t.name == "dltui-sampler" for t in threading.enumerate())
    count = len(rec.samples)
    s.stop()
    time.sleep(0.15)
    assert len(rec.samples) == count
    walls = [w for w, _ in rec.samples]
    assert walls == sorted(walls)


def test_eight_gpus_readings_description_and_processes():
    rec = Recorder()
    fake = fake_nvml.make(8, mig=(5,))
    values = sampler(rec, fake).sample_once()
    for i in range(8):
        assert 0 < values[f"gpu{i}.mem_total"] == 141 * 2**30
        assert values[f"gpu{i}.power_limit"] == 700.0 and values[f"gpu{i}.clock_sm"] > 0
        assert f"gpu{i}.fan" not in values  # NotSupported: N/A, silently
        assert (f"gpu{i}.util" in values) == (i != 5)  # MIG: utilisation is per instance
    gpus = rec.meta[wire.META_GPUS]
    assert gpus["note"] is None and [d["index"] for d in gpus["devices"]] == list(range(8))
    assert gpus["devices"][5]["mig"] is True and gpus["devices"][0]["mig"] is False
    assert gpus["devices"][3]["name"] == "NVIDIA H200" and gpus["devices"][3]["uuid"]
    assert gpus["run"] == [0, 1]  # this process holds memory there
    procs = rec.meta[wire.META_GPU_PROCESSES]
    mine = [r for r in procs["rows"] if r["run"]]
    assert [r["gpu"] for r in mine] == [0, 1] and mine[0]["pid"] == os.getpid()
    assert mine[0]["user"] == psutil.Process().username() and "python" in mine[0]["command"]
    assert {r["pid"] for r in procs["rows"] if not r["run"]} <= {1, os.getppid()}
    assert procs["notes"] == {"5": "listing processes is not supported here"}
    assert rec.notes == []  # NotSupported is not an error worth a note


def test_no_permission_for_processes_is_a_readable_note():
    rec = Recorder()
    sampler(rec, fake_nvml.make(2, processes="NoPermission")).sample_once()
    procs = rec.meta[wire.META_GPU_PROCESSES]
    assert procs["rows"] == []
    assert procs["notes"] == {"0": "no permission to list GPU processes", "1": procs["notes"]["0"]}


def test_nvml_error_is_noted_once_with_its_name_and_reads_none():
    rec = Recorder()
    fake = fake_nvml.make(2, broken={"power": "GpuIsLost", "temperature": "Unknown"})
    s = sampler(rec, fake)
    for _ in range(3):
        values = s.sample_once()
    assert "gpu0.power" not in values and "gpu1.temp" not in values and "gpu1.util" in values
    assert sorted(rec.notes) == [
        "NVML NVMLError_GpuIsLost reading power of GPU 0: GPU is lost",
        "NVML NVMLError_Unknown reading temperature of GPU 0: Unknown Error",
    ]


def test_meta_is_written_only_when_it_changes():
    rec = Recorder()
    fake = fake_nvml.make(2, own_gpus=(0,), extra_pids=())
    fake.nvmlDeviceGetMemoryInfo = lambda h, version=None: types.SimpleNamespace(
        used=2**30, total=2**34
    )
    real = fake.nvmlDeviceGetComputeRunningProcesses
    fake.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        types.SimpleNamespace(pid=p.pid, usedGpuMemory=2**29) for p in real(h)
    ]
    s = sampler(rec, fake)
    s.sample_once()
    writes = rec.meta_writes
    s.sample_once()
    s.sample_once()
    assert rec.meta_writes == writes == 1


def test_programming_errors_are_not_swallowed_by_nvml():
    fake = fake_nvml.make(1)
    fake.nvmlDeviceGetPowerUsage = lambda h: "250 W"  # a wrong type: a bug, not an NVML state
    source = Nvml(fake)
    handles, _ = source.gpus()
    with pytest.raises(ValueError):
        source.read(handles[0])
    # ... and the sampler says so once, naming it, and keeps sampling the rest
    rec = Recorder()
    s = Sampler(rec.record, rec.note, gpu_source=Nvml(fake), meta=rec.set_meta, interval=0.05)
    s.start()
    rec.wait_for(3)
    s.stop()
    assert len(rec.notes) == 1
    assert rec.notes[0].startswith("system sampler error reading GPUs: ValueError")
    assert "nvml.py:" in rec.notes[0] and all("cpu_percent" in v for _, v in rec.samples)


def test_a_hanging_nvml_call_holds_a_sample_up_for_50_ms_only():
    rec = Recorder()
    fake = fake_nvml.make(4, hang={"power": 0.6})
    s = sampler(rec, fake)
    s.sample_once()  # set-up (init, descriptions) may take its time; readings may not
    times = []
    for _ in range(4):
        t = time.perf_counter()
        values = s.sample_once()
        times.append(time.perf_counter() - t)
    # 50 ms for the stuck reading; the others are skipped at once while it is stuck
    assert max(times) < 0.05 + 0.1, times
    assert not any(k.startswith("gpu") for k in values)
    slow = [n for n in rec.notes if "over 50 ms" in n]
    assert len(slow) == 1 and slow[0].endswith("GPU readings skip while it is slow")
    time.sleep(0.7)  # the stuck call returns; readings resume (and stay slow, skipped again)
    fake.nvmlDeviceGetPowerUsage = lambda h: 300_000
    values = s.sample_once()
    assert values["gpu3.power"] == 300.0


@pytest.mark.parametrize(
    "init_error, expected",
    [
        ("LibraryNotFound", "NVML library not found (no driver)"),
        ("DriverNotLoaded", "NVIDIA driver not loaded"),
        ("NoPermission", "no permission to use NVML"),
        ("Unknown", "NVML error: NVMLError_Unknown: Unknown Error"),
    ],
)
def test_nvml_unavailable_reasons_are_data(init_error, expected):
    fake = fake_nvml.make(2, init_error=init_error)
    assert Nvml(fake).gpus() == ([], expected)
    rec = Recorder()
    s = sampler(rec, fake)
    values = s.sample_once()
    s.sample_once()
    assert rec.meta[wire.META_GPUS]["note"] == expected and "cpu_percent" in values
    assert rec.notes == [NOTE_PREFIX + expected]
    assert wire.META_GPU_PROCESSES not in rec.meta


def test_zero_gpus_and_a_missing_library():
    assert Nvml(fake_nvml.make(0)).gpus() == ([], "no NVIDIA GPU")

    def missing():
        raise ImportError("No module named 'pynvml'")

    handles, reason = Nvml(loader=missing).gpus()
    assert handles == [] and reason == "nvidia-ml-py is not installed"


def test_init_once_handles_cached_and_shutdown_idempotent():
    fake = fake_nvml.make(2)
    source = Nvml(fake)
    for _ in range(3):
        handles, _ = source.gpus()
    assert fake.inits == 1 and fake.calls["handle"] == 2
    source.shutdown()
    source.shutdown()
    assert fake.shutdowns == 1
    assert source.read(handles[0]) == dict.fromkeys(nvml.FIELDS)  # after shutdown: unknown


def test_fake_nvml_env_var_loads_the_fake_for_the_engine(monkeypatch):
    path = os.path.join(os.path.dirname(__file__), "fake_nvml.py")
    monkeypatch.setenv(nvml.FAKE_ENV, path)
    monkeypatch.setenv("DLTUI_FAKE_NVML_CONFIG", '{"gpus": 3, "name": "Fake A100"}')
    source = Nvml()
    handles, reason = source.gpus()
    assert reason is None and len(handles) == 3 and source.info(handles[2]).name == "Fake A100"
    monkeypatch.setenv(nvml.FAKE_ENV, "/nonexistent/fake.py")
    handles, reason = Nvml().gpus()
    assert handles == [] and "/nonexistent/fake.py" in reason


def test_cuda_index_maps_to_nvml_index(monkeypatch):
    source = Nvml(fake_nvml.make(4))
    infos = [source.info(h) for h in source.gpus()[0]]
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert cuda_to_nvml([0, 1], infos) == {0: 0, 1: 1}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert cuda_to_nvml([0, 1], infos) == {0: 2, 1: 3}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-fa6e0000")  # a UUID list: only torch can tell
    assert cuda_to_nvml([0], infos) == {}
    props = {0: types.SimpleNamespace(uuid="fa6e0000-0000-0000-0000-000000000003", pci_bus_id=0)}
    cuda = types.SimpleNamespace(is_initialized=lambda: True, get_device_properties=props.get)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert cuda_to_nvml([0], infos) == {0: 3}  # by UUID, whatever the env says


def test_torch_cuda_memory_only_when_cuda_is_initialised(monkeypatch):
    calls = []
    cuda = types.SimpleNamespace(
        is_initialized=lambda: False,
        device_count=lambda: 2,
        memory_allocated=lambda d: calls.append(d) or 100.0 * (d + 1),
        memory_reserved=lambda d: 200.0 * (d + 1),
        max_memory_allocated=lambda d: 150.0 * (d + 1),
        get_device_properties=lambda d: types.SimpleNamespace(uuid="", pci_bus_id=None),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    rec = Recorder()
    s = sampler(rec, fake_nvml.make(4, own_gpus=()))
    assert not any(k.startswith("cuda") for k in s.sample_once())
    assert calls == []  # never touched: reading could create a CUDA context
    cuda.is_initialized = lambda: True
    values = s.sample_once()
    assert values["cuda1.allocated"] == 200.0 and values["cuda0.reserved"] == 200.0
    assert values["cuda1.peak"] == 300.0
    gpus = rec.meta[wire.META_GPUS]
    assert gpus["cuda"] == {"0": 3, "1": 1} and gpus["run"] == [1, 3]


def test_importing_the_sampler_imports_neither_torch_nor_pynvml():
    code = (
        "import sys, dltui.engine.sampler, dltui.engine.nvml\n"
        "print(sorted(m for m in ('torch', 'pynvml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not HAS_GPU, reason="NVML sees no NVIDIA GPU on this machine")
def test_real_nvml_reads_a_gpu():
    source = Nvml()
    handles, reason = source.gpus()
    assert reason is None and handles
    reading = source.read(handles[0])
    assert reading["util"] is None or 0 <= reading["util"] <= 100
    assert 0 < reading["mem_used"] <= reading["mem_total"]
    assert reading["temp"] is None or 0 < reading["temp"] < 120
    assert reading["power"] is None or 0 < reading["power"] < 2000
    assert source.info(handles[0]).name and source.drain_errors() == []
    source.processes(handles[0])  # rows or a note; never raises
