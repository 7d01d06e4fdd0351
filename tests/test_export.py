"""`dltui export RUN --tensorboard DIR | --json FILE`: a real run, exported through the CLI and
read back with TensorBoard's own reader (EventAccumulator) and a strict JSON parser."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import CHILD_ENV, linear_recipe, only_run, run_cli, scalar_table

from dltui.run.reader import RunReader

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

STEPS = 24


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run: 2 epochs, validation, hparams, stats and histograms every 4 steps."""
    root = tmp_path_factory.mktemp("export")
    recipe = root / "reg.py"
    recipe.write_text(linear_recipe(n=240, val=100, epochs=2, extra='hparams = {"width": 4}\n'))
    res = run_cli(
        "train",
        "--headless",
        "--runs-dir",
        root / "runs",
        "--max-steps",
        STEPS,
        "--stats-every",
        4,
        "--hist-every",
        4,
        recipe,
        cwd=root,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return root, only_run(root / "runs")


def load(tb_dir) -> EventAccumulator:
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_reads_one_loss_per_recorded_step(run, tmp_path):
    root, run_dir = run
    out = tmp_path / "tb"
    res = run_cli(
        "export", run_dir.name, "--tensorboard", out, "--runs-dir", root / "runs", cwd=root
    )
    assert res.returncode == 0, res.stderr
    assert f"to {out}" in res.stderr and "scalars" in res.stderr
    acc = load(out)
    table = scalar_table(run_dir)
    want = [(s, v) for s, _e, v in table[("loss", "train")]]
    got = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert [s for s, _ in got] == [s for s, _ in want] and len(got) == STEPS
    assert got == pytest.approx(want, rel=1e-6)
    # validation under val/, one point per validation pass
    val = [(s, v) for s, _e, v in table[("loss", "val")]]
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("val/loss")] == val
    assert any(t.startswith("lr/") for t in acc.Tags()["scalars"])


def test_tensorboard_histograms_hparams_and_events(run, tmp_path):
    root, run_dir = run
    out = tmp_path / "tb"
    res = run_cli(
        "export", run_dir.name, "--tensorboard", out, "--runs-dir", root / "runs", cwd=root
    )
    assert res.returncode == 0, res.stderr
    acc = load(out)
    with RunReader(run_dir) as r:
        hists = list(r.histogram_rows())
        events = r.events(limit=10_000)
    assert hists, "the run recorded no histograms"
    step, name, kind, lo, hi, counts = hists[0]
    tb = acc.Histograms(f"{kind}/{name}")
    assert tb[0].step == step
    h = tb[0].histogram_value
    assert (h.min, h.max, h.num) == (pytest.approx(lo), pytest.approx(hi), sum(counts))
    assert list(h.bucket) == counts
    # hparams: the plugin's session start carries the recipe's hparams and the optimizer
    content = acc.PluginTagToContent("hparams")
    assert content, "no hparams written"
    from tensorboard.plugins.hparams import plugin_data_pb2

    starts = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()]
    info = next(s.session_start_info for s in starts if s.HasField("session_start_info"))
    assert info.hparams["width"].number_value == 4
    assert info.hparams["optimizer/main"].string_value == "SGD"
    # every event as text, tagged by kind
    texts = acc.Tags()["tensors"]
    kinds = {e["kind"] for e in events}
    assert {f"events/{k}" for k in kinds} <= set(texts)


def test_json_export_is_strict_json_with_every_series(run, tmp_path):
    root, run_dir = run
    res = run_cli("export", run_dir.name, "--json", "-", "--runs-dir", root / "runs", cwd=root)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    table = scalar_table(run_dir)
    assert [s for s, _v in doc["scalars"]["train"]["loss"]] == [
        s for s, _e, _v in table[("loss", "train")]
    ]
    assert doc["status"] == "finished" and doc["run"] == run_dir.name
    assert doc["meta"]["hparams"] == {"width": 4}
    assert doc["events"] and all("kind" in e for e in doc["events"])


def test_export_errors_are_one_line(run, tmp_path):
    root, run_dir = run
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = run_cli(
        "export",
        run_dir.name,
        "--tensorboard",
        blocker / "tb",
        "--runs-dir",
        root / "runs",
        cwd=root,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "can't write" in res.stderr
    res = run_cli("export", run_dir.name, "--runs-dir", root / "runs", cwd=root)
    assert res.returncode == 2 and "one of the arguments --csv --json --tensorboard" in res.stderr
    # without the tensorboard package: say what to install, keep going for CSV
    code = (
        "import sys; sys.modules['tensorboard'] = None\n"
        "from dltui.tui.cli import main\n"
        "sys.exit(main())"
    )
    argv = [
        "export",
        run_dir.name,
        "--tensorboard",
        str(tmp_path / "tb2"),
        "--runs-dir",
        str(root / "runs"),
    ]
    res = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=root, env=CHILD_ENV, capture_output=True, text=True
    )
    assert res.returncode == 2 and "pip install tensorboard" in res.stderr, res.stderr
    assert not (tmp_path / "tb2").exists()
