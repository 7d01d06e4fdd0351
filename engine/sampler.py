"""A ~1 Hz daemon thread recording CPU, RAM, process, per-GPU (NVML) and torch.cuda memory samples,
and the GPUs' description and processes as run meta (data the dashboard draws, not text)."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from dltui.run import wire

# Cost: one sample is a handful of /proc reads (psutil) plus about ten NVML calls per GPU and a
# process listing, a few milliseconds of this thread's time per second on an 8-GPU box. All of it
# runs off the training thread; psutil and NVML drop the GIL in their C calls.

NOTE_PREFIX = "GPU metrics unavailable: "  # the human-readable event; the dashboard reads meta
READ_TIMEOUT_S = 0.05  # the longest one NVML reading may hold up a sample
SLOW_AFTER = 3  # readings in a row past the timeout before the note says NVML is slow
SETUP_TIMEOUT_S = 5.0  # nvmlInit and the GPUs' descriptions, once: slower on a many-GPU box
COMMAND_CHARS = 200  # a GPU process's command line is cut here in the store


class _Worker:
    """One daemon thread running NVML calls, so a call that hangs (a GPU falling off the bus
    can stall the driver for seconds) holds the sampler up for READ_TIMEOUT_S, not for its
    duration. While a call is stuck, later ones are skipped rather than queued behind it."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.busy = False

    def run(self, fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
        """(True, fn()) if it finished within timeout (re-raising what it raised), else
        (False, None); (False, None) at once while an earlier call is still stuck."""
        if self.busy:
            return False, None
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="dltui-nvml", daemon=True)
            self._thread.start()
        done, box = threading.Event(), {}

        def job() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # handed to the caller, who decides
                box["error"] = e
            finally:
                self.busy = False
                done.set()

        self.busy = True
        self._jobs.put(job)
        if not done.wait(timeout):
            return False, None
        if "error" in box:
            raise box["error"]
        return True, box.get("value")

    def close(self) -> None:
        """Let the thread end once it is free (a call stuck in the driver keeps it, harmlessly:
        it is a daemon). A later run() starts a new one."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


class Sampler:
    """Samples the system every `interval` seconds on a daemon thread and hands each to `record`.

    `note(message)` gets human-readable notes (each at most once); `meta(**values)`, when given,
    gets the GPU description (wire.META_GPUS) and processes (wire.META_GPU_PROCESSES) whenever
    they change. `gpu_source` is an engine.nvml.Nvml (None: the process's own, resolved on the
    first sample).
    """

    def __init__(
        self,
        record: Callable[[float, dict[str, float]], None],
        note: Callable[[str], None],
        interval: float = 1.0,
        gpu_source: Any = None,
        meta: Callable[..., None] | None = None,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        self._record = record
        self._note = note
        self._meta = meta
        self._interval = interval
        self._read_timeout = read_timeout
        self._gpu_source = gpu_source
        self._gpus: list[Any] | None = None  # handles, fetched once (NVML init is not free)
        self._infos: dict[int, Any] = {}
        self._gpu_note: str | None = None
        self._noted: set[str] = set()
        self._worker = _Worker()
        self._late = 0  # readings in a row that timed out
        self._cuda_map: dict[int, int] = {}  # CUDA device index -> NVML index
        self._users: dict[int, tuple[str | None, str | None]] = {}  # pid -> (user, command)
        self._meta_sent: dict[str, Any] = {}
        self._proc_notes: dict[str, str] = {}  # NVML index -> why its processes are not listed
        self._proc = psutil.Process()  # cached: psutil keeps per-Process state for cpu_percent
        self._max_proc_cpu = 100.0 * (psutil.cpu_count() or 1)
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

        NVML is not shut down here: the nvml object is shared and keeps its handles cached.
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._interval + 5.0)
        self._worker.close()

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
            except Exception as e:  # the thread must outlive a bug: say it once, keep sampling
                self._note_once("error", f"system sampler error: {type(e).__name__}: {e}")

    def sample_once(self) -> dict[str, float]:
        """Take one reading, pass it to record(time.time(), values) and return it."""
        with self._lock:
            wall = time.time()
            values: dict[str, float] = {}
            self._sample_system(values)
            try:
                procs = self._sample_gpus(values)
            except Exception as e:  # a bug in the GPU code: said once, loudly; CPU/RAM still go
                procs = None
                where = traceback.extract_tb(e.__traceback__)[-1]
                self._note_once(
                    "gpu-bug",
                    f"system sampler error reading GPUs: {type(e).__name__}: {e} "
                    f"({Path(where.filename).name}:{where.lineno}, a bug: please report it)",
                )
            _sample_torch_cuda(values)
            self._map_cuda(values)
            if self._meta is not None:
                self._publish(values, procs)
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
            # Like top: 100 per fully busy core, so up to 100 * cores. Two readings close together
            # (sample_once() on demand right after the 1 Hz one) divide the CPU time's clock-tick
            # steps by a tiny interval and read far above that: held to the most it can be.
            cpu = float(self._proc.cpu_percent(interval=None))
            values["proc_cpu"] = min(cpu, self._max_proc_cpu)

    # -- GPUs ----------------------------------------------------------------------------------
    def _source(self) -> Any:
        if self._gpu_source is None:
            from . import nvml

            self._gpu_source = nvml.default()
        return self._gpu_source

    def _timed(
        self, what: str, fn: Callable[[], Any], timeout: float | None = None
    ) -> tuple[bool, Any]:
        timeout = self._read_timeout if timeout is None else timeout
        done, value = self._worker.run(fn, timeout)
        self._late = self._late + 1 if not done else 0
        if self._late >= SLOW_AFTER:  # once, not for a single late wake-up on a loaded box
            ms = timeout * 1e3
            self._note_once(
                "slow", f"NVML took over {ms:.0f} ms ({what}); GPU readings skip while it is slow"
            )
        return done, value

    def _sample_gpus(self, values: dict[str, float]) -> list[dict[str, Any]] | None:
        """Per-GPU readings into values; returns the process rows (None: not read this time)."""
        source = self._source()
        if self._gpus is None:
            done, found = self._timed("looking for GPUs", source.gpus, SETUP_TIMEOUT_S)
            if not done:
                return None  # looked again next sample
            handles, reason = found
            self._gpus = list(handles)
            if reason is not None or not handles:
                self._gpu_note = reason or "no NVIDIA GPU"
                self._note_once("gpu", NOTE_PREFIX + self._gpu_note)
            for h in self._gpus:
                ok, info = self._timed(
                    f"GPU {h.index} description", lambda h=h: source.info(h), SETUP_TIMEOUT_S
                )
                if ok:
                    self._infos[h.index] = info
        rows: list[dict[str, Any]] | None = [] if self._gpus else None
        notes: dict[str, str] = {}
        for handle in self._gpus:
            ok, reading = self._timed(f"GPU {handle.index}", lambda h=handle: source.read(h))
            if ok:
                for key, value in reading.items():
                    if value is not None:
                        values[f"gpu{handle.index}.{key}"] = float(value)
            ok, procs = self._timed(
                f"GPU {handle.index} processes", lambda h=handle: source.processes(h)
            )
            if not ok:
                rows = None
                continue
            if procs.note:
                notes[str(handle.index)] = procs.note
            if rows is not None:
                rows.extend(self._process_row(p) for p in procs.rows)
        for message in source.drain_errors():
            self._note_once(message, message)
        self._proc_notes = notes
        return rows

    def _process_row(self, p: Any) -> dict[str, Any]:
        if p.pid not in self._users:
            self._users[p.pid] = _owner(p.pid)
        user, command = self._users[p.pid]
        return {
            "gpu": p.gpu,
            "pid": p.pid,
            "mem": p.used_memory,
            "user": user,
            "command": command,
            "run": p.pid == os.getpid(),
        }

    def _map_cuda(self, values: dict[str, float]) -> None:
        """Which NVML GPU each of this process's CUDA devices is (CUDA_VISIBLE_DEVICES and
        CUDA's own ordering renumber them), by UUID, else PCI bus, else the visible-devices list."""
        cuda = [int(k[4:].split(".")[0]) for k in values if k.startswith("cuda")]
        missing = [d for d in dict.fromkeys(cuda) if d not in self._cuda_map]
        if missing:
            self._cuda_map.update(cuda_to_nvml(missing, list(self._infos.values())))

    def _publish(self, values: dict[str, float], rows: list[dict[str, Any]] | None) -> None:
        used = {self._cuda_map[d] for d in self._cuda_map if values.get(f"cuda{d}.reserved")}
        if rows:
            used |= {r["gpu"] for r in rows if r["run"]}
        gpus = {
            "note": self._gpu_note,
            "devices": [
                {"index": i.index, "name": i.name, "uuid": i.uuid, "mig": i.mig}
                for i in self._infos.values()
            ],
            "run": sorted(used | set(self._meta_sent.get(wire.META_GPUS, {}).get("run", []))),
            "cuda": {str(d): n for d, n in sorted(self._cuda_map.items())},
        }
        update: dict[str, Any] = {}
        if gpus != self._meta_sent.get(wire.META_GPUS):
            update[wire.META_GPUS] = gpus
        if rows is not None:
            procs = {"rows": rows, "notes": self._proc_notes}
            if procs != self._meta_sent.get(wire.META_GPU_PROCESSES):
                update[wire.META_GPU_PROCESSES] = procs
        if update:
            self._meta_sent.update(update)
            self._meta(**update)

    def _note_once(self, key: str, message: str) -> None:
        if key in self._noted:
            return
        self._noted.add(key)
        try:
            self._note(message)
        except Exception:
            pass  # the note is advisory; a failing sink must not stop sampling


def _owner(pid: int) -> tuple[str | None, str | None]:
    """(user, command line) of a process; None for what this user may not see (another
    container's pid namespace, another user's process under hidepid)."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            user = p.username()
            cmd = " ".join(p.cmdline()) or p.name()
        return user, cmd[:COMMAND_CHARS]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None, None


def cuda_to_nvml(devices: list[int], infos: list[Any]) -> dict[int, int]:
    """NVML index of each CUDA device index: by UUID, else by PCI bus id, else through a
    numeric CUDA_VISIBLE_DEVICES. Devices that match nothing are left out. Never creates a CUDA
    context: torch is only asked when it has already initialised CUDA."""
    out: dict[int, int] = {}
    torch = sys.modules.get("torch")
    props = {}
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                props = {d: torch.cuda.get_device_properties(d) for d in devices}
        except (RuntimeError, AssertionError):  # CUDA in a bad state: fall back to the list
            props = {}
    for d in devices:
        p = props.get(d)
        uuid = str(getattr(p, "uuid", "") or "") if p is not None else ""
        bus = getattr(p, "pci_bus_id", None) if p is not None else None
        for info in infos:
            if uuid and info.uuid and info.uuid.endswith(uuid):
                out[d] = info.index
                break
            if bus is not None and info.pci_bus and _bus(info.pci_bus) == bus:
                out[d] = info.index
                break
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    listed = [v.strip() for v in visible.split(",")] if visible else None
    for d in devices:
        if d in out:
            continue
        if listed is None:
            out[d] = d
        elif d < len(listed) and listed[d].isdigit():
            out[d] = int(listed[d])
    return out


def _bus(pci: str) -> int | None:
    """The bus number of an NVML busId, '00000000:17:00.0' -> 0x17."""
    parts = pci.split(":")
    try:
        return int(parts[-2], 16) if len(parts) >= 2 else None
    except ValueError:
        return None


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
    except (RuntimeError, AttributeError):
        return  # torch half-imported by the main thread, or CUDA in a bad state: skip this sample
