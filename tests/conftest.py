"""Shared helpers: tiny recipe files, the real `dltui` CLI in a subprocess, in-process runs, reading stores."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dltui.engine

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TEST_RECIPES = Path(__file__).resolve().parent / "recipes"
ENGINE_DIR = str(Path(dltui.engine.__file__).resolve().parent)  # where the engine's frames live

# One intra-op thread per engine: several engines run side by side on a 2-core CI box, and
# oversubscribed BLAS threads make each of them slower than running them one after another.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CLI_TIMEOUT_S = 120


# -- recipe source ---------------------------------------------------------------------------

HEADER = """\
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
"""


def linear_recipe(
    n: int = 200,
    batch: int = 20,
    epochs: int = 1,
    val: int = 0,
    lr: float = 0.05,
    seed: int | None = 0,
    extra: str = "",
) -> str:
    """Source of a tiny regression recipe (nn.Linear(4, 1), MSE, SGD); `extra` is appended last,
    so it can replace any name (`model = ...`) or add one (`scheduler = ...`)."""
    seed_line = f"torch.manual_seed({seed})\n" if seed is not None else ""
    val_lines = (
        (
            f"xv = torch.randn({val}, 4)\n"
            "yv = xv @ W + 0.1 * torch.randn(len(xv), 1)\n"
            "val_loader = DataLoader(TensorDataset(xv, yv), batch_size=50)\n"
        )
        if val
        else ""
    )
    return (
        HEADER
        + seed_line
        + "W = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])\n"
        + f"x = torch.randn({n}, 4)\n"
        + "y = x @ W + 0.1 * torch.randn(len(x), 1)\n"
        + f"train_loader = DataLoader(TensorDataset(x, y), batch_size={batch})\n"
        + val_lines
        + "model = nn.Linear(4, 1)\n"
        + "loss_fn = nn.MSELoss()\n"
        + f"optimizer = torch.optim.SGD(model.parameters(), lr={lr})\n"
        + f"epochs = {epochs}\n"
        + textwrap.dedent(extra)
    )


@pytest.fixture
def write_recipe(tmp_path: Path) -> Callable[..., Path]:
    """write_recipe(source, name='recipe.py') -> path of the file, in tmp_path/recipes/."""

    def write(source: str, name: str = "recipe.py") -> Path:
        folder = tmp_path / "recipes"
        folder.mkdir(exist_ok=True)
        path = folder / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


# -- the real CLI ------------------------------------------------------------------------------


def cli_argv(*args: Any) -> list[str]:
    return [sys.executable, "-m", "dltui.tui.cli", *map(str, args)]


def run_cli(*args: Any, cwd: Path, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run `dltui ARGS...` to the end (stdout and stderr are pipes, so never a terminal)."""
    return subprocess.run(
        cli_argv(*args),
        cwd=cwd,
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn_engine(
    recipe: Path, run_dir: Path, log: Path, args: tuple[str, ...] = (), **popen: Any
) -> subprocess.Popen:
    """A real `python -m dltui.engine` on `run_dir`, detached, its output in the file `log`.
    `args`: the file's own argv (after `--`, so dltui reads none of it). `popen`: more Popen
    arguments (a preexec_fn that sets a limit, a new session)."""
    argv = [sys.executable, "-m", "dltui.engine", "--run-dir", str(run_dir), "--detached"]
    argv += ["--", str(recipe), *args] if args else [str(recipe)]
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=CHILD_ENV, **popen)


@contextlib.contextmanager
def running_engine(
    recipe_source: str, root: Path, name: str, steps: int = 1, timeout: float = 90.0
) -> Iterator[Path]:
    """A live detached engine on root/runs/NAME training `recipe_source` (written to
    root/NAME.py): yields its run directory once its socket is up and `steps` steps are in the
    store; killed on the way out."""
    recipe = root / f"{name}.py"
    recipe.write_text(recipe_source)
    run_dir = root / "runs" / name
    run_dir.parent.mkdir(exist_ok=True)
    log = root / f"{name}.log"
    proc = spawn_engine(recipe, run_dir, log)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            if (run_dir / "control.sock").exists() and (run_dir / "run.sqlite").exists():
                from dltui.run.reader import RunReader

                with RunReader(run_dir) as r:
                    if (r.meta().get("progress") or {}).get("step", 0) >= steps:
                        break
            time.sleep(0.1)
        else:
            raise AssertionError(f"engine not ready in {timeout} s:\n{log.read_text()}")
        yield run_dir
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


class Started:
    """A `dltui` process running in the background, its output going to files (no pipe to fill)."""

    def __init__(self, args: tuple[Any, ...], cwd: Path, log_dir: Path, tag: str) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = log_dir / f"{tag}.out", log_dir / f"{tag}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                cli_argv(*args), cwd=cwd, env=CHILD_ENV, stdout=out, stderr=err
            )
        self._done: subprocess.CompletedProcess | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
        if self._done is None:
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
            self._done = subprocess.CompletedProcess(
                self.proc.args, rc, self.out_path.read_text(), self.err_path.read_text()
            )
        return self._done

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_cli(*args: Any, cwd: Path, log_dir: Path | None = None, tag: str = "cli") -> Started:
    """Start `dltui ARGS...` without waiting: several engines can import torch side by side."""
    return Started(args, cwd, log_dir or cwd / "logs", tag)


def run_dirs(runs_dir: Path) -> list[Path]:
    """Run directories holding a store, oldest name first."""
    if not runs_dir.is_dir():
        return []
    return sorted(d for d in runs_dir.iterdir() if (d / "run.sqlite").exists())


def only_run(runs_dir: Path) -> Path:
    dirs = run_dirs(runs_dir)
    assert len(dirs) == 1, f"expected one run in {runs_dir}, found {[d.name for d in dirs]}"
    return dirs[0]


def user_frames(text: str) -> list[str]:
    """The file names of every traceback frame in `text`."""
    return [line.split('"')[1] for line in text.splitlines() if line.lstrip().startswith('File "')]


def assert_no_internal_frames(text: str) -> None:
    """No traceback frame from dltui's engine, importlib or frozen bootstrap modules."""
    for f in user_frames(text):
        assert not f.startswith(ENGINE_DIR), f"engine frame {f} in:\n{text}"
        assert "importlib" not in f and not f.startswith("<frozen"), f"import machinery in:\n{text}"


# -- reading a store ---------------------------------------------------------------------------


def scalar_table(run_dir: Path) -> dict[tuple[str, str], list[tuple[int, int, float | None]]]:
    """{(name, phase): [(step, epoch, value), ...] in step order}, read through RunReader."""
    from dltui.run.reader import RunReader

    out: dict[tuple[str, str], list[tuple[int, int, float | None]]] = defaultdict(list)
    with RunReader(run_dir) as r:
        for step, epoch, phase, _wall, name, value in r.scalar_rows():
            out[(name, phase)].append((step, epoch, value))
    return dict(out)


def steps_of(table: dict, name: str, phase: str = "train") -> list[int]:
    return [s for s, _, _ in table.get((name, phase), [])]


def values_of(table: dict, name: str, phase: str = "train") -> list[float | None]:
    return [v for _, _, v in table.get((name, phase), [])]


def by_step(table: dict, name: str, phase: str = "train") -> dict[int, float | None]:
    return {s: v for s, _, v in table.get((name, phase), [])}


def events_of(run_dir: Path, kind: str | None = None) -> list[dict]:
    from dltui.run.reader import RunReader

    with RunReader(run_dir) as r:
        return r.events(limit=100_000, kind=kind)


# -- a run in this process, wired the way engine/main.py wires it ------------------------------


@dataclass
class Trained:
    status: str
    error: BaseException | None
    run_dir: Path
    loop: Any  # dltui.engine.loop.Loop
    probe: Any

    @property
    def recipe(self) -> Any:
        return self.loop.r

    def table(self) -> dict:
        return scalar_table(self.run_dir)

    def meta(self) -> dict:
        from dltui.run.reader import RunReader

        with RunReader(self.run_dir) as r:
            return r.meta()


def train_in_process(
    recipe_path: Path,
    run_dir: Path,
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    stats_every: int | None = None,
    hist_every: int | None = None,
    metric_every: int | None = None,
    seed: int | None = None,
    args: list[str] | None = None,
    resume: dict | None = None,
    callbacks: list[Any] | None = None,
) -> Trained:
    """Context + session -> load_recipe -> RunStore -> Gate -> Probe -> Loop.run() ->
    store.close(status), as in engine/main.py, minus the things that belong to a process
    (signals, stdout capture, sampler). `args` is the recipe's own argv; `callbacks` observe too."""
    import dltui
    from dltui.engine.gate import Gate
    from dltui.engine.loop import Loop, Settings, seed_everything
    from dltui.engine.probe import Probe
    from dltui.engine.recipe import load_recipe, user_traceback
    from dltui.engine.script import Session
    from dltui.engine.store import RunStore, host_info
    from dltui.run import wire

    if seed is not None:
        seed_everything(seed)  # before the recipe is imported, as `--seed` does
    ctx = dltui.Context(
        epochs=epochs,
        max_steps=max_steps,
        device="cpu",
        seed=seed,
        args=list(args or []),
        script=str(recipe_path),
    )
    session = Session(ctx)
    dltui._session = session
    try:
        recipe = load_recipe(recipe_path, ctx)
        store = RunStore(run_dir / "run.sqlite")
        store.start()
        gate = Gate()
        probe = Probe(
            store, stats_every=stats_every, hist_every=hist_every, metric_every=metric_every
        )
        settings = Settings(
            epochs=epochs,
            max_steps=max_steps,
            seed=seed,
            device="cpu",
            checkpoint_dir=run_dir / "checkpoints",
            resume=resume,
            context=ctx,
        )
        loop = Loop(recipe, settings, [probe, *(callbacks or [])], gate)
        store.set_meta(
            status=wire.RUNNING, started=time.time(), script=str(recipe_path), **host_info()
        )
        session.attach(loop, probe)
        status, error = loop.run()
    finally:
        dltui._session = None
    if error is not None:
        store.event(
            wire.EV_ERROR,
            repr(error),
            step=loop.step,
            level="error",
            data={"traceback": user_traceback(error)},
        )
    store.close(status)
    return Trained(status, error, run_dir, loop, probe)
