"""The two sides never import each other's heavy world (STYLE.md 2)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def front_modules() -> list[str]:
    """Every module of the torch-free side: dltui.run and dltui.tui, subpackages included."""
    names = []
    for folder, pkg in (("run", "dltui.run"), ("tui", "dltui.tui")):
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            names.append(".".join([pkg, *parts]))
    return names


def test_front_side_never_imports_torch_or_the_engine():
    """Importing all of run/ and tui/ loads neither torch nor any dltui.engine module."""
    mods = loaded_after("\n".join(f"import {m}" for m in front_modules()))
    assert "torch" not in mods
    assert not {m for m in mods if m.startswith("dltui.engine")}


@pytest.mark.parametrize("folder", ["run", "tui"])
def test_front_source_has_no_torch_or_engine_import(folder):
    """Stricter than importing: an import inside a function counts too (it would run later)."""
    bad = []
    for f in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [
                f"{f.relative_to(ROOT)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] == "torch" or n.startswith("dltui.engine")
            ]
    assert not bad, bad


def test_engine_never_imports_textual_or_rich():
    mods = loaded_after(
        "import dltui.engine.main, dltui.engine.loop, dltui.engine.probe, dltui.engine.control, "
        "dltui.engine.store, dltui.engine.sampler, dltui.engine.headless"
    )
    assert "torch" in mods  # sanity: the engine side really was imported
    assert not {m for m in mods if m.split(".")[0] in ("textual", "rich")}


def test_cli_help_is_fast_and_torch_free():
    out = subprocess.run(
        [sys.executable, "-m", "dltui.tui.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and "train" in out.stdout
