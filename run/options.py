"""The options `dltui train` and the engine share, and the split of argv between dltui and FILE.

Torch-free: the CLI parses with it before any engine exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import wire
from .runs import DEFAULT_RUNS_DIR

MAX_DIGITS = 18  # past this a count is a typo (and Python refuses 4,300+ digits with a hint
# about sys.set_int_max_str_digits() that speaks to programmers, not users)


def whole_int(text: str) -> int:
    """A whole number of at most MAX_DIGITS digits, else a short argparse error."""
    digits = text.strip().lstrip("+-")
    if len(digits) > MAX_DIGITS and digits.isdigit():
        raise argparse.ArgumentTypeError(f"a {len(digits):,}-digit number is too large")
    try:
        return int(text)
    except ValueError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise argparse.ArgumentTypeError(f"{shown!r} is not a whole number") from None


def positive_int(text: str) -> int:
    v = whole_int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be 1 or more")
    return v


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options `dltui train` and the engine share (the CLI passes them through)."""
    p.add_argument("--epochs", type=positive_int, help="number of epochs (default: the recipe's)")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps")
    p.add_argument(
        "--seed", type=whole_int, help="seed Python and torch before the recipe is imported"
    )
    p.add_argument(
        "--device", help="cpu, cuda, cuda:1 (default: the recipe's, else CUDA if present)"
    )
    p.add_argument(
        "--stats-every",
        type=positive_int,
        help="layer stats every N steps (default: auto, ~2%% cost)",
    )
    p.add_argument(
        "--hist-every", type=positive_int, help="histograms every N steps (default: auto)"
    )
    p.add_argument(
        "--metric-every", type=positive_int, help="train metric every N steps (default: auto)"
    )
    p.add_argument(
        "--pause-on-anomaly", action="store_true", help="pause on NaN/Inf loss or a gradient spike"
    )
    p.add_argument(
        "--log-every", type=float, default=5.0, help="seconds between headless status lines"
    )
    p.add_argument(
        "--dist-timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="torchrun recipes: the process group's timeout for one collective (default "
        "torch's); pauses never count against it",
    )


def positive_seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (v > 0 and v < 1e9):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return v


def endpoint(text: str) -> str:
    """HOST:PORT (the rendezvous of a multi-node run: node 0's address and a free port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. node0:29400)")
    return text


def add_launch_options(p: argparse.ArgumentParser) -> None:
    """`dltui train`'s torchrun options: several processes (ranks), one run."""
    g = p.add_argument_group("several GPUs or nodes (torchrun: one run, every rank steered)")
    g.add_argument(
        "--nproc-per-node",
        type=positive_int,
        metavar="N",
        help="processes (ranks) on this node, usually one per GPU; runs FILE under torchrun",
    )
    g.add_argument("--nnodes", type=positive_int, metavar="M", help="nodes in the job (default 1)")
    g.add_argument(
        "--node-rank",
        type=whole_int,
        metavar="K",
        help="this node's index, 0..M-1 (node 0 holds rank 0 and the run)",
    )
    g.add_argument(
        "--rdzv-endpoint",
        type=endpoint,
        metavar="HOST:PORT",
        help="node 0's address and a free port, the same on every node",
    )


def launch_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the torchrun options, in one line (None: fine)."""
    nnodes = args.nnodes or 1
    if args.nproc_per_node is None:
        if args.nnodes or args.node_rank is not None or args.rdzv_endpoint:
            return "--nnodes, --node-rank and --rdzv-endpoint need --nproc-per-node N."
        return None
    if nnodes > 1 and not args.rdzv_endpoint:
        return (
            f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (node 0's address and a free port, "
            "the same on every node)."
        )
    if args.node_rank is not None and not 0 <= args.node_rank < nnodes:
        return f"--node-rank {args.node_rank} must be 0..{nnodes - 1} for --nnodes {nnodes}."
    return None


def torchrun_argv(args: argparse.Namespace, python: str) -> list[str]:
    """The real torchrun (torch.distributed.run's main, which engine/distributed.py's launch()
    calls to end with the failing rank's status and no traceback), running the engine as a
    module on every rank."""
    argv = [python, "-m", "dltui.engine.distributed", "--nproc-per-node", str(args.nproc_per_node)]
    nnodes = args.nnodes or 1
    if args.rdzv_endpoint:  # static rendezvous: node 0 hosts the store at HOST:PORT
        host, _, port = args.rdzv_endpoint.rpartition(":")
        argv += ["--nnodes", str(nnodes), "--node-rank", str(args.node_rank or 0)]
        argv += ["--master-addr", host, "--master-port", port]
    else:  # one node: a free port of its own, so two runs never meet
        argv.append("--standalone")
    return [*argv, "-m", "dltui.engine"]


def add_kind_options(p: argparse.ArgumentParser) -> None:
    kind = p.add_mutually_exclusive_group()
    kind.add_argument(
        "--script",
        dest="force_kind",
        action="store_const",
        const=wire.DRIVER_SCRIPT,
        help="run FILE as a script with its own loop (default: decided from the file)",
    )
    kind.add_argument(
        "--recipe",
        dest="force_kind",
        action="store_const",
        const=wire.DRIVER_RECIPE,
        help="load FILE as a recipe (model, optimizer, loss_fn, train_loader)",
    )


def split_file_argv(
    argv: list[str], p: argparse.ArgumentParser
) -> tuple[list[str], str | None, list[str]]:
    """(dltui's own options, FILE, FILE's arguments): everything after FILE belongs to FILE, and
    `--` ends dltui's options. Argparse alone can't do this (it would read the file's --epochs)."""
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return argv[:i], (argv[i + 1] if i + 1 < len(argv) else None), argv[i + 2 :]
        if tok.startswith("-") and tok != "-":
            # An unknown option is left for argparse to refuse; a known one may take its value.
            i += _option_words(tok, _option_action(tok, p, abbrev=True))
            continue
        return argv[:i], tok, argv[i + 1 :]
    return argv, None, []


def _option_action(tok: str, p: argparse.ArgumentParser, abbrev: bool) -> argparse.Action | None:
    """The action of `p` that option word `tok` names (`--epochs`, `--epochs=3`; with `abbrev`,
    an unambiguous prefix argparse would also accept: --max for --max-steps), else None."""
    opts = p._option_string_actions
    name = tok.split("=", 1)[0]
    act = opts.get(name)
    if act is None and abbrev and name.startswith("--"):
        found = {id(a): a for o, a in opts.items() if o.startswith(name) and o.startswith("--")}
        act = next(iter(found.values())) if len(found) == 1 else None
    return act


def _option_words(tok: str, act: argparse.Action | None) -> int:
    """Words of argv the option takes: 2 when its value is the next word, else 1."""
    return 2 if act is not None and "=" not in tok and act.nargs != 0 else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dltui.engine", description="The engine process that owns one run."
    )
    p.add_argument(
        "recipe",
        metavar="FILE",
        help="a recipe or a training script; what follows it is its own argv",
    )
    add_kind_options(p)
    p.add_argument(
        "--run-dir", type=Path, help="the run directory to create (default: runs/<new id>)"
    )
    p.add_argument("--runs-dir", type=Path, default=Path(DEFAULT_RUNS_DIR))
    p.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue this run from its last checkpoint"
    )
    p.add_argument("--headless", action="store_true", help="print status lines to stdout")
    p.add_argument(
        "--detached", action="store_true", help="running without a terminal: ignore SIGHUP"
    )
    add_run_options(p)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    p = parser()
    head, file, file_args = split_file_argv(argv, p)
    args = p.parse_args(head + (["--", file] if file is not None else []))
    args.file_args = file_args
    return args


def hint_misplaced(file: str, file_args: list[str]) -> None:
    """`dltui train recipe.py --epochs 3` gives --epochs to the recipe, not to dltui: say so once,
    in case that was not meant (a recipe that reads its own --epochs can ignore the note)."""
    p = parser()
    moved, i = [], 0
    while i < len(file_args):
        tok = file_args[i]
        act = _option_action(tok, p, abbrev=False) if tok.startswith("--") else None
        width = _option_words(tok, act) if act is not None else 1
        if act is not None:
            moved += file_args[i : i + width]
        i += width
    if moved:
        shown = " ".join(moved)
        print(
            f"dltui: note: {shown} after {file} went to the file itself (its own argv); dltui's own "
            f"options go before it: dltui train {shown} {file}",
            file=sys.stderr,
        )
