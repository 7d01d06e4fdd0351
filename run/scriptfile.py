"""The user's file itself: script or recipe, run as __main__, its traceback without dltui's frames.

Torch-free: the CLI decides script or recipe with it before any engine starts."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from . import wire

RECIPE_NAMES = ("model", "optimizer", "loss_fn", "train_loader")


def detect_kind(path: str | Path) -> str:
    """'recipe' if the file defines the recipe contract at module level or a recipe() function,
    else 'script'. Decided from the source (the file is not run): a script would start training."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return wire.DRIVER_RECIPE  # the recipe loader reports the error with the user's line
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                names.update(_target_names(t))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            names.update(_target_names(node.target))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    if "recipe" in names or all(n in names for n in RECIPE_NAMES):
        return wire.DRIVER_RECIPE
    # Half a recipe with no training loop of its own (nothing calls .backward()): a recipe with a
    # name missing or misspelt, which the recipe loader explains; run as a script it would
    # just end without a step.
    if sum(n in names for n in RECIPE_NAMES) >= 2 and not _calls(tree, "backward"):
        return wire.DRIVER_RECIPE
    return wire.DRIVER_SCRIPT


def _calls(tree: ast.AST, attr: str) -> bool:
    """Does the source call `something.attr(...)` anywhere?"""
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == attr
        for n in ast.walk(tree)
    )


def _target_names(t: ast.AST) -> list[str]:
    if isinstance(t, ast.Name):
        return [t.id]
    if isinstance(t, (ast.Tuple, ast.List)):
        return [n for e in t.elts for n in _target_names(e)]
    return []


def run_as_main(path: Path) -> None:
    """Execute the file as `python FILE` would: a fresh __main__ module whose __file__ is the
    absolute path (tracebacks and warnings show it as Python does), sys.argv left as it is."""
    import types

    full = str(Path(path).resolve())
    with open(full, "rb") as f:
        source = f.read()
    code = compile(source, full, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=full, __cached__=None, __loader__=None, __package__=None, __spec__=None
    )
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main  # pickling classes defined in the script (DataLoader workers)
    try:
        exec(code, main.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def script_traceback(exc: BaseException) -> str:
    """The traceback as Python would print it for the script, without dltui's or runpy's frames."""
    import importlib.util
    import traceback

    # dltui's own folders: this package's and the engine's (found without importing it)
    spec = importlib.util.find_spec("dltui.engine")
    ours = tuple({str(Path(__file__).resolve().parent), *(spec.submodule_search_locations or [])})
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not (
            f.filename.startswith(ours) or "runpy" in f.filename or f.filename.startswith("<frozen")
        )
    ]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip()
