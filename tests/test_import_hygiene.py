"""The two sides never import each other's heavy world (STYLE.md 2)."""

import json
import subprocess
import sys

import pytest


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "statement",
    [
        "import dltui.tui.cli",
        "import dltui.tui.app",
        "import dltui.tui.launch",
        "import dltui.engine.reader, dltui.engine.client, dltui.engine.runs, dltui.engine.wire",
    ],
)
def test_front_side_never_imports_torch(statement):
    mods = loaded_after(statement)
    assert "torch" not in mods, f"{statement} pulled in torch"


def test_engine_never_imports_textual_or_rich():
    mods = loaded_after(
        "import dltui.engine.main, dltui.engine.loop, dltui.engine.probe, dltui.engine.control, "
        "dltui.engine.store, dltui.engine.sampler, dltui.engine.headless"
    )
    assert "torch" in mods  # sanity: the engine side really was imported
    assert not {m for m in mods if m.split(".")[0] in ("textual", "rich")}


def test_cli_help_is_fast_and_torch_free():
    out = subprocess.run([sys.executable, "-m", "dltui.tui.cli", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "train" in out.stdout
