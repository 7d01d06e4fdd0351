"""`dltui inspect CKPT|RUN [NAME [EXPR]]`: the tensor inspector on a saved checkpoint.

The checkpoint is read by a short-lived engine-side process (`dltui.engine.offline`: torch lives
there, never in the CLI); its answers are the live inspector's, printed the way `dltui ctl RUN
tensor` prints them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from dltui.run.reader import RunNotFound
from dltui.run.runs import resolve_run

from .checkpoints import CheckpointUnavailable, find_checkpoint


def add_parser(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser(
        "inspect",
        help="inspect the tensors of a saved checkpoint or state_dict (no run needed)",
        description="List a checkpoint's tensors, or show one through a view expression: shape, "
        "stride, storage offset and values, as the dashboard's Tensors tab shows them.",
    )
    i.add_argument("source", metavar="CKPT|RUN", help="a .pt file, or a run (its checkpoints/)")
    i.add_argument("name", nargs="?", help="a tensor's name (default: list them)")
    i.add_argument("expr", nargs="?", help="a view expression on x, e.g. 'x.t()[1:3, ::2]'")
    i.add_argument(
        "--checkpoint", default="last", help="for a RUN: last, best or a file in its checkpoints/"
    )
    i.add_argument("--json", action="store_true", help="the answer as JSON")
    i.add_argument(
        "--trust", action="store_true", help="load a pickle with Python objects (runs its code)"
    )
    i.set_defaults(func=cmd_inspect)


def checkpoint_path(source: str, runs_dir: Path, which: str) -> Path:
    """A file is itself; a run means its checkpoints/<which>.pt (last, best, or a file name)."""
    path = Path(source)
    if path.is_file():
        return path
    return find_checkpoint(resolve_run(runs_dir, source), which)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .cli import die, print_reply

    try:
        ck = checkpoint_path(args.source, Path(args.runs_dir), args.checkpoint)
    except (RunNotFound, CheckpointUnavailable) as e:
        return die(str(e))
    argv = [sys.executable, "-m", "dltui.engine.offline", str(ck)]
    argv += [w for w in (args.name, args.expr) if w is not None]
    argv += ["--trust"] if args.trust else []
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr or f"dltui: reading {ck} failed (exit {res.returncode}).\n")
        return res.returncode
    if args.json:
        sys.stdout.write(res.stdout)
        return 0
    data = json.loads(res.stdout)
    cmd = "tensors" if args.name is None else "tensor"
    print_reply(cmd, SimpleNamespace(data=data), ck.parent)
    return 0
