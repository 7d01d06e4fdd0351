"""The wire format both sides share: the run store's schema and the control messages (torch-free)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# Run status as stored in meta['status']. "crashed" is never written: readers derive it from a
# stale heartbeat or a dead pid while the stored status still says "running".
RUNNING, FINISHED, FAILED, STOPPED, CRASHED = "running", "finished", "failed", "stopped", "crashed"
STARTING = "starting"  # the engine process exists; the run has not begun training yet
TERMINAL_STATUSES = (FINISHED, FAILED, STOPPED)

TRAIN, VAL = "train", "val"

# A run whose heartbeat is older than this (and whose pid we cannot see alive) has crashed.
HEARTBEAT_EVERY_S = 1.0
STALE_AFTER_S = 10.0

# Scalar rollups: level L aggregates buckets of ROLLUP_BASE**L steps. Level 0 is the raw table.
ROLLUP_BASE = 8
ROLLUP_LEVELS = 8  # up to 8**8 = 16.7M steps per bucket at the top

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, phase TEXT NOT NULL, UNIQUE(name, phase));
CREATE TABLE IF NOT EXISTS scalars (
    series INTEGER NOT NULL, step INTEGER NOT NULL, epoch INTEGER NOT NULL,
    wall REAL NOT NULL, value REAL);
CREATE INDEX IF NOT EXISTS scalars_by_series ON scalars(series, step);
CREATE TABLE IF NOT EXISTS rollup (
    series INTEGER NOT NULL, level INTEGER NOT NULL, bucket INTEGER NOT NULL,
    n INTEGER NOT NULL, vmin REAL, vmax REAL, vsum REAL NOT NULL,
    vlast REAL, step_last INTEGER NOT NULL, wall_last REAL NOT NULL,
    PRIMARY KEY (series, level, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS params (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, shape TEXT NOT NULL,
    numel INTEGER NOT NULL, trainable INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS layer_stats (
    step INTEGER NOT NULL, param INTEGER NOT NULL,
    w_norm REAL, w_mean REAL, w_std REAL, w_maxabs REAL,
    g_norm REAL, g_mean REAL, g_std REAL, g_maxabs REAL,
    zero_frac REAL, nonfinite INTEGER, update_ratio REAL);
CREATE INDEX IF NOT EXISTS layer_stats_by_param ON layer_stats(param, step);
CREATE INDEX IF NOT EXISTS layer_stats_by_step ON layer_stats(step);
CREATE TABLE IF NOT EXISTS histograms (
    step INTEGER NOT NULL, param INTEGER NOT NULL, kind TEXT NOT NULL,
    lo REAL NOT NULL, hi REAL NOT NULL, counts TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS histograms_by_param ON histograms(param, kind, step);
CREATE TABLE IF NOT EXISTS system (wall REAL NOT NULL, name TEXT NOT NULL, value REAL);
CREATE INDEX IF NOT EXISTS system_by_name ON system(name, wall);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, wall REAL NOT NULL, step INTEGER, kind TEXT NOT NULL,
    level TEXT NOT NULL, message TEXT NOT NULL, data TEXT);
CREATE TABLE IF NOT EXISTS console (
    id INTEGER PRIMARY KEY, wall REAL NOT NULL, stream TEXT NOT NULL, line TEXT NOT NULL);
"""

LAYER_STAT_COLUMNS = (
    "w_norm",
    "w_mean",
    "w_std",
    "w_maxabs",
    "g_norm",
    "g_mean",
    "g_std",
    "g_maxabs",
    "zero_frac",
    "nonfinite",
    "update_ratio",
)

# Event kinds (events.kind).
EV_RUN, EV_STATUS, EV_COMMAND, EV_CHECKPOINT, EV_ALERT, EV_ERROR, EV_INFO = (
    "run",
    "status",
    "command",
    "checkpoint",
    "alert",
    "error",
    "info",
)


def lr_name(group: int, optimizer: str | None = None) -> str:
    """Scalar name of a param group's learning rate: `lr/0` for the run's (first) optimizer,
    `lr/<optimizer>/0` for any other one (a GAN's second optimizer)."""
    return f"lr/{group}" if optimizer is None else f"lr/{optimizer}/{group}"


# Per-step timing scalars the probe records besides the loss: not metrics, never charted as one.
TIMING_SCALARS = ("step_time", "data_time", "samples_per_s")

# How a run is driven (meta['driver']): dltui's loop over a recipe, or the user's own script.
DRIVER_RECIPE, DRIVER_SCRIPT = "recipe", "script"
# meta['steering']: which controls this run supports, e.g. {"pause": true, "eval": false, ...};
# meta['optimizers']: [{"name": "d", "groups": 1}, ...], the run's optimizer first.
STEERING_KEYS = ("pause", "step", "lr", "eval", "checkpoint", "stop", "resume")
# meta['gpus'], written by the engine's sampler after its first look (and when it changes):
# {"note": why there are no GPU readings, or None; "devices": [{"index", "name", "uuid", "mig"}]
# by NVML index; "run": NVML indices this run uses; "cuda": {"<CUDA index>": NVML index}}.
# System rows gpu<NVML index>.<field> and cuda<CUDA index>.allocated|reserved|peak hold the readings.
META_GPUS = "gpus"
# meta['gpu_processes']: {"rows": [{"gpu", "pid", "mem" (bytes or None), "user", "command",
# "run" (this engine's own process)}], "notes": {"<NVML index>": why its processes are not listed}}
META_GPU_PROCESSES = "gpu_processes"


# ---------------------------------------------------------------------------------------------
# Control channel: newline-delimited JSON over runs/<id>/control.sock.

MAX_REQUEST_BYTES = 64 * 1024
CONTROL_SOCKET = "control.sock"
COMMANDS = (
    "status",
    "pause",
    "resume",
    "step",
    "lr",
    "mode",
    "checkpoint",
    "stop",
    "tensors",
    "tensor",
    "module",  # read-only: one module's parameters, buffers, hooks and training flag
)


def parse_lr(value: Any) -> tuple[str, float]:
    """'0.01' -> ('set', 0.01); '*0.5' -> ('mul', 0.5); '/2' -> ('mul', 0.5); else ValueError.

    Here, torch-free, so the dashboard's LR dialog refuses exactly what the engine refuses.
    """
    text = str(value).strip()
    op = "set"
    if text[:1] in ("*", "/", "x"):
        op, text = ("div" if text[0] == "/" else "mul"), text[1:].strip()
    try:
        v = float(text)
    except ValueError:
        raise ValueError(
            f"learning rate {value!r} is not a number; use 0.01, *0.5 or /2."
        ) from None
    if not math.isfinite(v):
        raise ValueError(f"learning rate {value!r} is not finite; give a positive number.")
    if op == "div":
        v = 1.0 / v if v > 0 else v
        op = "mul"
        if not math.isfinite(v):
            raise ValueError(f"factor {value!r} is too small to divide by.")
    if v <= 0:
        what = "factor" if op != "set" else "learning rate"
        raise ValueError(f"{what} {value!r} must be greater than zero.")
    return op, v


@dataclass
class Request:
    """One command to the engine: `{"id": 1, "cmd": "lr", "args": {"value": "*0.5"}}`."""

    cmd: str
    args: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    def encode(self) -> bytes:
        return (json.dumps(asdict(self)) + "\n").encode()

    @classmethod
    def decode(cls, line: bytes | str) -> Request:
        """Parse one request line; raises ValueError with a message for the client."""
        if len(line) > MAX_REQUEST_BYTES:
            raise ValueError(f"request too large ({len(line)} bytes, limit {MAX_REQUEST_BYTES})")
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"malformed request (not JSON): {e}") from None
        except RecursionError:  # [[[[...]]]]: json recurses per level
            raise ValueError("malformed request: nested too deeply") from None
        except ValueError:  # e.g. an integer of 5,000 digits (Python's int-size guard)
            raise ValueError("malformed request: a number too long") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("cmd"), str):
            raise ValueError('malformed request: expected an object like {"cmd": "status"}')
        args = obj.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError("malformed request: 'args' must be an object")
        rid = obj.get("id")
        return cls(cmd=obj["cmd"], args=args, id=rid if isinstance(rid, int) else None)


@dataclass
class Reply:
    """The engine's answer: ok with the new state (and data), or an error saying what was wrong."""

    ok: bool
    id: int | None = None
    error: str | None = None
    state: dict[str, Any] | None = None
    data: Any = None

    def encode(self) -> bytes:
        return (json.dumps(asdict(self), default=str) + "\n").encode()

    @classmethod
    def decode(cls, line: bytes | str) -> Reply:
        obj = json.loads(line)
        return cls(**{k: obj.get(k) for k in ("ok", "id", "error", "state", "data")})
