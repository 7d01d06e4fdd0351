"""`python -m dltui.engine RECIPE`: the engine process that owns one run."""

from __future__ import annotations

import argparse
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import wire
from .runs import DEFAULT_RUNS_DIR, discard_if_empty, make_run_dir, new_run_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input: shown to the user, exit status 2."""


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be 1 or more")
    return v


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options `dltui train` and the engine share (the CLI passes them through)."""
    p.add_argument("--epochs", type=positive_int, help="number of epochs (default: the recipe's)")
    p.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps")
    p.add_argument("--seed", type=int, help="seed Python and torch before the recipe is imported")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: the recipe's, else CUDA if present)")
    p.add_argument("--stats-every", type=positive_int, help="layer stats every N steps (default: auto, ~2%% cost)")
    p.add_argument("--hist-every", type=positive_int, help="histograms every N steps (default: auto)")
    p.add_argument("--metric-every", type=positive_int, help="train metric every N steps (default: auto)")
    p.add_argument("--pause-on-anomaly", action="store_true", help="pause on NaN/Inf loss or a gradient spike")
    p.add_argument("--log-every", type=float, default=5.0, help="seconds between headless status lines")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dltui.engine", description=__doc__)
    p.add_argument("recipe")
    p.add_argument("--run-dir", type=Path, help="the run directory to create (default: runs/<new id>)")
    p.add_argument("--runs-dir", type=Path, default=Path(DEFAULT_RUNS_DIR))
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("--headless", action="store_true", help="print status lines to stdout")
    p.add_argument("--detached", action="store_true", help="running without a terminal: ignore SIGHUP")
    add_run_options(p)
    return p


def model_summary(model: Any) -> list[dict[str, Any]]:
    rows = []
    for name, mod in model.named_modules():
        params = list(mod.parameters())
        rows.append({
            "name": name or "(model)", "type": type(mod).__name__, "depth": name.count(".") + bool(name),
            "params": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "own": sum(p.numel() for p in mod.parameters(recurse=False)),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args, argv if argv is not None else sys.argv[1:])
    except UsageError as e:
        print(f"dltui: {e}", file=sys.stderr)
        return EXIT_USAGE


def run(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from .loop import seed_everything

    if args.seed is not None:
        seed_everything(args.seed)
    resume_ck = None
    if args.resume is not None:
        ck_path = args.resume / "checkpoints" / "last.pt"
        if not ck_path.exists():
            raise UsageError(f"run {args.resume} has no checkpoint to resume from ({ck_path} missing).")
        resume_ck = torch.load(ck_path, map_location="cpu", weights_only=False)
    from . import console

    # Capture from before the import: a recipe's own prints at import time belong to the run.
    early = console.Buffer()
    tees = console.capture(early)
    try:
        return _run(args, argv, early, tees, resume_ck)
    finally:
        console.restore(tees)


def _run(args: argparse.Namespace, argv: list[str], early: Any, tees: Any, resume_ck: Any) -> int:
    import torch

    from .loop import Loop, Settings
    from .recipe import RecipeError, check_device, load_recipe

    try:
        recipe = load_recipe(args.recipe)
        if args.device:
            check_device(args.device, "--device")
    except RecipeError as e:
        if args.run_dir is not None:
            discard_if_empty(args.run_dir)  # reserved by `dltui train`, never used
        raise UsageError(str(e)) from None

    run_dir = args.resume or args.run_dir or new_run_dir(args.recipe, args.runs_dir)
    make_run_dir(run_dir)
    from .gate import Gate
    from .probe import Probe
    from .store import RunStore, host_info

    store = RunStore(run_dir / "run.sqlite")
    store.start()
    gate = Gate()
    probe = Probe(
        store, stats_every=args.stats_every, hist_every=args.hist_every,
        metric_every=args.metric_every, pause_on_anomaly=args.pause_on_anomaly,
    )  # fmt: skip
    callbacks: list[Any] = [probe]
    if args.headless:
        from .headless import HeadlessPrinter

        callbacks.append(HeadlessPrinter(probe, run_dir, every=args.log_every))
    settings = Settings(
        epochs=args.epochs, max_steps=args.max_steps, seed=args.seed, device=args.device,
        checkpoint_dir=run_dir / "checkpoints", resume=resume_ck,
    )  # fmt: skip
    try:
        loop = Loop(recipe, settings, callbacks, gate)
    except (RuntimeError, KeyError, ValueError) as e:
        store.close()
        if resume_ck is None:
            raise
        raise UsageError(f"cannot resume {run_dir}: its checkpoint does not fit this recipe ({e}).") from None
    from .control import ControlServer, SocketInUse

    server = ControlServer(run_dir, gate, store, loop)
    try:
        server.start()  # before touching the store: a live engine on this run means hands off
    except SocketInUse as e:
        store.close()
        raise UsageError(str(e)) from None
    if resume_ck is not None:
        store.truncate_after(loop.step)
        store.event(wire.EV_RUN, f"resumed from checkpoint at step {loop.step}", step=loop.step)
    store.set_meta(
        run_id=run_dir.name, script=str(Path(args.recipe).resolve()), args=argv, status=wire.RUNNING,
        started=time.time(), hparams=recipe.hparams, model=model_summary(loop.model),
        torch=torch.__version__, cuda=torch.version.cuda, device=str(loop.device),
        python=platform.python_version(), epochs=loop.epochs, steps_per_epoch=loop.steps_per_epoch,
        total_steps=loop.total_steps, detached=args.detached, headless=args.headless, **host_info(),
    )  # fmt: skip
    if resume_ck is None:
        store.event(wire.EV_RUN, f"run started: {args.recipe} on {loop.device}", step=0)

    from .sampler import Sampler

    sampler = Sampler(store.system, lambda msg: store.event(wire.EV_INFO, msg, level="warning"))
    sampler.start()
    _install_signals(gate, args.detached)
    store.flush()  # readers must see this engine's pid before it serves a single step
    early.replay_into(store)
    for tee in tees:
        tee.store = store
    try:
        status, error = loop.run()
    except BaseException:
        store.close()  # whatever happened, what was recorded is written out
        raise
    finally:
        # The run is over: a late Ctrl-C or SIGTERM must not interrupt writing its end.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.close()
        sampler.stop()
    if error is not None:
        from .recipe import user_traceback

        tb = user_traceback(error)
        print(f"dltui: the run failed at step {loop.step + 1} with an error in the recipe's code:\n{tb}",
              file=sys.stderr)  # fmt: skip
        store.event(wire.EV_ERROR, f"failed at step {loop.step + 1}: {error!r}", step=loop.step,
                    level="error", data={"traceback": tb})  # fmt: skip
    store.event(wire.EV_STATUS, f"run {status} at step {loop.step}", step=loop.step)
    store.close(status)
    return EXIT_FAILED if status == wire.FAILED else EXIT_OK


def _install_signals(gate: Any, detached: bool) -> None:
    interrupts = 0

    def on_int(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            print("\ndltui: stopping after this step (checkpointing); Ctrl-C again to stop now",
                  file=sys.__stderr__)  # fmt: skip
            gate.request_stop("interrupted (SIGINT)")
        else:
            gate.request_stop("interrupted twice (SIGINT)", now=True)
            raise KeyboardInterrupt

    def on_term(signum: int, frame: Any) -> None:
        gate.request_stop(f"terminated ({signal.Signals(signum).name})")

    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGTERM, on_term)
    # A detached engine outlives its terminal; an attached one checkpoints and stops with it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN if detached else on_term)


if __name__ == "__main__":
    sys.exit(main())
