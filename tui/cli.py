"""The `dltui` command line: train, attach, runs, status, ctl, export. Never imports torch."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path

from dltui.run import wire
from dltui.run.options import (
    MAX_DIGITS,
    add_kind_options,
    add_launch_options,
    add_run_options,
    hint_misplaced,
    launch_error,
    split_file_argv,
    torchrun_argv,
)
from dltui.run.progress import position
from dltui.run.ranks import ranks_of, straggler
from dltui.run.reader import DB_NAME, RunNotFound, RunReader, pid_alive
from dltui.run.runs import (
    DEFAULT_RUNS_DIR,
    LIVE,
    RunsDirError,
    list_runs,
    lock_holder,
    new_run_dir,
    resolve_run,
    run_info,
)
from dltui.run.scriptfile import detect_kind
from dltui.run.status import RunStatus

from . import inspect_cli

EXIT_USAGE = 2
DETACH_WAIT_S = 120.0  # as long as the dashboard waits (tui/launch.py): torch on a cold disk
PASS_THROUGH = (
    "epochs",
    "max_steps",
    "seed",
    "device",
    "stats_every",
    "hist_every",
    "metric_every",
    "log_every",
    "dist_timeout",
)


def die(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"dltui: {msg}", file=sys.stderr)
    return code


def engine_argv(args: argparse.Namespace, run_dir: Path, resume: bool, *flags: str) -> list[str]:
    """The `python -m dltui.engine` command line for this `dltui train` (under torchrun with
    --nproc-per-node: every rank runs the engine with the same run directory)."""
    argv = [sys.executable, "-m", "dltui.engine"]
    if getattr(args, "nproc_per_node", None):
        argv = torchrun_argv(args, sys.executable)
    argv += ["--resume", str(run_dir)] if resume else ["--run-dir", str(run_dir)]
    for name in PASS_THROUGH:
        v = getattr(args, name)
        if v is not None:
            argv += ["--" + name.replace("_", "-"), str(v)]
    if args.pause_on_anomaly:
        argv.append("--pause-on-anomaly")
    if args.force_kind:
        argv.append("--" + args.force_kind)
    return (
        argv + list(flags) + ["--", args.recipe, *args.file_args]
    )  # what follows the file is the file's own


def cmd_train(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs_dir)
    if not Path(args.recipe).exists():
        return die(
            f"{args.recipe}: file not found (looked for {Path(args.recipe).resolve()}). Check the path."
        )
    why = launch_error(args)
    if why:
        return die(why)
    if args.nproc_per_node and (args.node_rank or 0) > 0:
        return join_job(args, runs_dir)
    resume = args.resume is not None
    if resume:
        try:
            run_dir = resolve_run(runs_dir, args.resume)
        except RunNotFound as e:
            return die(str(e))
        status = run_info(run_dir).status
        holder = lock_holder(run_dir)
        if status in LIVE or holder is not None:
            return die(
                f"run {run_dir.name} is already running ({shown_status(status)}"
                + (f", engine pid {holder}" if holder else "")
                + f"): watch it with "
                f"`dltui attach {run_dir.name}`, or stop it first with `dltui ctl {run_dir.name} stop`."
            )
    else:
        try:
            run_dir = new_run_dir(args.recipe, runs_dir)
        except RunsDirError as e:
            return die(str(e))
    headless = args.headless or (not args.detach and not sys.stdout.isatty())
    if not headless and (args.force_kind or detect_kind(args.recipe)) == wire.DRIVER_RECIPE:
        hint_misplaced(args.recipe, args.file_args)  # the engine's stderr goes to its log
    if headless:
        argv = engine_argv(args, run_dir, resume, "--headless")
        sys.stdout.flush()
        os.execv(
            sys.executable, argv
        )  # the engine takes over this process: signals go straight to it
    argv = engine_argv(args, run_dir, resume, "--detached")
    if args.detach:
        return detach(args, run_dir, argv)
    from dltui.tui.launch import start_engine

    return start_engine(args, run_dir, argv)


def join_job(args: argparse.Namespace, runs_dir: Path) -> int:
    """Node K > 0 of a multi-node run: its ranks join the job; the run (its store, socket and
    dashboard) lives on node 0, with rank 0. torchrun takes over this process."""
    first = args.node_rank * args.nproc_per_node
    last = first + args.nproc_per_node - 1
    ranks = f"ranks {first}..{last}" if last > first else f"rank {first}"
    print(
        f"dltui: node {args.node_rank} of {args.nnodes}: {ranks} join the run on "
        f"{args.rdzv_endpoint.rpartition(':')[0]} (watch and steer it there).",
        flush=True,
    )
    argv = engine_argv(args, runs_dir / "(node 0's run)", args.resume is not None, "--headless")
    os.execv(sys.executable, argv)
    return 0  # not reached


def detach(args: argparse.Namespace, run_dir: Path, argv: list[str]) -> int:
    """`train --detach`: start the engine in the background and say what actually happened —
    started, failed (with the engine's own message), or still starting after --wait seconds."""
    from dltui.run.client import ControlClient, ControlError
    from dltui.tui.launch import LOG_NAME, failed_start, spawn

    fresh = not (run_dir / DB_NAME).exists()
    try:
        proc = spawn(argv, run_dir)
    except RunsDirError as e:
        return die(str(e))
    name = run_dir.name
    t0 = time.monotonic()
    status = None
    while True:
        code = proc.poll()
        if code is not None:  # the engine ended already: a bad recipe, a failed or short run
            kept = (run_dir / DB_NAME).exists()
            if code == 0 and kept:
                print(f"run {name} already {shown_status(run_info(run_dir).status)}.")
                return 0
            failed_start(run_dir, code, fresh)
            if kept:
                status = shown_status(run_info(run_dir).status)
                print(f"dltui: run {name} {status} (engine exit status {code}).", file=sys.stderr)
            return code
        try:
            with RunReader(run_dir) as r:
                meta = r.meta()
        except (RunNotFound, OSError, ValueError, sqlite3.Error):
            meta = {}
        # Our engine: the process started, or (torchrun) the rank 0 it launched.
        ours = meta.get("pid") if proc.pid in (meta.get("pid"), meta.get("launcher_pid")) else None
        if ours is not None and meta.get("status") not in (None, wire.STARTING):
            client = ControlClient(run_dir, timeout=5)
            try:  # this engine answers on its socket (not another one's stale socket)
                st = client.request("status").state or {}
                if st.get("pid") == ours:
                    break
            except ControlError:
                pass
            finally:
                client.close()
        if time.monotonic() - t0 >= args.wait:
            print(
                f"run {name} is still starting after {args.wait:g} s (pid {proc.pid}); it keeps "
                f"going in the background. `dltui status {name}` says when it trains."
            )
            status = wire.STARTING
            break
        time.sleep(0.05)
    if status is None:
        print(f"run {name} started in the background (pid {proc.pid}).")
    print(f"  watch it:  dltui attach {name}")
    print(f"  steer it:  dltui ctl {name} pause | resume | lr *0.5 | stop")
    print(f"  its log:   {run_dir / LOG_NAME}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    runs = list_runs(Path(args.runs_dir))
    if args.json:
        print(
            json.dumps([{**r.as_json(), "status": shown_status(r.status)} for r in runs], indent=2)
        )
        return 0
    if not runs:
        print(f"no runs in {args.runs_dir}/")
        return 0
    print(f"{'RUN':<40} {'STATUS':<10} {'STEPS':>14}  BEST")
    for r in runs:
        steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step)
        best = "  ".join(
            f"{k} {v:.4g}"
            for k, v in r.best.items()
            if k.startswith("val_") and isinstance(v, float)
        )
        print(f"{r.id:<40} {shown_status(r.status):<10} {steps:>14}  {best}")
    return 0


def live_state(run_dir: Path) -> dict | None:
    """The engine's own view of a live run (fresher than the store's 0.5 s progress)."""
    from dltui.run.client import ControlClient, ControlError

    client = ControlClient(run_dir, timeout=5)
    try:
        return client.request("status").state
    except ControlError:
        return None
    finally:
        client.close()


def cmd_status(args: argparse.Namespace) -> int:
    try:
        run_dir = resolve_run(Path(args.runs_dir), args.run)
        info = run_info(run_dir)
        with RunReader(run_dir) as r:
            meta = r.meta()
            events = r.last_events(8)
            scalars = latest_scalars(r)
    except RunNotFound as e:
        return die(str(e))
    progress = meta.get("progress") or {}
    status = shown_status(info.status)
    # A stale heartbeat with the engine still alive here: its store can't write (a full disk);
    # the engine itself can say so.
    stalled = (
        info.status == wire.CRASHED
        and meta.get("host") == socket.gethostname()
        and isinstance(meta.get("pid"), int)
        and pid_alive(meta["pid"])
    )
    live = live_state(run_dir) if info.status in LIVE or stalled else None
    if live:
        progress = {
            **progress,
            **{
                k: live[k]
                for k in ("step", "epoch", "batch", "epoch_step", "lrs", "mode", "paused")
                if k in live
            },
        }
        status = RunStatus.of(wire.RUNNING, live).value
    out = {
        **info.as_json(),
        "status": status,
        "step": progress.get("step", info.step),
        "progress": progress,
        "driver": meta.get("driver", wire.DRIVER_RECIPE),
        "steering": meta.get("steering"),
        "optimizers": meta.get("optimizers"),
        "scalars": scalars,
        "intervals": meta.get("intervals"),
        "heartbeat_age_s": round(time.time() - meta.get("heartbeat", 0), 1),
        "last_events": events,
        "hint": None if live else next_step_hint(run_dir, info.status, meta),
        "store_trouble": (live or {}).get("store_trouble"),
        "world_size": meta.get("world_size", 1),
        "ranks": [
            {k: r.get(k) for k in RANK_FIELDS}
            for r in ranks_of({"ranks": (live or {}).get("ranks") or meta.get("ranks")})
        ],
    }
    slow = straggler(out["ranks"])
    out["straggler"] = slow.as_json() if slow else None
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    lrs = ", ".join(f"{x:.4g}" for x in progress.get("lrs") or [])
    if info.status == wire.STARTING:
        script = os.path.basename(str(meta.get("script") or "its file"))
        print(
            f"{info.id}: STARTING  (engine pid {meta.get('pid', '?')} is importing torch and "
            f"{script}; it trains once that is done)"
        )
    else:
        print(
            f"{info.id}: {status.upper()}  step {out['step']}/{info.total_steps or '?'}  "
            + (
                f"{position(progress).epoch_text}  {position(progress).batch_text}  "
                if progress.get("epochs")  # run/progress.py: the words the dashboard's header shows
                else ""
            )
            + f"lr {lrs}"
        )
    for phase, vals in scalars.items():
        shown = "  ".join(
            f"{k} {v:.4g}"
            for k, v in vals.items()
            if isinstance(v, float) and k not in wire.TIMING_SCALARS and not k.startswith("lr/")
        )
        if shown:
            print(f"  {phase}: {shown}")
    for ev in events:
        step = "" if ev["step"] is None else f"step {ev['step']}: "
        print(f"  {step}[{ev['kind']}] {ev['message']}")
    if out["store_trouble"]:
        print(
            f"  store: cannot write the run store ({out['store_trouble']}); training goes on, "
            "its records are held until the disk takes them again. Free some space."
        )
    if slow is not None:
        print(
            f"  {out['world_size']} ranks: slowest rank {slow.rank} {slow.step_time_s * 1e3:.1f} "
            f"ms/step, fastest rank {slow.fastest_rank} {slow.fastest_s * 1e3:.1f} ms "
            f"({slow.ratio:.2f}x)"
        )
    for r in out["ranks"]:
        st = r.get("step_time_s")
        print(
            f"  rank {r['rank']}: step {r['step']}  lr {', '.join(f'{x:.4g}' for x in r['lrs'] or [])}"
            f"  {r['host']} {r['device']}"
            + (f"  {st * 1e3:.1f} ms/step" if isinstance(st, (int, float)) else "")
        )
    if out["hint"]:
        print(f"  {out['hint']}")
    return 0


RANK_FIELDS = (
    *("rank", "step", "lrs", "host", "device", "step_time_s", "data_time_s", "status"),
    *("memory_rss", "cuda_allocated", "gpu"),
)


def next_step_hint(run_dir: Path, status: str, meta: dict) -> str | None:
    """What to do about a run that ended badly: resume it from its checkpoint, or start again."""
    if status not in (wire.CRASHED, wire.FAILED, wire.STOPPED):
        return None
    script = meta.get("script") or "FILE"
    try:
        script = os.path.relpath(script)  # as the user would type it from here
    except ValueError:
        pass
    if meta.get("driver") == wire.DRIVER_SCRIPT:
        return f"to run it again: dltui train {script}"
    if (run_dir / "checkpoints" / "last.pt").exists():
        return f"to continue from its last checkpoint: dltui train --resume {run_dir.name} {script}"
    return f"it has no checkpoint to resume from; to start again: dltui train {script}"


def latest_scalars(r: RunReader) -> dict[str, dict[str, float | None]]:
    """The newest value of every scalar, by phase: {"train": {"loss": 0.3, "acc": 0.9}, "val": {...}}."""
    out: dict[str, dict[str, float | None]] = {}
    for name, phase in r.series_names():
        last = r.last(name, phase)
        if last is not None:
            out.setdefault(phase, {})[name] = last[1]
    return out


def cmd_export(args: argparse.Namespace) -> int:
    from dltui.run.export import ExportError, export_csv, export_json, export_tensorboard

    try:
        run_dir = resolve_run(Path(args.runs_dir), args.run)
        reader = RunReader(run_dir)
    except RunNotFound as e:
        return die(str(e))
    target = args.csv or args.json or args.tensorboard
    try:
        with reader:
            if args.tensorboard:
                n = export_tensorboard(reader, Path(args.tensorboard))
                what = ", ".join(f"{v} {k}" for k, v in n.items())
            else:
                write = export_csv if args.csv else export_json
                with _output(target) as out:
                    n = write(reader, out)
                what = ", ".join(f"{v} {k}" for k, v in n.items())
    except ExportError as e:
        return die(f"{e}.")
    except OSError as e:
        return die(f"can't write {target}: {e.strerror or e}.")
    if target != "-":
        print(f"wrote {what} to {target}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _output(target: str):
    """stdout for '-', else the file (created, truncated), closed afterwards."""
    if target == "-":
        yield sys.stdout
        return
    with open(target, "w", newline="") as f:
        yield f


def shown_status(status: str) -> str:
    """The CLI's word for a run's state: RunStatus's (the dashboard's), not a word of its own."""
    return status if status.startswith("unreadable") else RunStatus.of(status).value


def split_ctl_words(words: list[str]) -> tuple[str | None, str, list[str]]:
    """`ctl [RUN] CMD ARGS...`: RUN is optional when the first word is a command."""
    if words and words[0] in wire.COMMANDS:
        return None, words[0], words[1:]
    if len(words) < 2:
        raise ValueError(f"expected a command ({', '.join(wire.COMMANDS)})")
    return words[0], words[1], words[2:]


def ctl_request(cmd: str, rest: list[str], args: argparse.Namespace) -> dict:
    """The request arguments for a ctl command line, or ValueError saying what is wrong."""
    if cmd == "step":
        if len(rest) > 1 or (rest and not rest[0].lstrip("-").isdigit()):
            raise ValueError(f"step takes one whole number, got {' '.join(rest)!r}")
        if rest and len(rest[0].lstrip("-")) > MAX_DIGITS:
            raise ValueError(f"step count of {len(rest[0].lstrip('-')):,} digits is too large")
        return {"n": int(rest[0]) if rest else 1}
    if cmd == "lr":
        if len(rest) != 1:
            raise ValueError("lr takes one value: 0.01, '*0.5' or /2 (quote * for the shell)")
        return {
            "value": rest[0],
            **({"group": args.group} if args.group is not None else {}),
            **({"optimizer": args.optimizer} if args.optimizer else {}),
        }
    if cmd == "mode":
        if len(rest) != 1:
            raise ValueError("mode takes train or eval")
        return {"mode": rest[0]}
    if cmd == "tensor":
        if len(rest) != 1:
            raise ValueError("tensor takes a name (see `dltui ctl RUN tensors`), and --expr EXPR")
        return {"name": rest[0], **({"expr": args.expr} if args.expr else {})}
    if rest:
        raise ValueError(f"{cmd} takes no arguments, got {' '.join(rest)!r}")
    return {}


def describe_state(st: dict) -> str:
    mode = "EVAL" if st.get("mode") == "eval" else shown_status(st.get("status", "?")).upper()
    lrs = ", ".join(f"{x:.4g}" for x in st.get("lrs") or [])
    total = st.get("total_steps") or "?"
    epoch = f"  {position(st).epoch_text}" if st.get("epochs") else ""
    others = "".join(
        f"  lr[{n}] " + ", ".join(f"{x:.4g}" for x in v)
        for i, (n, v) in enumerate((st.get("optimizers") or {}).items())
        if i
    )
    return f"{mode}  step {st.get('step')}/{total}{epoch}  lr {lrs}{others}"


def cmd_ctl(args: argparse.Namespace) -> int:
    from dltui.run.client import ControlClient, ControlError

    try:
        run, cmd, rest = split_ctl_words(args.words)
        req = ctl_request(cmd, rest, args)
    except ValueError as e:
        return die(f"ctl: {e}")
    try:
        run_dir = resolve_run(Path(args.runs_dir), run, live_only=run is None)
    except RunNotFound as e:
        return die(str(e))
    client = ControlClient(run_dir)
    try:
        reply = client.request(cmd, **req)
        if reply.ok and cmd == "step":  # wait for the N steps, so scripts see them done
            deadline = time.monotonic() + 600
            while (
                reply.ok
                and reply.state
                and reply.state.get("steps_left")
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
                reply = client.request("status")
    except ControlError as e:
        status = shown_status(run_info(run_dir).status)
        if status == wire.STARTING:
            return die(
                f"run {run_dir.name} is still starting (importing torch and its file); it takes "
                f"commands once it trains (`dltui status {run_dir.name}`).",
                code=1,
            )
        return die(f"{e} The run is {status}.", code=1)
    finally:
        client.close()
    if cmd == "stop" and reply.ok:
        wait_for_end(run_dir)
    if args.json:
        print(
            json.dumps(
                {"ok": reply.ok, "error": reply.error, "state": reply.state, "data": reply.data},
                indent=2,
                default=str,
            )
        )
        return 0 if reply.ok else 1
    if not reply.ok:
        return die(reply.error or "error", code=1)
    print_reply(cmd, reply, run_dir)
    return 0


def wait_for_end(run_dir: Path, timeout: float = 120.0) -> None:
    """After `stop`: wait for the engine to write its final checkpoint and exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run_info(run_dir).status in LIVE:
        time.sleep(0.1)


def print_reply(cmd: str, reply, run_dir: Path) -> None:
    data = reply.data
    if cmd == "tensors":
        for t in data:
            print(f"{t['name']:<48} {t['kind']:<16} {str(t['shape']):<20} {t['dtype']}")
        return
    if cmd == "tensor":
        keys = (
            "name",
            "expr",
            "dtype",
            "device",
            "shape",
            "stride",
            "storage_offset",
            "storage_numel",
            "storage_nbytes",
            "is_contiguous",
            "shares_storage",
            "numel",
        )
        for k in keys:
            print(f"{k:>15}: {data.get(k)}")
        st = data.get("stats") or {}
        print(f"{'stats':>15}: " + "  ".join(f"{k} {v}" for k, v in st.items()))
        vals = data.get("values") or []
        shown = "  ".join(
            f"{tuple(v['index'])}@{v['storage']}={v['value']:.4g}"
            if isinstance(v["value"], float)
            else f"{tuple(v['index'])}@{v['storage']}={v['value']}"
            for v in vals[:16]
        )
        print(f"{'values':>15}: {shown}{' ...' if len(vals) > 16 or data.get('truncated') else ''}")
        return
    if cmd == "lr":
        print(f"ok: {data['message']}")
    elif cmd == "checkpoint":
        print(f"ok: checkpoint written to {data['path']}")
    elif cmd == "stop":
        info = run_info(run_dir)
        print(
            f"ok: run {shown_status(info.status)} at step {info.step} (final checkpoint in {run_dir / 'checkpoints'})"
        )
        return
    elif cmd != "status":
        print(f"ok: {cmd}")
    print(describe_state(reply.state or {}))


def unknown_run(runs_dir: Path, spec: str, e: RunNotFound) -> str:
    """One line for a run name that resolves to nothing: the runs there are, by name."""
    if "matches several" in str(e):
        return str(e)
    names = [r.id for r in list_runs(runs_dir)]
    if not names:
        return f"no run '{spec}': {runs_dir}/ has no runs (start one with `dltui train FILE`)."
    shown = ", ".join(names[-8:]) + (f" and {len(names) - 8} older" if len(names) > 8 else "")
    return f"no run '{spec}' in {runs_dir}/; its runs: {shown}."


def cmd_attach(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs_dir)
    specs = list(dict.fromkeys(args.run))  # a run named twice is shown once
    if len(specs) > 1:  # several runs: the compare view
        paths = []
        for spec in specs:
            try:
                paths.append(resolve_run(runs_dir, spec))
            except RunNotFound as e:
                return die(unknown_run(runs_dir, spec, e))
        if len({p.resolve() for p in paths}) > 1:
            from dltui.tui.screens.compare import run_compare

            return run_compare(paths, ascii=args.ascii)
        args.run = specs[:1]
    try:
        if args.run:
            try:
                run_dir = resolve_run(runs_dir, args.run[0])
            except RunNotFound as e:
                return die(unknown_run(runs_dir, args.run[0], e))
        else:
            # The one live run, or the only run; when several could be meant, the Runs screen.
            runs = list_runs(runs_dir)
            live = [r for r in runs if r.status in LIVE]
            if len(live) > 1 or (not live and len(runs) > 1):
                return cmd_browse(args)
            run_dir = resolve_run(runs_dir, None, live_only=bool(live))
        meta_pid = RunReader(run_dir).meta().get("pid")
    except RunNotFound as e:
        return die(str(e))
    from dltui.tui.app import run_app

    return run_app(run_dir, engine_pid=meta_pid, ascii=args.ascii, owns_engine=False)


def cmd_browse(args: argparse.Namespace) -> int:
    """`dltui` alone: every run in the runs dir, Enter opens one."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return die("the Runs screen needs a terminal; see `dltui runs` and `dltui --help`.")
    from dltui.tui.browser import browse

    return browse(Path(args.runs_dir), ascii=getattr(args, "ascii", False))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dltui", description="Run and steer PyTorch training in the terminal."
    )
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="where runs live (default ./runs)")
    p.add_argument("--ascii", action="store_true", help="no Braille or box characters")
    p.set_defaults(func=cmd_browse)  # no command: the Runs screen
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser(
        "train",
        help="train: your own script, or a recipe",
        usage="dltui train [OPTIONS] FILE [FILE ARGS ...]",
        description="Run FILE and watch it. Everything after FILE is FILE's own argv "
        "(`dltui train train.py --lr 3e-4` gives --lr to train.py); `--` also ends dltui's options. "
        "A file that defines model, optimizer, loss_fn and train_loader (or recipe()) is a recipe, "
        "trained by dltui's loop; any other file is a script with its own loop, run as __main__.",
    )
    t.add_argument("recipe", metavar="FILE", help="a training script, or a recipe .py file")
    add_kind_options(t)
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--headless", action="store_true", help="no dashboard: plain status lines")
    mode.add_argument(
        "--detach", action="store_true", help="start in the background and print the run id"
    )
    t.add_argument(
        "--wait",
        type=float,
        default=DETACH_WAIT_S,
        metavar="SECONDS",
        help=f"--detach: how long to wait for the run to begin training (default {DETACH_WAIT_S:g})",
    )
    t.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    t.add_argument(
        "--ascii", action="store_true", help="dashboard without Braille or box characters"
    )
    add_run_options(t)
    add_launch_options(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("runs", help="list runs")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_runs)

    s = sub.add_parser("status", help="a run's state, progress and latest events")
    s.add_argument("run", nargs="?", help="run id (default: the latest)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    c = sub.add_parser(
        "ctl",
        help="steer a live run: pause, resume, step N, lr V, mode M, checkpoint, stop, tensors, tensor NAME",
    )
    c.add_argument(
        "words",
        nargs="+",
        metavar="[RUN] CMD [ARGS]",
        help="e.g. `pause`, `RUN lr '*0.5'`, `step 10`",
    )
    c.add_argument("--group", type=int, help="lr: only this param group")
    c.add_argument(
        "--optimizer",
        help="lr: this optimizer (by name, see `dltui status`; default: the run's first)",
    )
    c.add_argument("--expr", help="tensor: a view expression on x, e.g. 'x.t()[1:3]'")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_ctl)

    a = sub.add_parser(
        "attach",
        help="open the dashboard on a run (default: the latest live run); "
        "with several runs, compare them",
    )
    a.add_argument("run", nargs="*", help="run ids (or dirs); two or more: the compare view")
    a.add_argument("--ascii", action="store_true", help="no Braille or box characters")
    a.set_defaults(func=cmd_attach)

    e = sub.add_parser(
        "export", help="write a run's record as CSV, JSON or TensorBoard event files"
    )
    e.add_argument("run", help="run id")
    fmt = e.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--csv", metavar="FILE", help="scalars, one row per step ('-' for stdout)")
    fmt.add_argument("--json", metavar="FILE", help="meta, scalars and events ('-' for stdout)")
    fmt.add_argument(
        "--tensorboard", metavar="DIR", help="TensorBoard event files: scalars, histograms, hparams"
    )
    e.set_defaults(func=cmd_export)

    inspect_cli.add_parser(sub)
    return p


def _subcommand_index(argv: list[str], p: argparse.ArgumentParser) -> int | None:
    head, word, _ = split_file_argv(argv, p)
    return (
        len(head)
        if word is not None and len(head) < len(argv) and argv[len(head)] == word
        else None
    )


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    for action in p._subparsers._group_actions:
        for sp in action.choices.values():
            # `--runs-dir` is accepted after the subcommand too (`dltui train --runs-dir x ex.py`).
            sp.add_argument(
                "--runs-dir", dest="sub_runs_dir", metavar="DIR", help="where runs live"
            )
    argv = list(sys.argv[1:] if argv is None else argv)
    file_args: list[str] = []
    at = _subcommand_index(argv, p)
    if at is not None and argv[at] == "train":  # everything after FILE is FILE's own
        train = p._subparsers._group_actions[0].choices["train"]
        head, file, file_args = split_file_argv(argv[at + 1 :], train)
        argv = argv[: at + 1] + head + (["--", file] if file is not None else [])
    args = p.parse_args(argv)
    args.file_args = file_args
    if getattr(args, "sub_runs_dir", None):
        args.runs_dir = args.sub_runs_dir
    try:
        return args.func(args)
    except BrokenPipeError:  # `dltui export RUN --csv - | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
