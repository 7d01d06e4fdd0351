"""`python -m dltui.engine RECIPE`: the engine process that owns one run."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import platform
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dltui.run import wire
from dltui.run.options import hint_misplaced, parse
from dltui.run.reader import DB_NAME, RunReader
from dltui.run.runs import (
    ENGINE_LOCK,
    RunsDirError,
    discard_if_empty,
    make_run_dir,
    new_run_dir,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input: shown to the user, exit status 2."""


def optimizer_meta(driver: Any) -> list[dict[str, Any]]:
    """meta['optimizers']: each optimizer's name, class and group count, the run's own first."""
    return [
        {"name": n, "type": type(o).__name__, "groups": len(o.param_groups)}
        for n, o in driver.optimizers.items()
    ]


def model_summary(model: Any) -> list[dict[str, Any]]:
    rows = []
    for name, mod in model.named_modules():
        params = list(mod.parameters())
        rows.append(
            {
                "name": name or "(model)",
                "type": type(mod).__name__,
                "depth": name.count(".") + bool(name),
                "params": sum(p.numel() for p in params),
                "trainable": sum(p.numel() for p in params if p.requires_grad),
                "own": sum(p.numel() for p in mod.parameters(recurse=False)),
            }
        )
    return rows


@dataclass
class Begun:
    """A run from the engine's first moments: its directory (locked), its store saying
    "starting" with this pid, and the console captured into it, before torch is imported."""

    run_dir: Path
    store: Any  # engine.store.RunStore
    tees: Any  # console tees, already writing into the store
    fresh: bool  # this engine created the store (not a resume)
    prior_status: str | None  # a resumed run's stored status, put back if the resume fails
    lock_fd: int

    def abandon(self, why: str) -> None:
        """The run never began (bad input): a fresh run leaves nothing behind; a resume records
        why it failed and gets its old status back."""
        from . import console

        console.restore(self.tees)
        if self.fresh:
            self.store.close()
            for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", ENGINE_LOCK):
                (self.run_dir / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (self.run_dir / "checkpoints").rmdir()
            discard_if_empty(self.run_dir)
        else:
            self.store.event(wire.EV_ERROR, f"resume failed: {why}", level="error")
            self.store.close(self.prior_status)
        os.close(self.lock_fd)

    def crashed(self, error: BaseException) -> None:
        """dltui itself failed before the run began: recorded, marked failed, never silent."""
        from . import console

        console.restore(self.tees)
        tb = "".join(traceback.format_exception(error))
        self.store.event(
            wire.EV_ERROR,
            f"the engine failed to start: {error!r}",
            level="error",
            data={"traceback": tb},
        )
        stopped = isinstance(error, KeyboardInterrupt)
        self.store.close(wire.STOPPED if stopped else wire.FAILED)


def main(argv: list[str] | None = None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    args = parse(argv)
    args.world = args.agent = None
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a rank of a torchrun job (engine/distributed.py)
        from .distributed import follower_begin, world_from_env

        args.world = world_from_env()
    try:
        if args.world is not None and not args.world.leader:
            begun = follower_begin(args, args.world)  # rank 0 owns the run directory
        else:
            begun = begin(args, argv)
            if args.world is not None:  # `train --detach` knows its launcher's rank 0 by this
                begun.store.set_meta(launcher_pid=os.getppid(), world_size=args.world.world_size)
            elif not begun.fresh:  # a torchrun run resumed as one process: one rank now
                begun.store.set_meta(world_size=1, ranks=[])
    except UsageError as e:
        print(f"dltui: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run(args, argv, begun)
    except UsageError as e:
        begun.abandon(str(e))
        if args.world is None or args.world.leader:  # every rank has the same file: one says it
            print(f"dltui: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BaseException as e:
        if begun.store.status_written is None:  # not ended by the driver: say so in the store
            begun.crashed(e)
        raise


def _lock(run_dir: Path) -> int:
    """Own the run: one engine per run directory (a second resume, or a resume of a live run,
    is refused before it touches anything). The kernel drops the lock when the process dies."""
    fd = os.open(run_dir / ENGINE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        name = run_dir.name
        raise UsageError(
            f"run {name} is already running in another engine (pid {holder}): watch it with "
            f"`dltui attach {name}`, or stop it first with `dltui ctl {name} stop`."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def begin(args: argparse.Namespace, argv: list[str]) -> Begun:
    """The run exists from here on, as "starting" with its console: `dltui runs`, `status` and
    `attach` know it while torch and the recipe are still being imported (torch-free)."""
    from . import console
    from .store import RunStore, StoreError, host_info

    try:
        run_dir = args.resume or args.run_dir or new_run_dir(args.recipe, args.runs_dir)
        if args.resume is not None and not (args.resume / DB_NAME).exists():
            raise UsageError(f"there is no run at {args.resume} to resume ({DB_NAME} missing).")
        make_run_dir(run_dir)
    except RunsDirError as e:
        raise UsageError(str(e)) from None
    lock_fd = _lock(run_dir)
    fresh = not (run_dir / DB_NAME).exists()
    prior = None
    if not fresh:
        with contextlib.suppress(Exception), RunReader(run_dir) as r:
            prior = r.meta().get("status")
    store = RunStore(run_dir / DB_NAME)
    try:
        store.start()
    except StoreError as e:
        os.close(lock_fd)
        if fresh:
            (run_dir / ENGINE_LOCK).unlink(missing_ok=True)
            discard_if_empty(run_dir)
        raise UsageError(str(e)) from None
    store.set_meta(
        run_id=run_dir.name,
        script=str(Path(args.recipe).resolve()),
        args=argv,
        status=wire.STARTING,
        started=time.time(),
        detached=args.detached,
        headless=args.headless,
        **host_info(),
    )
    store.flush()  # readers see the starting run (and this pid) before torch is imported
    tees = console.capture(store)  # a recipe's prints at import time belong to the run
    return Begun(run_dir, store, tees, fresh, prior, lock_fd)


def run(args: argparse.Namespace, argv: list[str], begun: Begun) -> int:
    import dltui
    from dltui.run.scriptfile import detect_kind

    from .script import Session

    kind = args.force_kind or detect_kind(args.recipe)
    ctx = dltui.Context(
        epochs=args.epochs,
        max_steps=args.max_steps,
        device=args.device,
        seed=args.seed,
        args=list(getattr(args, "file_args", [])),
        script=args.recipe,
        mode=kind,
    )
    world = args.world
    if world is not None:
        ctx.rank, ctx.world_size = world.rank, world.world_size
        if kind == wire.DRIVER_RECIPE:  # a script inits its own process group
            from .ddp import init_group

            args.device = ctx.device = init_group(world, args.device, args.dist_timeout)
            args.own_group = True
    session = Session(ctx)
    dltui._session = session
    if kind == wire.DRIVER_SCRIPT:
        return _script(args, argv, session, begun)
    return _recipe(args, argv, session, begun)


def _recipe(args: argparse.Namespace, argv: list[str], session: Any, begun: Begun) -> int:
    import torch

    from .loop import seed_everything

    if args.seed is not None:
        seed_everything(args.seed)
    sys.argv = [args.recipe, *session.context.args]  # a recipe may read its own flags
    if not args.detached:  # a detached engine's stderr is its log: the CLI said it already
        hint_misplaced(args.recipe, session.context.args)
    resume_ck = None
    world = args.world
    if args.resume is not None and (world is None or world.leader):
        ck_path = args.resume / "checkpoints" / "last.pt"
        if not ck_path.exists():
            raise UsageError(
                f"run {args.resume} has no checkpoint to resume from ({ck_path} missing)."
            )
        resume_ck = torch.load(ck_path, map_location="cpu", weights_only=False)
    if args.resume is not None and world is not None:
        from .ddp import share_checkpoint

        resume_ck = share_checkpoint(world, resume_ck)  # every rank resumes from rank 0's
    from . import console

    try:
        return _run(args, argv, resume_ck, session, begun)
    finally:
        console.restore(begun.tees)


def _run(
    args: argparse.Namespace, argv: list[str], resume_ck: Any, session: Any, begun: Begun
) -> int:
    import torch

    from .loop import Loop, RecipeExit, Settings
    from .recipe import RecipeError, check_device, load_recipe

    try:
        recipe = load_recipe(args.recipe, session.context)
        if args.device:
            check_device(args.device, "--device")
    except RecipeError as e:
        raise UsageError(str(e)) from None
    notes = []
    if args.world is not None:
        from .ddp import prepare_recipe

        notes = prepare_recipe(recipe, args.world, args.seed)

    run_dir = begun.run_dir
    from .learner import recipe_learner
    from .store import host_info

    store, gate, probe, callbacks = _observers(args, begun.store, sys.__stdout__)
    settings = Settings(
        epochs=args.epochs,
        max_steps=args.max_steps,
        seed=args.seed,
        device=args.device,
        checkpoint_dir=_checkpoint_dir(args, run_dir),
        resume=resume_ck,
    )
    settings.context = session.context
    try:
        loop = Loop(recipe, settings, callbacks, gate)
    except (RuntimeError, KeyError, ValueError) as e:
        if resume_ck is None:
            raise
        raise UsageError(
            f"cannot resume {run_dir}: its checkpoint does not fit this recipe ({e})."
        ) from None
    if args.world is not None:
        from .ddp import wrap_model

        wrap_model(loop, args.world)
    from .control import SocketInUse

    store.set_meta(
        run_id=run_dir.name,
        script=str(Path(args.recipe).resolve()),
        args=argv,
        status=wire.RUNNING,
        hparams=recipe.hparams,
        model=model_summary(loop.model),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device=str(loop.device),
        python=platform.python_version(),
        epochs=loop.epochs,
        steps_per_epoch=loop.steps_per_epoch,
        total_steps=loop.total_steps,
        detached=args.detached,
        headless=args.headless,
        **host_info(),
        driver=wire.DRIVER_RECIPE,
        file_args=session.context.args,
        optimizers=optimizer_meta(loop),
        learner=recipe_learner(loop),  # loader arithmetic, optimizer, loss...: once
        steering={k: True for k in wire.STEERING_KEYS},
    )
    store.flush()  # running, with its meta, before its socket answers (launchers wait on that)
    server = _control_server(args, run_dir, gate, store, loop)
    try:
        server.start()
    except SocketInUse as e:
        raise UsageError(str(e)) from None
    if resume_ck is not None:  # only now: a refused engine must not have cut the history
        store.truncate_after(loop.step)
        store.event(wire.EV_RUN, f"resumed from checkpoint at step {loop.step}", step=loop.step)
    else:
        store.event(wire.EV_RUN, f"run started: {args.recipe} on {loop.device}", step=0)
    for note in notes:
        store.event(wire.EV_INFO, note, step=loop.step, level="warning")

    status, error = _drive(args, loop, store, gate, probe, server, session)
    code = EXIT_FAILED if status == wire.FAILED else EXIT_OK
    if isinstance(error, RecipeExit):
        from .recipe import user_traceback

        tb = user_traceback(error.__cause__)
        ck = run_dir / "checkpoints" / "last.pt"
        kept = f"; the checkpoint of step {loop.step} is in {ck}" if ck.exists() else ""
        print(
            f"dltui: the run failed at step {loop.step + 1}: {error} (run {run_dir.name} kept, "
            f"marked failed{kept}):\n{tb}",
            file=sys.stderr,
        )
        if isinstance(error.code, int) and 0 < error.code < 256:
            code = error.code  # what the recipe asked the process to exit with
        store.event(
            wire.EV_ERROR,
            f"failed at step {loop.step + 1}: {error}",
            step=loop.step,
            level="error",
            data={"traceback": tb},
        )
    elif error is not None:
        from .recipe import user_traceback

        part = getattr(error, "part", None)  # loop.EngineError: dltui's own code failed
        tb = user_traceback(error.__cause__ or error) if part else user_traceback(error)
        where = f"dltui's {part} failed" if part else "with an error in the recipe's code"
        print(
            f"dltui: the run failed at step {loop.step + 1}: {where}:\n{tb}"
            if part
            else f"dltui: the run failed at step {loop.step + 1} {where}:\n{tb}",
            file=sys.stderr,
        )
        store.event(
            wire.EV_ERROR,
            f"failed at step {loop.step + 1}: {error!r}",
            step=loop.step,
            level="error",
            data={"traceback": tb},
        )
    store.event(wire.EV_STATUS, f"run {status} at step {loop.step}", step=loop.step)
    store.close(status)
    return code


RECIPE_ONLY = {"epochs": "--epochs", "device": "--device", "resume": "--resume"}


def _script(args: argparse.Namespace, argv: list[str], session: Any, begun: Begun) -> int:
    """Run the user's own training script as __main__, observed (engine/script.py)."""
    path = Path(args.recipe)
    if not path.is_file():
        raise UsageError(
            f"{args.recipe}: file not found (looked for {path.resolve()}). Check the path."
        )
    for key, flag in RECIPE_ONLY.items():
        if getattr(args, key, None) is not None:
            raise UsageError(
                f"{flag} is for recipes; {args.recipe} is a script with its own loop, so it takes its "
                f"own flags after the file: `dltui train {args.recipe} {flag} ...` passes {flag} to the "
                "script. (Use --recipe if the file is a recipe.)"
            )
    if args.seed is not None:
        from .loop import seed_everything

        seed_everything(args.seed)
    from . import console

    try:
        return _run_script(args, argv, session, begun)
    finally:
        console.restore(begun.tees)


def _run_script(args: argparse.Namespace, argv: list[str], session: Any, begun: Begun) -> int:
    import torch

    from dltui.run.scriptfile import script_traceback

    from .control import SocketInUse
    from .script import ScriptRun
    from .store import host_info

    run_dir = begun.run_dir
    # dltui's headless lines go to stderr: the script's stdout stays what it would be.
    store, gate, probe, callbacks = _observers(args, begun.store, sys.__stderr__)
    file_argv = [args.recipe, *session.context.args]
    driver = ScriptRun(
        path=Path(args.recipe),
        argv=file_argv,
        callbacks=callbacks,
        gate=gate,
        session=session,
        store=store,
        probe=probe,
        max_steps=args.max_steps,
        checkpoint_dir=_checkpoint_dir(args, run_dir),
    )
    store.set_meta(
        run_id=run_dir.name,
        script=str(Path(args.recipe).resolve()),
        args=argv,
        status=wire.RUNNING,
        hparams={"argv": " ".join(session.context.args)} if session.context.args else {},
        model=[],
        torch=torch.__version__,
        cuda=torch.version.cuda,
        device="?",
        python=platform.python_version(),
        epochs=None,
        steps_per_epoch=None,
        total_steps=args.max_steps,
        detached=args.detached,
        headless=args.headless,
        driver=wire.DRIVER_SCRIPT,
        file_args=session.context.args,
        steering=driver.steering(),
        optimizers=[],
        **host_info(),
    )
    store.flush()
    server = _control_server(args, run_dir, gate, store, driver)
    try:
        server.start()
    except SocketInUse as e:
        raise UsageError(str(e)) from None
    shown = " ".join([args.recipe, *session.context.args])
    store.event(wire.EV_RUN, f"run started: script {shown}", step=0)
    status, error = _drive(args, driver, store, gate, probe, server, session)
    code = driver.exit_code
    if isinstance(error, SystemExit):
        store.event(
            wire.EV_ERROR,
            f"the script exited with status {code} at step {driver.step}",
            step=driver.step,
            level="error",
        )
    elif error is not None:
        tb = script_traceback(error)
        print(tb, file=sys.stderr)
        print(
            f"dltui: the script failed at step {driver.step} (run {run_dir.name} kept, marked failed)",
            file=sys.__stderr__,
        )
        store.event(
            wire.EV_ERROR,
            f"the script failed at step {driver.step}: {error!r}",
            step=driver.step,
            level="error",
            data={"traceback": tb},
        )
    if driver.step == 0 and status == wire.FINISHED:
        msg = (
            f"{args.recipe} ran to its end without ever calling optimizer.step(), so there was no "
            "training to watch. dltui follows a script through its optimizer's steps. If the file "
            "defines model, optimizer, loss_fn and train_loader for dltui to train, run it with --recipe."
        )
        print(f"dltui: {msg}", file=sys.__stderr__)
        store.event(wire.EV_ALERT, msg, step=0, level="warning")
    store.event(wire.EV_STATUS, f"run {status} at step {driver.step}", step=driver.step)
    store.close(status)
    return code


def _observers(args: argparse.Namespace, store: Any, out: Any) -> tuple[Any, Any, Any, list[Any]]:
    """The run store (already writing), the control gate, the probe and the headless printer."""
    from .gate import Gate
    from .probe import Probe

    run_dir = store.path.parent
    probe = Probe(
        store,
        stats_every=args.stats_every,
        hist_every=args.hist_every,
        metric_every=args.metric_every,
        pause_on_anomaly=args.pause_on_anomaly,
    )
    callbacks: list[Any] = [probe]
    if args.world is not None:
        from .distributed import Agent

        args.agent = Agent(args.world, run_dir, store, probe)
        callbacks.append(args.agent)
    if args.headless:
        from .headless import HeadlessPrinter

        callbacks.append(HeadlessPrinter(probe, run_dir, every=args.log_every, out=out))
    return store, Gate(), probe, callbacks


def _checkpoint_dir(args: argparse.Namespace, run_dir: Path) -> Path | None:
    """Where checkpoints go: rank 0 writes them, once for every rank (None: not this rank)."""
    return None if args.world is not None and not args.world.leader else run_dir / "checkpoints"


def _control_server(
    args: argparse.Namespace, run_dir: Path, gate: Any, store: Any, driver: Any
) -> Any:
    """The run's control server; under torchrun, one that steers every rank at one step."""
    if args.agent is not None:
        from .distributed import control_server

        return control_server(run_dir, gate, store, driver, args.agent)
    from .control import ControlServer

    return ControlServer(run_dir, gate, store, driver)


def _drive(
    args: argparse.Namespace,
    driver: Any,
    store: Any,
    gate: Any,
    probe: Any,
    server: Any,
    session: Any,
) -> tuple[str, BaseException | None]:
    """Go live (sampler, signals, console into the store) and run the driver to its end."""
    from .sampler import Sampler

    sampler = Sampler(
        store.system,
        lambda msg: store.event(wire.EV_INFO, msg, level="warning"),
        meta=store.set_meta,  # the GPUs' description and processes (wire.META_GPUS), as data
    )
    sampler.start()
    _install_signals(gate, args.detached)
    if args.agent is not None:
        from .distributed import install_signals

        install_signals(args.agent, gate, args.detached)
    store.flush()  # readers must see the run's meta before it serves a single step
    session.attach(driver, probe)
    try:
        return driver.run()  # anything escaping is recorded and the store closed by main()
    finally:
        # The run is over: a late Ctrl-C or SIGTERM must not interrupt writing its end.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.close()
        sampler.stop()
        if getattr(args, "own_group", False):
            from .ddp import finish_group

            finish_group()  # the engine's own process group (a script tears down its own)


def _install_signals(gate: Any, detached: bool) -> None:
    interrupts = 0

    def on_int(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            print(
                "\ndltui: stopping after this step (checkpointing); Ctrl-C again to stop now",
                file=sys.__stderr__,
            )
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
