"""The tensor inspector on a saved checkpoint or state_dict, no run or training needed.

`python -m dltui.engine.offline CKPT [NAME [EXPR]]` prints the tensor list, or one tensor seen
through a view expression, as JSON; with `--serve DIR` it answers the control protocol's
read-only `tensors`, `tensor` and `module` requests on DIR/control.sock, so the dashboard's
Tensors and Model tabs work on a finished run's checkpoints exactly as on a live engine (with
`--parent PID` it exits when that process is gone or DIR is removed: no orphan server).
The same `inspect()` does the work, so layouts, storage drawing and limits are the live ones.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import pickle
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltui.run import wire
from dltui.run.reader import RunNotFound, RunReader

from . import commands
from .control import ControlServer
from .inspect_tensor import InspectError, inspect

READ_ONLY = {"tensors", "tensor", "module", "status"}
WATCH_S = 0.5  # how often a served checkpoint checks that its parent and its socket are still there


class CheckpointError(Exception):
    """The file can't be read as a checkpoint: one line for the user."""


def load(path: Path, trust: bool = False) -> Any:
    """torch.load on CPU. Without `trust` only tensors and plain containers are unpickled (no code
    from the file runs), which covers state_dicts and dltui's own checkpoints."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=not trust)
        except pickle.UnpicklingError:
            if trust:
                raise
            allowed = _numpy_arrays(path)  # an RNG state saved with numpy arrays is data too
            if allowed is None:
                raise
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if trust:
            raise CheckpointError(f"{path} is not a readable checkpoint: {e}") from None
        raise CheckpointError(
            f"{path} holds Python objects besides tensors, and loading them runs code from the "
            "file. If you trust it, add --trust."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint: {first}") from None


NUMPY_DATA = {"numpy.ndarray", "numpy.dtype"}  # plus numpy's array _reconstruct and dtype classes


def _numpy_arrays(path: Path) -> list[Any] | None:
    """The globals to allow when all that stops a weights-only load is numpy arrays (e.g. a
    numpy RNG state), else None: numpy arrays and dtypes are data, not code."""
    import importlib

    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    ok = all(
        n in NUMPY_DATA or n.endswith("multiarray._reconstruct") or n.startswith("numpy.dtypes.")
        for n in names
    )
    if not names or not ok:
        return None
    out = []
    for n in names:
        mod, _, attr = n.rpartition(".")
        out.append(getattr(importlib.import_module(mod), attr))
    # the dtype classes an array's dtype is rebuilt from are not listed by name: allow them all
    dtypes = importlib.import_module("numpy.dtypes")
    out += [c for n, c in vars(dtypes).items() if n.endswith("DType") and isinstance(c, type)]
    return out


def tensors_of(obj: Any, params: set[str] | None = None) -> dict[str, tuple[str, torch.Tensor]]:
    """Every tensor in a loaded checkpoint by dotted name, with its kind. dltui's checkpoints
    (and the common {'model': state_dict, 'optimizer': ...} layout) name weights by their
    state_dict keys; optimizer state is listed by parameter index (a state_dict does not say
    which parameter an index is). `params`: the model's parameter names (a run's store has
    them), which split the weights into parameters and buffers as a live engine lists them."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    out: dict[str, tuple[str, torch.Tensor]] = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "optimizer" in obj:
        out.update(_weights(dict(_walk(obj["model"], "")), params))
        opt = obj.get("optimizer")
        if isinstance(opt, dict):
            for name, t in _walk(opt.get("state", {}), "optimizer"):
                out[name] = ("optimizer state", t)
        return out
    out.update(_weights(dict(_walk(obj, "")), params))
    return out


def _weights(
    weights: dict[str, torch.Tensor], params: set[str] | None
) -> dict[str, tuple[str, torch.Tensor]]:
    """A state_dict's tensors as parameters and buffers when the parameter names are known
    (a tied weight saved under a second name is the same parameter: same storage), else as
    plain weights."""
    if not params or not params & weights.keys():
        return {n: ("weights", t) for n, t in weights.items()}
    ptrs = {weights[n].data_ptr() for n in params & weights.keys() if weights[n].numel()}
    return {
        n: ("parameter" if n in params or (t.numel() and t.data_ptr() in ptrs) else "buffer", t)
        for n, t in weights.items()
    }


def run_params(path: Path) -> dict[str, bool]:
    """{parameter name: trainable} from the store of the run a checkpoint belongs to
    (RUN/checkpoints/X.pt), or {} for a file outside a run."""
    run_dir = path.resolve().parent.parent
    try:
        with RunReader(run_dir) as r:
            return {p["name"]: p["trainable"] for p in r.params()}
    except (RunNotFound, OSError, sqlite3.Error, ValueError):  # an unreadable store: no split
        return {}


def describe(
    tensors: dict[str, tuple[str, torch.Tensor]], trainable: dict[str, bool], name: str
) -> dict[str, Any]:
    """The `module` query answered from a checkpoint: the module's own parameters and buffers
    (name, shape, dtype, numel, requires_grad as the run recorded it). A checkpoint holds no
    training flag, hooks or module types: those are None."""
    key = "" if name in ("", "(model)") else name

    def rows(kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "shape": list(t.shape),
                "dtype": str(t.dtype).replace("torch.", ""),
                "device": str(t.device),
                "numel": t.numel(),
                "requires_grad": trainable.get(n),
            }
            for n, (kind, t) in tensors.items()
            if kind in kinds and n.rpartition(".")[0] == key
        ]

    return {
        "name": name,
        "type": None,
        "training": None,
        "extra": "",
        "params": rows(("parameter", "weights")),
        "buffers": rows(("buffer",)),
        "hooks": None,
    }


def _walk(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix or "tensor", obj
    elif isinstance(obj, nn.Module):
        yield from _walk(obj.state_dict(), prefix)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{prefix}.{i}" if prefix else str(i))


def listing(tensors: dict[str, tuple[str, torch.Tensor]]) -> list[dict[str, Any]]:
    return [
        {"name": n, "kind": k, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
        for n, (k, t) in tensors.items()
    ]


def inspect_one(
    tensors: dict[str, tuple[str, torch.Tensor]], name: str, expr: str | None, step: int | None
) -> dict[str, Any]:
    if name not in tensors:
        close = difflib.get_close_matches(name, list(tensors), n=5, cutoff=0.6)
        close += [n for n in tensors if name.split(".")[-1] in n and n not in close]
        close = close[:5]
        hint = f" Did you mean {', '.join(close)}?" if close else " List them with no NAME."
        raise commands.CommandError(f"no tensor named {name!r}.{hint}")
    kind, t = tensors[name]
    try:
        out = inspect(t, name, expr)
    except InspectError as e:
        raise commands.CommandError(str(e)) from None
    out["kind"], out["step"] = kind, step
    return out


class _StderrLog:
    """Where the control server's notes go without a run store: this process's stderr."""

    def event(self, kind: str, message: str, **_: Any) -> None:
        print(f"dltui: {message}", file=sys.stderr)


class CheckpointServer(ControlServer):
    """The control server's framing, limits and uid check, answering from a checkpoint."""

    def __init__(
        self,
        sock_dir: Path,
        path: Path,
        tensors: dict,
        step: int | None,
        trainable: dict[str, bool] | None = None,
    ) -> None:
        super().__init__(sock_dir, gate=None, store=_StderrLog(), loop=None)
        self.path, self.tensors, self.step = path, tensors, step
        self.trainable = trainable or {}

    def state(self) -> dict[str, Any]:
        return {
            "status": "checkpoint",
            "pid": os.getpid(),
            "step": self.step,
            "path": str(self.path),
        }

    def _clear_stale(self, path: Path) -> None:
        path.unlink(missing_ok=True)  # our own private folder: a leftover is ours

    def _dispatch(self, req: wire.Request) -> Any:
        if req.cmd not in READ_ONLY:
            raise commands.CommandError(
                f"{req.cmd!r}: {self.path.name} is a saved checkpoint, not a live run; "
                "only tensors, tensor and module work here."
            )
        if req.cmd == "status":
            return None
        if req.cmd == "tensors":
            return listing(self.tensors)
        name = req.args.get("name")
        if req.cmd == "module":
            if not isinstance(name, str):
                raise commands.CommandError("module needs a name (see the Model tab).")
            return describe(self.tensors, self.trainable, name)
        expr = req.args.get("expr")
        if not isinstance(name, str) or not name:
            raise commands.CommandError("tensor needs a name (see the `tensors` command).")
        if expr is not None and not isinstance(expr, str):
            raise commands.CommandError("expr must be a string like 'x.t()[1:3]'.")
        return inspect_one(self.tensors, name, expr, self.step)


def watch(parent: int | None, sock: Path) -> None:
    """End this process (as SIGTERM does: the socket is removed) once the parent that started it
    is gone or its socket was removed: a dashboard killed outright leaves no server behind.
    A thread polling every WATCH_S, not PR_SET_PDEATHSIG: that fires when the parent's
    *thread* ends, and the dashboard starts servers from short-lived worker threads."""
    while True:
        time.sleep(WATCH_S)
        if (parent is not None and os.getppid() != parent) or not sock.exists():
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dltui.engine.offline", description=__doc__)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("name", nargs="?")
    p.add_argument("expr", nargs="?")
    p.add_argument("--trust", action="store_true", help="unpickle arbitrary objects (runs code)")
    p.add_argument("--serve", type=Path, metavar="DIR", help="answer requests on DIR/control.sock")
    p.add_argument(
        "--parent", type=int, metavar="PID", help="with --serve: exit when process PID is gone"
    )
    args = p.parse_args(argv)
    try:
        obj = load(args.checkpoint, args.trust)
    except CheckpointError as e:
        print(f"dltui: {e}", file=sys.stderr)
        return 2
    trainable = run_params(args.checkpoint)
    tensors = tensors_of(obj, set(trainable))
    step = obj.get("step") if isinstance(obj, dict) and isinstance(obj.get("step"), int) else None
    if not tensors:
        print(f"dltui: {args.checkpoint} holds no tensors.", file=sys.stderr)
        return 2
    if args.serve is None:
        try:
            if args.name is None:
                data: Any = listing(tensors)
            else:
                data = inspect_one(tensors, args.name, args.expr, step)
        except commands.CommandError as e:
            print(f"dltui: {e}", file=sys.stderr)
            return 2
        print(json.dumps(data))
        return 0
    server = CheckpointServer(args.serve, args.checkpoint, tensors, step, trainable)
    # A hang-up (the terminal closed, tmux killed, SSH dropped) reaches the dashboard's whole
    # process group: end cleanly then too, not by the default action that leaves the socket.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(0))
    server.start()
    threading.Thread(
        target=watch, args=(args.parent, args.serve / wire.CONTROL_SOCKET), daemon=True
    ).start()
    print("ready", flush=True)  # the launcher waits for this line
    try:
        signal.pause()  # served by the server's threads until the launcher ends us
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.close()
        if args.parent is not None:  # a dashboard's private folder: gone with us (if empty)
            with contextlib.suppress(OSError):
                args.serve.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
