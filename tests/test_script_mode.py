"""Script mode (issue 7) end to end: a user's own, unmodified training script run by the real
`dltui train` CLI, read back through `dltui runs --json`, `dltui export --csv`, `dltui status
--json`, `dltui ctl` and the run's SQLite.

The scripts live in tests/scripts/: (a) mnist_tutorial.py, the PyTorch-tutorial shape (argparse in
main(), no dltui import); (b) nanogpt_train.py, nanoGPT's module-level train.py (accumulation,
GradScaler, clipping, an LR assigned to every param group each iteration); (c) dcgan_toy.py, a GAN
(two models, two optimizers, two backward() calls for D); (d) word_lm.py, an LSTM language model
(hidden state carried across batches, detached, clipping). Each takes `--trace FILE`: one JSON line
per iteration with what backward() was called on, the LR the optimizer used (read by the
optimizer's own step pre-hook, which runs after dltui's global one) and the LR the script meant.
That is the ground truth dltui's record is checked against.

Everything is started at once by the module fixture `world` (each process spends ~6 s importing
torch and torch._dynamo on a 2-core box, so they overlap), and the mid-run steering of live runs
happens in threads, so the tests themselves only wait and compare:
  - acceptance runs: `dltui train --headless SCRIPT --epochs 2 --lr 0.01` (small epochs), paused
    as soon as their control socket answers, stepped exactly 3, checkpointed (and, for the GAN, evaluated), resumed,
    and run to the end. None of that may change what the script computes: its printed output is
    compared line for line with `python SCRIPT ...`.
  - LR runs: `dltui train --detach [OPTIONS] -- SCRIPT` with endless epochs, paused mid-run,
    LR '*0.5', step 3, resumed for a few steps, stopped.
  - one run each for the rest: argv/__name__/sys.path[0]/cwd and exit status (a probe script),
    an argparse error, an exception, a script that never steps, --script / --recipe.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CHILD_ENV,
    Started,
    assert_no_internal_frames,
    cli_argv,
    events_of,
    run_cli,
    run_dirs,
)

from dltui.run import wire
from dltui.run.reader import RunReader, pid_alive

pytestmark = pytest.mark.timeout(400)  # the first test waits for the whole batch of processes

SCRIPTS = Path(__file__).resolve().parent / "scripts"
ACCEPT_ARGS = ("--epochs", "2", "--lr", "0.01")
ENDLESS_ARGS = ("--epochs", "1000", "--lr", "0.01")  # LR runs: stopped by `dltui ctl stop`
WAIT_S = 240.0  # a process, however contended, finishes within this
CTL_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Shape:
    """One acceptance script and what it is expected to leave behind."""

    file: str
    run_opt: str  # the trace's name for the run's optimizer (the first one the script creates)
    other_opts: tuple[str, ...] = ()
    logged: tuple[str, ...] = ()  # train scalars it passes to dltui.log
    val_logged: tuple[str, ...] = ()  # ... with phase="val"
    on_eval: bool = False  # registers dltui.on_eval
    lr_run_args: tuple[str, ...] = ()  # extra script flags for the steered LR run
    # Script flags for the acceptance run and its plain twin: a smaller epoch (20-50 steps in
    # all: the steering needs a handful, and each step is CPU every other test here waits on).
    accept_args: tuple[str, ...] = ()
    # Divides each micro-batch's loss by the number of backward calls per step (nanoGPT's
    # `loss = loss / gradient_accumulation_steps`): dltui undoes that division, so the recorded
    # loss is the script's own number (README, "loss").
    divides_by_accumulation: bool = False

    def expected_loss(self, rec: dict) -> float:
        """The loss dltui should record for one step: the mean of the (unscaled) tensors backward()
        was called on since the last step, with the accumulation division undone."""
        losses = rec["losses"]
        n = len(losses) if self.divides_by_accumulation else 1
        return mean([x * n for x in losses])

    @property
    def path(self) -> Path:
        return SCRIPTS / self.file


SHAPES = {
    "tutorial": Shape("mnist_tutorial.py", "optimizer", accept_args=("--train-size", "640")),
    # In the LR run the GradScaler is on (float32 grads, a huge initial scale): iterations 8 and 59
    # overflow and are skipped, which must not count as steps.
    "nanogpt": Shape(
        "nanogpt_train.py",
        "optimizer",
        logged=("grad_norm",),
        divides_by_accumulation=True,
        lr_run_args=("--grad-scaler", "--init-scale", "3.4e38"),
        accept_args=("--steps-per-epoch", "12"),
    ),
    "gan": Shape(
        "dcgan_toy.py",
        "optimizerD",
        other_opts=("optimizerG",),
        logged=("d_x", "d_g_z"),
        on_eval=True,
        accept_args=("--dataset-size", "1024"),
    ),
    "lstm": Shape(
        "word_lm.py",
        "optimizer",
        logged=("ppl",),
        val_logged=("val_ppl",),
        accept_args=("--corpus-size", "8000"),
    ),
}
NAMES = list(SHAPES)


# -- reading what a script and dltui wrote -------------------------------------------------------


@dataclass
class Trace:
    """A script's --trace file: its models, its iterations, and its dltui.log(phase="val") calls."""

    models: dict[str, dict[str, list[str]]]
    iters: list[dict]
    vals: list[tuple[int, dict]] = field(default_factory=list)  # (run steps so far, scalars)
    run_opt: str = "optimizer"

    def stepped(self, opt: str | None = None) -> list[dict]:
        """The iterations in which `opt` (default: the run's optimizer) really stepped: dltui's
        step k (1-based) is the k-th of these."""
        opt = opt or self.run_opt
        return [r for r in self.iters if r["opt"].get(opt, {}).get("stepped")]

    def skipped(self) -> list[dict]:
        return [r for r in self.iters if not r["opt"].get(self.run_opt, {}).get("stepped")]


def read_trace(path: Path, run_opt: str) -> Trace:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert lines and "models" in lines[0], f"{path} has no header line (the script did not start?)"
    t = Trace(lines[0]["models"], [], run_opt=run_opt)
    for rec in lines[1:]:
        if "val_log" in rec:
            t.vals.append((len(t.stepped()), rec["val_log"]))
        else:
            t.iters.append(rec)
    return t


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def close(a: float | None, b: float, rel: float = 1e-5) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def script_lines(stdout: str) -> list[str]:
    """stdout without dltui's own status lines."""
    return [ln for ln in stdout.splitlines() if not ln.startswith(("[dltui]", "dltui:"))]


def frames(text: str) -> list[tuple[str, str]]:
    """(file, function) of every traceback frame in text."""
    return re.findall(r'^\s*File "([^"]+)", line \d+, in (\S+)', text, flags=re.M)


def find_key(obj: Any, key: str) -> list[Any]:
    """Every value stored under `key` anywhere in a JSON document."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                found.append(v)
            found += find_key(v, key)
    elif isinstance(obj, list):
        for v in obj:
            found += find_key(v, key)
    return found


def stored(run_dir: Path, fn):
    with RunReader(run_dir) as r:
        return fn(r)


def series_by_step(
    run_dir: Path, name: str = "loss", phase: str = "train"
) -> dict[int, float | None]:
    """{step: value} of one stored scalar series."""

    def read(r: RunReader) -> dict[int, float | None]:
        return {s: v for s, _e, p, _w, n, v in r.scalar_rows() if n == name and p == phase}

    return stored(run_dir, read)


def current_step(run_dir: Path) -> int:
    """How far a live run is, from its store: progress, else the newest loss point."""
    try:
        with RunReader(run_dir) as r:
            progress = (r.meta().get("progress") or {}).get("step") or 0
            last = r.last("loss")
    except Exception:  # the store is still being created
        return 0
    return max(progress, last[0] if last else 0)


def state_dicts_in(obj: Any) -> tuple[list[dict], list[dict]]:
    """(model state_dicts, optimizer state_dicts) anywhere inside a loaded checkpoint."""
    import torch

    models: list[dict] = []
    optims: list[dict] = []

    def walk(o: Any, depth: int) -> None:
        if depth > 8:
            return
        if isinstance(o, dict):
            if "state" in o and "param_groups" in o:
                optims.append(o)
                return
            if (
                o
                and all(isinstance(k, str) for k in o)
                and all(isinstance(v, torch.Tensor) for v in o.values())
            ):
                models.append(o)
                return
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)

    walk(obj, 0)
    return models, optims


# -- the CLI ---------------------------------------------------------------------------------------


@dataclass
class Reply:
    """What one `dltui ...` call did: exit status, its output, and stdout parsed as JSON if it was."""

    rc: int | None
    out: str
    err: str
    data: Any = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and (
            not isinstance(self.data, dict) or self.data.get("ok", True) is not False
        )

    def __str__(self) -> str:
        return f"exit {self.rc}\nstdout: {self.out[-2000:]}\nstderr: {self.err[-2000:]}"


def cli(*args: Any, cwd: Path, timeout: float = CTL_TIMEOUT_S) -> Reply:
    try:
        res = run_cli(*args, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return Reply(
            None,
            str(e.stdout or ""),
            f"timed out after {timeout} s: dltui {' '.join(map(str, args))}",
        )
    try:
        data = json.loads(res.stdout)
    except ValueError:
        data = None
    return Reply(res.returncode, res.stdout, res.stderr, data)


@dataclass
class Run:
    """One `dltui train` (or plain `python`) process of this module, with where it writes."""

    name: str
    root: Path  # its working directory
    proc: Started
    runs: Path  # its --runs-dir
    trace: Path | None = None
    steering: Future | None = None

    def wait(self) -> subprocess.CompletedProcess:
        try:
            self.proc.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            state = self.status().out if run_dirs(self.runs) else "no run directory"
            self.proc.proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack
            time.sleep(3)
            self.proc.kill()
            err = self.proc.err_path.read_text()[-6000:]
            pytest.fail(
                f"{self.name} did not end within {WAIT_S} s; it was: {state}\nstderr: {err}"
            )
        return self.proc.wait()

    def run_dir(self) -> Path:
        dirs = run_dirs(self.runs)
        assert len(dirs) == 1, f"expected one run in {self.runs}, found {[d.name for d in dirs]}"
        return dirs[0]

    def ctl(self, *words: Any) -> Reply:
        return cli(
            "--runs-dir", self.runs, "ctl", self.run_dir().name, *words, "--json", cwd=self.root
        )

    def status(self) -> Reply:
        return cli("--runs-dir", self.runs, "status", self.run_dir().name, "--json", cwd=self.root)

    def runs_json(self) -> Reply:
        return cli("--runs-dir", self.runs, "runs", "--json", cwd=self.root)


class Background(Started):
    """A command in the background, output to files. Python's faulthandler is on, so a process that
    does not end in time is sent SIGABRT and its threads' stacks land in its stderr file."""

    def __init__(self, argv: list[str], cwd: Path, log_dir: Path, tag: str) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = log_dir / f"{tag}.out", log_dir / f"{tag}.err"
        env = {**CHILD_ENV, "PYTHONFAULTHANDLER": "1"}
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)
        self._done = None


def start_cli(*args: Any, cwd: Path, log_dir: Path, tag: str = "dltui") -> Background:
    """`dltui ARGS...` in the background (the headless engine execs in this same process)."""
    return Background(cli_argv(*args), cwd, log_dir, tag)


def start_python(script: Path, args: tuple[Any, ...], cwd: Path) -> Background:
    """`python SCRIPT ARGS...` with the dltui runs' environment (OMP_NUM_THREADS=1)."""
    return Background([sys.executable, str(script), *map(str, args)], cwd, cwd, "python")


def wait_until(pred, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(every)


def kill_engine(run: Run) -> None:
    """Kill a run's engine by the pid its store names (a detached engine is not our child), after
    checking that pid is still that engine: its command line names the run's directory."""
    run.proc.kill()
    for d in run_dirs(run.runs):
        try:
            pid = stored(d, lambda r: r.meta().get("pid"))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except Exception:
            continue
        if (
            isinstance(pid, int)
            and pid != os.getpid()
            and d.name in cmdline
            and "dltui.engine" in cmdline
        ):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- steering live runs (in threads, while everything else runs) ------------------------------------


def wait_for_control(run: Run) -> None:
    """Until the run's engine answers on its socket (it may not have started the script yet)."""

    def up() -> bool:
        if run.proc.proc.poll() is not None:
            raise RuntimeError(f"{run.name} ended before its control socket answered")
        dirs = run_dirs(run.runs)
        return bool(dirs) and (dirs[0] / wire.CONTROL_SOCKET).exists() and run.ctl("status").ok

    wait_until(up, WAIT_S, f"{run.name}'s control socket", every=0.2)


def live_status(run: Run) -> dict:
    return run.status().data or {}


def steer_acceptance(run: Run, shape: Shape) -> dict[str, Any]:
    """pause as soon as the engine answers, check it holds, step 3, (eval), checkpoint, resume.
    None of these may change what the script computes."""
    out: dict[str, Any] = {}
    try:
        wait_for_control(run)
        out["pause"] = pause = run.ctl("pause")
        if not pause.ok:
            # The reply comes once the pause lands at a step boundary. If the script took longer
            # than the client's timeout to reach its first step (imports, data), the pause is
            # still queued: wait for it to land.
            wait_until(
                lambda: (
                    live_status(run).get("status") == "paused" or run.proc.proc.poll() is not None
                ),
                60,
                "the pause to land",
            )
        out["status_paused"] = run.status()
        if out["status_paused"].data.get("status") != "paused":
            return out
        time.sleep(0.6)
        out["status_later"] = run.status()
        out["runs_paused"] = run.runs_json()
        out["step3"] = run.ctl("step", 3)
        out["status_after_step"] = run.status()
        if shape.on_eval:
            out["eval"] = run.ctl("mode", "eval")
            if out["eval"].ok:
                step = (out["status_after_step"].data or {}).get("step")
                try:
                    wait_until(
                        lambda: bool(series_by_step(run.run_dir(), "d_real", "val")),
                        30,
                        "the eval's val scalars",
                    )
                    wait_until(
                        lambda: live_status(run).get("status") != "eval", 30, "the end of eval mode"
                    )
                except TimeoutError as e:
                    out["eval_wait"] = str(e)
                out["status_after_eval"] = run.status()
                out["eval_at_step"] = step
        if shape.file == "nanogpt_train.py":  # no on_eval registered
            out["eval_refused"] = run.ctl("mode", "eval")
            out["status_after_refused_eval"] = run.status()
        out["checkpoint"] = ck = run.ctl("checkpoint")
        if ck.ok:
            folder = run.run_dir() / "checkpoints"
            files = (
                sorted(folder.glob("*"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
            )
            if files:  # keep a copy: the run overwrites its checkpoints later
                out["checkpoint_copy"] = run.root / f"paused-{files[-1].name}"
                shutil.copy(files[-1], out["checkpoint_copy"])
    except Exception as e:  # recorded, and asserted by the tests that need the missing part
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        if run.proc.proc.poll() is None and run_dirs(run.runs):
            out["resume"] = run.ctl("resume")
            for _ in range(3):  # a failed resume is asserted below, but must not leave it paused
                if ((run.ctl("status").data or {}).get("state") or {}).get("paused") is not True:
                    break
                time.sleep(1)
                out["resume_retry"] = run.ctl("resume")
    return out


def steer_lr_run(run: Run, shape: Shape) -> dict[str, Any]:
    """Detached, endless: wait for step 5, pause, lr '*0.5', step 3, resume for 6 steps, stop."""
    out: dict[str, Any] = {}
    try:
        out["detach"] = started = run.wait()
        if started.returncode != 0:
            return out
        run_dir = run.run_dir()
        wait_until(lambda: current_step(run_dir) >= 5, WAIT_S, f"{run.name} to reach step 5")
        out["pause"] = pause = run.ctl("pause")
        if not pause.ok:
            return out
        out["paused_at"] = s = pause.data["state"]["step"]
        out["lr"] = run.ctl("lr", "*0.5")
        out["step3"] = run.ctl("step", 3)
        out["resume"] = run.ctl("resume")
        wait_until(
            lambda: current_step(run_dir) >= s + 3 + 6, 60, f"{run.name} to run on after resume"
        )
        out["stop_issued"] = time.time()
        out["stop"] = run.ctl("stop")
        pid = stored(run_dir, lambda r: r.meta().get("pid"))
        out["pid"] = pid
        try:
            wait_until(
                lambda: not (isinstance(pid, int) and pid_alive(pid)), 60, "the engine to exit"
            )
            out["exited"] = True
        except TimeoutError:
            out["exited"] = False
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        if not out.get("exited"):
            kill_engine(run)  # whatever happened, no endless run outlives the test
    return out


# -- everything, started at once -------------------------------------------------------------------


@dataclass
class World:
    root: Path
    accept: dict[str, Run] = field(default_factory=dict)
    plain: dict[str, Run] = field(default_factory=dict)
    lr_runs: dict[str, Run] = field(default_factory=dict)
    misc: dict[str, Run] = field(default_factory=dict)
    pool: ThreadPoolExecutor | None = None

    def all_runs(self) -> list[Run]:
        return [
            *self.accept.values(),
            *self.plain.values(),
            *self.lr_runs.values(),
            *self.misc.values(),
        ]


def _train(world: World, name: str, *args: Any, cwd: Path | None = None) -> Run:
    """`dltui train --headless --runs-dir <own> ARGS...` in its own folder."""
    folder = world.root / name
    folder.mkdir(parents=True, exist_ok=True)
    runs = folder / "runs"
    proc = start_cli(
        "train", "--runs-dir", runs, *args, cwd=cwd or folder, log_dir=folder, tag="dltui"
    )
    return Run(name, cwd or folder, proc, runs)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    w = World(tmp_path_factory.mktemp("script_mode"))
    w.pool = ThreadPoolExecutor(max_workers=8)
    root = w.root
    for name, shape in SHAPES.items():
        # (1) the acceptance run, (2) the same script under plain python, (3) the steered LR run.
        run = _train(
            w,
            f"accept-{name}",
            "--headless",
            shape.path,
            *ACCEPT_ARGS,
            *shape.accept_args,
            "--trace",
            root / f"accept-{name}" / "trace.jsonl",
        )
        run.trace = root / f"accept-{name}" / "trace.jsonl"
        w.accept[name] = run
        folder = root / f"plain-{name}"
        args = (*ACCEPT_ARGS, *shape.accept_args, "--trace", folder / "trace.jsonl")
        plain = start_python(shape.path, args, folder)
        w.plain[name] = Run(f"plain-{name}", folder, plain, folder / "runs", folder / "trace.jsonl")
        # `--` ends dltui's options; dltui's options before it still apply (--hist-every).
        lr = _train(
            w,
            f"lr-{name}",
            "--detach",
            "--stats-every",
            5,
            "--hist-every",
            5,
            "--",
            shape.path,
            *ENDLESS_ARGS,
            *shape.lr_run_args,
            "--trace",
            "trace.jsonl",
        )
        lr.trace = lr.root / "trace.jsonl"  # relative: written in the caller's working directory
        w.lr_runs[name] = lr
    # argv / __name__ / sys.path[0] / cwd, with dltui's own flag names among the script's arguments
    proj, caller = root / "proj", root / "caller"
    proj.mkdir()
    caller.mkdir()
    shutil.copy(SCRIPTS / "argv_probe.py", proj / "probe.py")
    w.misc["probe"] = Run(
        "probe",
        caller,
        start_cli(
            "train",
            "--headless",
            "--runs-dir",
            root / "probe-runs",
            "../proj/probe.py",
            *PROBE_ARGS,
            cwd=caller,
            log_dir=root / "probe",
            tag="dltui",
        ),
        root / "probe-runs",
    )
    w.misc["bad-flag"] = _train(
        w, "bad-flag", "--headless", SCRIPTS / "mnist_tutorial.py", "--epochs", "2", "--bogus"
    )
    w.misc["crash"] = _train(w, "crash", "--headless", SCRIPTS / "crash_in_eval.py", *ACCEPT_ARGS)
    w.misc["never"] = _train(w, "never", "--headless", SCRIPTS / "check_init.py", "--lr", "0.01")
    w.misc["hybrid-auto"] = _train(w, "hybrid-auto", "--headless", SCRIPTS / "hybrid_recipe.py")
    w.misc["hybrid-script"] = _train(
        w, "hybrid-script", "--headless", "--script", SCRIPTS / "hybrid_recipe.py"
    )
    w.misc["forced-recipe"] = _train(
        w, "forced-recipe", "--headless", "--recipe", SCRIPTS / "mnist_tutorial.py", *ACCEPT_ARGS
    )
    for name, shape in SHAPES.items():
        w.accept[name].steering = w.pool.submit(steer_acceptance, w.accept[name], shape)
        w.lr_runs[name].steering = w.pool.submit(steer_lr_run, w.lr_runs[name], shape)
    yield w
    for run in w.all_runs():
        kill_engine(run)
    w.pool.shutdown(wait=False, cancel_futures=True)


PROBE_ARGS = (
    "out.json",
    "a",
    "--epochs",
    "2",
    "--seed",
    "5",
    "--max-steps",
    "1",
    "--headless",
    "--runs-dir",
    "nowhere",
    "--recipe",
    "--help",
    "--",
    "--lr",
    "x",
    "--exit-status",
    "3",
)


def finished(run: Run) -> subprocess.CompletedProcess:
    return run.wait()


def steering_of(run: Run) -> dict[str, Any]:
    return run.steering.result(timeout=WAIT_S)


def runs_entry(run: Run) -> dict:
    listed = run.runs_json()
    assert listed.rc == 0 and isinstance(listed.data, list), f"`dltui runs --json` failed: {listed}"
    assert len(listed.data) == 1, (
        f"expected exactly one run in {run.runs}, `runs --json` gave {listed.data}"
    )
    return listed.data[0]


def meta_of(run: Run) -> dict:
    return stored(run.run_dir(), lambda r: r.meta())


# ==================================================================================================
# Acceptance runs: `dltui train --headless SCRIPT --epochs 2 --lr 0.01`, steered without changing
# anything, each compared with `python SCRIPT --epochs 2 --lr 0.01`.


@pytest.mark.parametrize("name", NAMES)
def test_exit_status_is_the_scripts_and_the_run_is_finished(world, name):
    res, plain = finished(world.accept[name]), finished(world.plain[name])
    assert plain.returncode == 0, (
        f"the script itself failed under plain python:\n{plain.stderr[-3000:]}"
    )
    assert res.returncode == 0, (
        f"expected exit status 0 (the script's) from dltui, got {res.returncode}:\n{res.stderr[-3000:]}"
    )
    assert "Traceback" not in res.stderr, f"unexpected traceback:\n{res.stderr[-3000:]}"
    n = len(read_trace(world.accept[name].trace, SHAPES[name].run_opt).stepped())
    entry = runs_entry(world.accept[name])
    assert entry["status"] == "finished", (
        f"`dltui runs --json` should say finished, says {entry['status']!r}"
    )
    assert entry["step"] == n, (
        f"`dltui runs --json` should count {n} steps of the run's optimizer, says {entry['step']}"
    )


@pytest.mark.parametrize("name", NAMES)
def test_printed_output_is_identical_to_plain_python(world, name):
    """Same seed, same results bit for bit on CPU — even though the run was paused, stepped,
    checkpointed (and for the GAN evaluated) on the way — and the prints reach stdout."""
    res, plain = finished(world.accept[name]), finished(world.plain[name])
    want = plain.stdout.splitlines()
    got = script_lines(res.stdout)
    if SHAPES[name].on_eval:  # the on_eval function, called during the steering, prints a line
        got = [ln for ln in got if not ln.startswith("eval: ")]
    assert want and want[-1].startswith("final loss "), (
        f"plain run printed no final loss:\n{plain.stdout[-1000:]}"
    )
    final = [ln for ln in got if ln.startswith("final loss ")]
    assert final == [want[-1]], (
        f"expected the script's own final line {want[-1]!r} on dltui's stdout, found {final}"
    )
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        assert a == b, f"stdout line {i} differs: dltui {a!r}, plain python {b!r}"
    assert len(got) == len(want), (
        f"dltui's stdout has {len(got)} script lines, plain python {len(want)}"
    )
    t_dltui = read_trace(world.accept[name].trace, SHAPES[name].run_opt)
    t_plain = read_trace(world.plain[name].trace, SHAPES[name].run_opt)
    assert t_dltui.iters == t_plain.iters, (
        "per-iteration losses/LRs differ from plain python (dltui changed the computation)"
    )


@pytest.mark.parametrize("name", NAMES)
def test_export_csv_has_one_train_row_per_step_with_loss_lr_and_logged_scalars(world, name):
    run, shape = world.accept[name], SHAPES[name]
    finished(run)
    trace = read_trace(run.trace, shape.run_opt)
    steps = trace.stepped()
    out = run.root / "export.csv"
    res = cli("--runs-dir", run.runs, "export", run.run_dir().name, "--csv", out, cwd=run.root)
    assert res.rc == 0, f"export failed: {res}"
    with open(out, newline="") as f:
        header, *body = list(csv.reader(f))
    assert header[:4] == ["step", "epoch", "phase", "wall"], (
        f"wide CSV header should start step,epoch,phase,wall; got {header[:6]}"
    )
    names = header[4:]
    assert len(names) == len(set(names)), f"duplicate columns in {names}"
    rows = [dict(zip(header, r, strict=True)) for r in body]
    keys = [(r["step"], r["phase"]) for r in rows]
    assert len(keys) == len(set(keys)), "more than one row for some (step, phase)"
    train = [r for r in rows if r["phase"] == "train"]
    assert [int(r["step"]) for r in train] == list(range(1, len(steps) + 1)), (
        f"expected train rows for steps 1..{len(steps)} (one per optimizer step of the run's optimizer), "
        f"got steps {[int(r['step']) for r in train][:10]}... ({len(train)} rows)"
    )
    groups = len(steps[0]["opt"][shape.run_opt]["lr"])
    for col in ["loss", *(wire.lr_name(g) for g in range(groups)), *shape.logged]:
        assert col in names, f"no column {col!r} in the CSV (columns: {names})"
    for k, (row, rec) in enumerate(zip(train, steps, strict=True), start=1):
        want_loss = shape.expected_loss(rec)
        got = float(row["loss"]) if row["loss"] else None
        undone = (
            " (x accumulation steps: the division undone)" if shape.divides_by_accumulation else ""
        )
        assert close(got, want_loss), (
            f"step {k}: loss should be the mean of the tensors backward() was called on since the last "
            f"step{undone}, {rec['losses']} -> {want_loss}; CSV has {row['loss']!r}"
        )
        for g, lr in enumerate(rec["opt"][shape.run_opt]["lr"]):
            cell = row[wire.lr_name(g)]
            assert cell and close(float(cell), lr, 1e-9), (
                f"step {k}: {wire.lr_name(g)} should be {lr}, CSV has {cell!r}"
            )
        for col in shape.logged:
            want = rec["log"].get(col)
            if want is None:
                assert row[col] == "", (
                    f"step {k}: the script logged no {col} at this step, CSV has {row[col]!r}"
                )
            else:
                assert row[col] and close(float(row[col]), want, 1e-6), (
                    f"step {k}: {col} should be {want} (dltui.log after this step), CSV has {row[col]!r}"
                )
    if shape.val_logged:
        val = {int(r["step"]): r for r in rows if r["phase"] == "val"}
        for step, scalars in trace.vals:
            assert step in val, (
                f"no val row at step {step}, where the script called dltui.log(phase='val', ...); val rows at {sorted(val)}"
            )
            for col, want in scalars.items():
                assert close(float(val[step][col] or "nan"), want, 1e-6), (
                    f"val {col} at step {step} should be {want}, CSV has {val[step][col]!r}"
                )


@pytest.mark.parametrize("name", NAMES)
def test_layer_stats_for_every_model_console_events_and_system(world, name):
    run, shape = world.accept[name], SHAPES[name]
    finished(run)
    trace = read_trace(run.trace, shape.run_opt)
    run_dir = run.run_dir()
    with RunReader(run_dir) as r:
        with_stats = [
            n
            for (n,) in r.db.execute(
                "SELECT DISTINCT p.name FROM layer_stats l JOIN params p ON p.id = l.param"
            )
        ]
        console = [line for *_, line in r.console(limit=10**6)]
        n_system = r.db.execute("SELECT count(*) FROM system").fetchone()[0]
        meta = r.meta()
    total = 0
    for model, info in trace.models.items():
        for p in info["params"]:
            total += 1
            assert any(s == p or re.search(r"[./:]" + re.escape(p) + "$", s) for s in with_stats), (
                f"no layer stats for {model}'s parameter {p!r}; parameters with stats: {with_stats}"
            )
    assert len(with_stats) >= total, (
        f"expected layer stats for all {total} parameters of {list(trace.models)}, got {len(with_stats)}"
    )
    final = finished(world.plain[name]).stdout.splitlines()[-1]
    assert final in console, f"the script's line {final!r} is not in the run's console capture"
    assert meta.get("driver") == wire.DRIVER_SCRIPT, (
        f"meta['driver'] should be {wire.DRIVER_SCRIPT!r}, is {meta.get('driver')!r}"
    )
    steering = meta.get("steering") or {}
    assert steering.get("eval") is shape.on_eval and steering.get("pause") is True, (
        f"meta['steering'] should offer eval only to a script with dltui.on_eval ({shape.on_eval}): {steering}"
    )
    status = events_of(run_dir, wire.EV_STATUS)
    assert status and "finished" in status[-1]["message"], (
        f"expected a final 'finished' status event, got {status[-1:]}"
    )
    assert n_system > 0, "no system samples were recorded"


@pytest.mark.parametrize("name", [n for n, s in SHAPES.items() if s.logged])
def test_status_json_shows_the_logged_scalars(world, name):
    run, shape = world.accept[name], SHAPES[name]
    finished(run)
    trace = read_trace(run.trace, shape.run_opt)
    res = run.status()
    assert res.rc == 0 and isinstance(res.data, dict), f"`dltui status RUN --json` failed: {res}"
    for col in shape.logged:
        last = [r["log"][col] for r in trace.iters if col in r.get("log", {})][-1]
        values = [v for v in find_key(res.data, col) if isinstance(v, (int, float))]
        assert values, (
            f"`status --json` should show the dltui.log scalar {col!r}; got keys {list(res.data)}"
        )
        assert any(close(v, last, 1e-6) for v in values), (
            f"`status --json` shows {col}={values}, expected the last logged {last}"
        )


@pytest.mark.parametrize("name", NAMES)
def test_pause_holds_step_3_is_exact_and_checkpoint_has_the_state_dicts(world, name):
    run, shape = world.accept[name], SHAPES[name]
    st = steering_of(run)
    assert "error" not in st, f"steering stopped early: {st['error']}"
    assert st["pause"].ok or "did not answer" in st["pause"].err, (
        f"`ctl pause` failed: {st['pause']}"
    )
    paused = st["status_paused"].data
    assert paused and paused["status"] == "paused", (
        f"`status --json` after pause should say paused: {st['status_paused']}"
    )
    s = paused["step"]
    assert st["status_later"].data["step"] == s, (
        f"paused at step {s}, but 0.6 s later at {st['status_later'].data['step']}"
    )
    entry = [e for e in st["runs_paused"].data or [] if e["id"] == run.run_dir().name]
    assert entry and entry[0]["status"] == "paused", (
        f"`runs --json` should say paused: {st['runs_paused']}"
    )
    assert st["step3"].ok, f"`ctl step 3` failed: {st['step3']}"
    after = st["status_after_step"].data
    assert after["step"] == s + 3 and after["status"] == "paused", (
        f"`ctl step 3` from step {s} should leave the run paused at step {s + 3}; status says {after['status']} at {after['step']}"
    )
    assert st["checkpoint"].ok, f"`ctl checkpoint` failed: {st['checkpoint']}"
    assert "checkpoint_copy" in st, (
        f"`ctl checkpoint` wrote nothing under {run.run_dir() / 'checkpoints'}"
    )
    import torch

    ck = torch.load(st["checkpoint_copy"], map_location="cpu", weights_only=False)
    models, optims = state_dicts_in(ck)
    trace = read_trace(run.trace, shape.run_opt)
    for model, info in trace.models.items():
        assert any(set(m) == set(info["state"]) for m in models), (
            f"the checkpoint has no state_dict of {model} (keys {info['state'][:4]}...); it holds {len(models)} "
            f"tensor dicts with keys {[list(m)[:3] for m in models]}"
        )
    n_opts = 1 + len(shape.other_opts)
    assert len(optims) >= n_opts, (
        f"expected {n_opts} optimizer state_dicts in the checkpoint, found {len(optims)}"
    )
    assert all(o["state"] for o in optims), (
        "an optimizer state_dict in the checkpoint is empty after 3+ steps"
    )
    groups = len(trace.stepped()[0]["opt"][shape.run_opt]["lr"])
    assert any(len(o["param_groups"]) == groups for o in optims), (
        f"no optimizer state_dict with {groups} param groups"
    )
    assert st.get("resume") and st["resume"].ok, f"`ctl resume` failed: {st.get('resume')}"


def test_gan_other_optimizer_is_recorded(world):
    run, shape = world.accept["gan"], SHAPES["gan"]
    finished(run)
    trace = read_trace(run.trace, shape.run_opt)
    g_steps = trace.stepped("optimizerG")
    meta = meta_of(run)
    opts = meta.get("optimizers") or []
    assert len(opts) == 2, (
        f"meta['optimizers'] should list both optimizers, D's (created first) first: {opts}"
    )
    with RunReader(run.run_dir()) as r:
        names = {n for n, p in r.series_names() if p == "train"}
    others = sorted(n for n in names if re.fullmatch(r"lr/[^/\d][^/]*/\d+", n))
    assert len(others) == 1, (
        f"expected one 'lr/<name>/0' series for the GAN's second optimizer, got {others} among {sorted(names)}"
    )
    values = [v for v in series_by_step(run.run_dir(), others[0]).values()]
    assert len(values) == len(g_steps), (
        f"{others[0]}: expected {len(g_steps)} points (one per G step), got {len(values)}"
    )
    assert all(close(v, 0.01, 1e-9) for v in values), (
        f"{others[0]} should be 0.01 throughout: {set(values)}"
    )
    # Its loss too, under some name of its own (not `loss`, which is D's): errG at each step.
    g_name = others[0].split("/")[1]
    g_loss = [n for n in names if g_name in n and not n.startswith("lr/")]
    assert len(g_loss) == 1, (
        f"expected one loss series naming {g_name!r} for G, got {g_loss} among {sorted(names)}"
    )
    recorded = series_by_step(run.run_dir(), g_loss[0])
    assert sorted(recorded) == list(range(1, len(g_steps) + 1)), (
        f"{g_loss[0]}: expected one point per step 1..{len(g_steps)}, got steps {sorted(recorded)[:8]}..."
    )
    for k, rec in enumerate(g_steps, start=1):
        assert close(recorded[k], mean(rec["g_losses"])), (
            f"{g_loss[0]} at step {k} should be errG {rec['g_losses']}, is {recorded[k]}"
        )


def test_gan_eval_calls_on_eval_under_eval_and_no_grad_and_returns_to_training(world):
    run = world.accept["gan"]
    st = steering_of(run)
    assert "eval" in st, (
        f"steering did not get to `ctl mode eval`: {st.get('error') or st.get('pause')}"
    )
    assert st["eval"].ok, f"`ctl mode eval` on a script with dltui.on_eval failed: {st['eval']}"
    assert "eval_wait" not in st, st.get("eval_wait")
    after = st["status_after_eval"].data
    assert after["status"] != "eval", (
        f"after on_eval ran, the run should be back to training (paused), status says {after['status']}"
    )
    finished(run)
    s = st["eval_at_step"]
    for col in ("d_real", "d_fake"):
        points = series_by_step(run.run_dir(), col, "val")
        assert list(points) == [s], (
            f"on_eval's {col!r} should be one val point at the paused step {s}, got {points}"
        )
    console = stored(run.run_dir(), lambda r: [line for *_, line in r.console(limit=10**6)])
    evals = [line for line in console if line.startswith("eval: ")]
    assert len(evals) == 1, f"expected one line printed by on_eval's function, got {evals}"
    assert "netD.training=False netG.training=False grad_enabled=False" in evals[0], (
        f"on_eval's function should run with both models in eval mode and grad off: {evals[0]}"
    )
    trace = read_trace(run.trace, "optimizerD")
    assert all(r["training"] for r in trace.iters), "a model stayed in eval mode after on_eval"


def test_eval_without_on_eval_is_a_clear_error(world):
    run = world.accept["nanogpt"]
    st = steering_of(run)
    assert "eval_refused" in st, (
        f"steering did not get to `ctl mode eval`: {st.get('error') or st.get('pause')}"
    )
    r = st["eval_refused"]
    assert not r.ok, f"`ctl mode eval` on a script without dltui.on_eval should fail: {r}"
    text = (r.err + json.dumps(r.data)).lower()
    assert "on_eval" in text, f"the error should tell the user to register dltui.on_eval: {r}"
    after = st["status_after_refused_eval"].data
    assert after["status"] == "paused" and after["step"] == st["status_after_step"].data["step"], (
        f"a refused eval must change nothing: {after}"
    )


# ==================================================================================================
# LR runs: detached, endless, paused mid-run, LR '*0.5', step 3, resumed, stopped.


@pytest.mark.parametrize("name", NAMES)
def test_lr_factor_holds_on_what_the_script_sets(world, name):
    run, shape = world.lr_runs[name], SHAPES[name]
    st = steering_of(run)
    assert "error" not in st, f"steering stopped early: {st['error']} (detach: {st.get('detach')})"
    assert st["pause"].ok, f"`ctl pause` failed: {st['pause']}"
    s = st["paused_at"]
    assert st["lr"].ok, f"`ctl lr '*0.5'` failed: {st['lr']}"
    assert st["step3"].ok and st["step3"].data["state"]["step"] == s + 3, (
        f"`ctl step 3` from {s} should end at step {s + 3}: {st['step3']}"
    )
    trace = read_trace(run.trace, shape.run_opt)
    steps = trace.stepped()
    recorded = {
        g: series_by_step(run.run_dir(), wire.lr_name(g)) for g in range(len(steps[0]["lr_set"]))
    }
    for k, rec in enumerate(steps, start=1):
        factor = 1.0 if k <= s else 0.5
        for g, meant in enumerate(rec["lr_set"]):
            used = rec["opt"][shape.run_opt]["lr"][g]
            assert close(used, factor * meant, 1e-9), (
                f"step {k} (paused at {s}, then lr *0.5): the optimizer should use {factor} x the script's "
                f"LR {meant} = {factor * meant}, it used {used}"
            )
            got = recorded[g].get(k)
            assert close(got, factor * meant, 1e-9), (
                f"step {k}: recorded {wire.lr_name(g)} should be {factor * meant}, is {got}"
            )


@pytest.mark.parametrize("name", NAMES)
def test_stop_ends_the_script_at_a_boundary_with_a_final_checkpoint(world, name):
    run, shape = world.lr_runs[name], SHAPES[name]
    st = steering_of(run)
    assert "stop" in st, f"steering did not get to `ctl stop`: {st.get('error') or st.get('pause')}"
    assert st["stop"].ok, f"`ctl stop` failed: {st['stop']}"
    assert st["exited"], f"the engine (pid {st['pid']}) did not exit after stop"
    log = (run.run_dir() / "engine.log").read_text(errors="replace")
    assert "Traceback" not in log, (
        f"stop should end the script cleanly, engine.log has:\n{log[-3000:]}"
    )
    entry = runs_entry(run)
    assert entry["status"] == "stopped", (
        f"`runs --json` should say stopped, says {entry['status']!r}"
    )
    trace = read_trace(run.trace, shape.run_opt)
    n = len(trace.stepped())
    last = stored(run.run_dir(), lambda r: r.last("loss"))
    assert last and last[0] == n, (
        f"the script took {n} steps; the store's last loss is at {last and last[0]}"
    )
    assert entry["step"] == n, f"`runs --json` should count {n} steps, says {entry['step']}"
    folder = run.run_dir() / "checkpoints"
    fresh = (
        [p for p in folder.glob("*") if p.stat().st_mtime >= st["stop_issued"] - 1]
        if folder.is_dir()
        else []
    )
    assert fresh, f"no checkpoint written under {folder} when the run was stopped"
    import torch

    models, optims = state_dicts_in(
        torch.load(
            max(fresh, key=lambda p: p.stat().st_mtime), map_location="cpu", weights_only=False
        )
    )
    assert len(models) >= len(trace.models) and len(optims) >= 1 + len(shape.other_opts), (
        f"the final checkpoint should hold {len(trace.models)} model and {1 + len(shape.other_opts)} optimizer "
        f"state_dicts, found {len(models)} and {len(optims)}"
    )


@pytest.mark.parametrize("name", NAMES)
def test_detached_after_double_dash_runs_in_the_callers_directory_with_histograms(world, name):
    run = world.lr_runs[name]
    st = steering_of(run)
    assert run.trace.exists(), (
        f"`dltui train --detach ... -- FILE ARGS`: the script's --trace trace.jsonl (a relative path) "
        f"should be written in the caller's working "
        f"directory {run.root}; detach said: {st.get('detach') and st['detach'].stdout}"
    )
    with RunReader(run.run_dir()) as r:
        hists = r.db.execute("SELECT count(DISTINCT param) FROM histograms").fetchone()[0]
        n_system = r.db.execute("SELECT count(*) FROM system").fetchone()[0]
    assert hists > 0, "`--hist-every 5` (a dltui option before FILE) recorded no histograms"
    assert n_system > 0, "no system samples"


def test_gradscaler_skipped_step_is_not_a_step_and_its_loss_is_not_mixed_in(world):
    run, shape = world.lr_runs["nanogpt"], SHAPES["nanogpt"]
    steering_of(run)
    trace = read_trace(run.trace, shape.run_opt)
    assert trace.skipped(), (
        "the GradScaler skipped no step (the test's setup is wrong: expected skips at iterations 8 and 59)"
    )
    losses = series_by_step(run.run_dir())
    steps = trace.stepped()
    assert sorted(losses) == list(range(1, len(steps) + 1)), (
        f"{len(trace.iters)} iterations, {len(trace.skipped())} skipped by the GradScaler: expected loss at steps "
        f"1..{len(steps)}, got {sorted(losses)[:12]}..."
    )
    for k, rec in enumerate(steps, start=1):
        # unscaled, and only this iteration's: the skipped iteration's losses are dropped
        want = shape.expected_loss(rec)
        assert close(losses[k], want), (
            f"step {k} (iteration {rec['it']}): loss should be {want} (unscaled mean of this step's micro-batches), is {losses[k]}"
        )


# ==================================================================================================
# How the script is started: argv, __name__, sys.path[0], cwd, `--`, exit status, errors.


def test_script_sees_its_argv_name_path_and_the_callers_cwd(world):
    run = world.misc["probe"]
    res = finished(run)
    out = run.root / "out.json"
    assert out.exists(), (
        f"the probe did not run (or not in the caller's directory {run.root}):\n{res.stdout[-1500:]}\n{res.stderr[-3000:]}"
    )
    seen = json.loads(out.read_text())
    want = ["../proj/probe.py", *PROBE_ARGS]
    assert seen["argv"] == want, (
        f"sys.argv should be [FILE, *FILE_ARGS] = {want}, was {seen['argv']}"
    )
    assert seen["name"] == "__main__", f"__name__ should be '__main__', was {seen['name']!r}"
    assert os.path.realpath(seen["path0"]) == os.path.realpath(world.root / "proj"), (
        f"sys.path[0] should be the script's directory, was {seen['path0']!r}"
    )
    assert os.path.realpath(seen["cwd"]) == os.path.realpath(run.root), (
        f"the script should run in the caller's cwd {run.root}, ran in {seen['cwd']}"
    )
    assert seen["main_is_this_module"], "sys.modules['__main__'] should be the script's own module"
    assert res.returncode == 3, (
        f"the script called sys.exit(3): dltui should exit 3, exited {res.returncode}\n{res.stderr[-2000:]}"
    )
    assert "probe done" in script_lines(res.stdout), (
        f"the script's print should reach stdout: {res.stdout[-1000:]}"
    )
    assert not (run.root / "nowhere").exists(), "the script's --runs-dir was taken as dltui's"
    assert len(run_dirs(run.runs)) == 1, f"expected the run under {run.runs}"


def test_a_bad_flag_is_the_scripts_argparse_error_and_exit_2(world):
    res = finished(world.misc["bad-flag"])
    assert res.returncode == 2, (
        f"argparse in the script exits 2 on a bad flag; dltui exited {res.returncode}\n{res.stderr[-2000:]}"
    )
    assert "usage: mnist_tutorial.py" in res.stderr, (
        f"expected the script's own usage message:\n{res.stderr[-2000:]}"
    )
    assert "error: unrecognized arguments: --bogus" in res.stderr, res.stderr[-2000:]
    assert "usage: dltui" not in res.stderr + res.stdout, (
        "dltui's own usage was shown for the script's flag"
    )
    assert "Traceback" not in res.stderr, res.stderr[-3000:]


def test_an_exception_shows_the_scripts_traceback_and_the_run_failed(world):
    run = world.misc["crash"]
    res = finished(run)
    assert res.returncode == 1, (
        f"an uncaught exception exits 1 under python; dltui exited {res.returncode}\n{res.stderr[-3000:]}"
    )
    script = str(SCRIPTS / "crash_in_eval.py")
    got = frames(res.stderr)
    want = [(script, "<module>"), (script, "main"), (script, "evaluate")]
    assert got == want, (
        f"stderr should show the script's traceback, frames {want}; got {got}\n{res.stderr[-3000:]}"
    )
    assert_no_internal_frames(res.stderr)
    assert (
        "ZeroDivisionError: division by zero" in res.stderr
        and "acc = correct / len(val_set)" in res.stderr
    ), res.stderr[-3000:]
    assert "epoch 1: train loss" in res.stdout, (
        f"the script's prints before the error should reach stdout: {res.stdout[-1000:]}"
    )
    entry = runs_entry(run)
    assert entry["status"] == "failed", f"`runs --json` should say failed, says {entry['status']!r}"
    assert sorted(series_by_step(run.run_dir())) == list(range(1, 21)), (
        "the 20 steps before the error should be recorded"
    )
    errors = events_of(run.run_dir(), wire.EV_ERROR)
    assert errors and "ZeroDivisionError" in json.dumps(errors[-1]), (
        f"expected an error event with the traceback: {errors}"
    )
    tb = (errors[-1]["data"] or {}).get("traceback", "")
    assert frames(tb) == want, (
        f"the error event's traceback should be the script's, frames {want}:\n{tb}"
    )


def test_a_script_that_never_steps_gets_one_clear_message(world):
    res = finished(world.misc["never"])
    lines = script_lines(res.stdout)
    assert "every parameter gets a gradient" in lines and "ok" in lines, (
        f"the script's own output is missing: {res.stdout[-1000:]}"
    )
    said = [
        ln
        for ln in (res.stdout + res.stderr).lower().splitlines()
        if "optimizer" in ln and "step" in ln and re.search(r"never|without|\bno\b|not", ln)
    ]
    assert len(said) == 1, (
        f"expected one message saying that the script never stepped an optimizer, got {said}:\nstdout {res.stdout[-1500:]}\nstderr {res.stderr[-1500:]}"
    )
    assert "Traceback" not in res.stderr, res.stderr[-3000:]


def test_a_file_with_the_recipe_names_is_a_recipe_even_with_a_main_block(world):
    run = world.misc["hybrid-auto"]
    res = finished(run)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "own loop" not in res.stdout, (
        "the file's own loop ran: it should have been treated as a recipe"
    )
    assert meta_of(run).get("driver") == wire.DRIVER_RECIPE, (
        f"meta['driver'] should be {wire.DRIVER_RECIPE!r}"
    )
    assert runs_entry(run)["status"] == "finished"


def test_script_flag_forces_script_mode(world):
    run = world.misc["hybrid-script"]
    res = finished(run)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "own loop done" in script_lines(res.stdout), (
        f"--script should run the file's own loop as __main__:\n{res.stdout[-1500:]}"
    )
    assert meta_of(run).get("driver") == wire.DRIVER_SCRIPT, (
        f"meta['driver'] should be {wire.DRIVER_SCRIPT!r}"
    )
    assert sorted(series_by_step(run.run_dir())) == [1, 2, 3, 4, 5], (
        "the own loop's 5 steps should be recorded"
    )


def test_recipe_flag_forces_recipe_mode(world):
    res = finished(world.misc["forced-recipe"])
    assert res.returncode == 2, (
        f"--recipe on a file without the recipe names is a usage error (2), got {res.returncode}\n{res.stderr[-2000:]}"
    )
    assert "Train Epoch" not in res.stdout, "--recipe should not run the file as a script"
    assert "model" in res.stderr, (
        f"the message should name what the recipe lacks: {res.stderr[-2000:]}"
    )
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
