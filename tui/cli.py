"""The `dltui` command line: train, attach, runs, status, ctl, export. Never imports torch."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

from dltui.engine.main import add_run_options
from dltui.engine.reader import RunNotFound, RunReader
from dltui.engine.runs import DEFAULT_RUNS_DIR, list_runs, new_run_id, resolve_run, run_info

EXIT_USAGE = 2
PASS_THROUGH = ("epochs", "max_steps", "seed", "device", "stats_every", "hist_every", "metric_every", "log_every")


def die(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"dltui: {msg}", file=sys.stderr)
    return code


def engine_argv(args: argparse.Namespace, run_dir: Path, resume: bool) -> list[str]:
    """The `python -m dltui.engine` command line for this `dltui train`."""
    argv = [sys.executable, "-m", "dltui.engine", args.recipe]
    argv += ["--resume", str(run_dir)] if resume else ["--run-dir", str(run_dir)]
    for name in PASS_THROUGH:
        v = getattr(args, name)
        if v is not None:
            argv += ["--" + name.replace("_", "-"), str(v)]
    if args.pause_on_anomaly:
        argv.append("--pause-on-anomaly")
    return argv


def cmd_train(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs_dir)
    if not Path(args.recipe).exists():
        return die(f"{args.recipe}: file not found (looked for {Path(args.recipe).resolve()}). Check the path.")
    resume = args.resume is not None
    if resume:
        try:
            run_dir = resolve_run(runs_dir, args.resume)
        except RunNotFound as e:
            return die(str(e))
    else:
        run_dir = runs_dir / new_run_id(args.recipe, runs_dir)
    headless = args.headless or (not args.detach and not sys.stdout.isatty())
    if headless:
        argv = engine_argv(args, run_dir, resume) + ["--headless"]
        sys.stdout.flush()
        os.execv(sys.executable, argv)  # the engine takes over this process: signals go straight to it
    from dltui.tui.launch import start_engine

    return start_engine(args, run_dir, engine_argv(args, run_dir, resume) + ["--detached"])


def cmd_runs(args: argparse.Namespace) -> int:
    runs = list_runs(Path(args.runs_dir))
    if args.json:
        print(json.dumps([r.as_json() for r in runs], indent=2))
        return 0
    if not runs:
        print(f"no runs in {args.runs_dir}/")
        return 0
    print(f"{'RUN':<40} {'STATUS':<10} {'STEPS':>14}  BEST")
    for r in runs:
        steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step)
        best = "  ".join(f"{k} {v:.4g}" for k, v in r.best.items() if k.startswith("val_") and isinstance(v, float))
        print(f"{r.id:<40} {r.status:<10} {steps:>14}  {best}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        run_dir = resolve_run(Path(args.runs_dir), args.run)
        info = run_info(run_dir)
        with RunReader(run_dir) as r:
            meta = r.meta()
            events = r.last_events(5)
    except RunNotFound as e:
        return die(str(e))
    progress = meta.get("progress") or {}
    out = {**info.as_json(), "progress": progress, "intervals": meta.get("intervals"),
           "heartbeat_age_s": round(time.time() - meta.get("heartbeat", 0), 1), "last_events": events}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"{info.id}: {info.status.upper()}  step {info.step}/{info.total_steps or '?'}  "
          f"epoch {progress.get('epoch', 0)}/{progress.get('epochs', '?')}  lr {progress.get('lrs')}")
    for ev in events:
        print(f"  step {ev['step']}: [{ev['kind']}] {ev['message']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    try:
        run_dir = resolve_run(Path(args.runs_dir), args.run)
        reader = RunReader(run_dir)
    except RunNotFound as e:
        return die(str(e))
    out = sys.stdout if args.csv == "-" else open(args.csv, "w", newline="")
    n = 0
    with reader, out:
        w = csv.writer(out)
        w.writerow(["step", "epoch", "phase", "wall", "name", "value"])
        for row in reader.scalar_rows():
            w.writerow(row)
            n += 1
    if args.csv != "-":
        print(f"wrote {n} rows to {args.csv}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dltui", description="Run and steer PyTorch training in the terminal.")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="where runs live (default ./runs)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="start a run from a recipe file")
    t.add_argument("recipe", help="the recipe .py file (model, optimizer, loss_fn, train_loader)")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--headless", action="store_true", help="no dashboard: plain status lines")
    mode.add_argument("--detach", action="store_true", help="start in the background and print the run id")
    t.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    t.add_argument("--ascii", action="store_true", help="dashboard without Braille or box characters")
    add_run_options(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("runs", help="list runs")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_runs)

    s = sub.add_parser("status", help="a run's state, progress and latest events")
    s.add_argument("run", nargs="?", help="run id (default: the latest)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    e = sub.add_parser("export", help="write a run's scalars")
    e.add_argument("run", help="run id")
    e.add_argument("--csv", required=True, metavar="FILE", help="output file ('-' for stdout)")
    e.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    for action in p._subparsers._group_actions:
        for sp in action.choices.values():
            # `--runs-dir` is accepted after the subcommand too (`dltui train --runs-dir x ex.py`).
            sp.add_argument("--runs-dir", dest="sub_runs_dir", metavar="DIR", help="where runs live")
    args = p.parse_args(argv)
    if getattr(args, "sub_runs_dir", None):
        args.runs_dir = args.sub_runs_dir
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
