"""`dltui inspect CKPT|RUN [NAME [EXPR]]` and the checkpoint server behind finished-run tensors:
real checkpoints (a trained run's and a plain state_dict), compared with torch itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from conftest import CHILD_ENV, linear_recipe, only_run, run_cli
from torch import nn

from dltui.run.client import ControlClient, ControlError, socket_path

EXPR = "x.t()[1:3, ::2]"
WIDE = (
    "model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 1))\n"
    "optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)\n"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    recipe = root / "wide.py"
    recipe.write_text(linear_recipe(extra=WIDE))
    res = run_cli(
        "train", "--headless", "--runs-dir", root / "runs", "--max-steps", 5, recipe, cwd=root
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return root, only_run(root / "runs")


def test_a_runs_last_checkpoint_answers_a_view_like_torch(trained):
    root, run_dir = trained
    res = run_cli(
        "inspect", run_dir.name, "0.weight", EXPR, "--json", "--runs-dir", root / "runs", cwd=root
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    # dltui's checkpoints load with torch.load's defaults (weights_only): no numpy arrays inside
    w = torch.load(run_dir / "checkpoints" / "last.pt")["model"]["0.weight"]
    view = w.t()[1:3, ::2]
    assert got["shape"] == list(view.shape) and got["stride"] == list(view.stride())
    assert got["storage_offset"] == view.storage_offset()
    assert [v["value"] for v in got["values"]] == pytest.approx(view.flatten().tolist())
    assert got["step"] == 5


def test_listing_and_text_output(trained):
    root, run_dir = trained
    res = run_cli("inspect", run_dir.name, "--runs-dir", root / "runs", cwd=root)
    assert res.returncode == 0, res.stderr
    names = [ln.split()[0] for ln in res.stdout.splitlines()]
    assert {"0.weight", "0.bias", "1.weight", "1.bias"} <= set(names)
    assert "optimizer.0.momentum_buffer" in names  # SGD's momentum, by parameter index
    res = run_cli("inspect", run_dir.name, "0.weight", EXPR, "--runs-dir", root / "runs", cwd=root)
    assert res.returncode == 0 and "stride: [1, 8]" in res.stdout, res.stdout


def test_a_plain_state_dict_file(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7))
    path = tmp_path / "weights.pt"
    torch.save(m.state_dict(), path)
    res = run_cli("inspect", path, "0.weight", "x[2:5, 1::2]", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    view = m.state_dict()["0.weight"][2:5, 1::2]
    assert (got["stride"], got["storage_offset"]) == (list(view.stride()), view.storage_offset())
    assert got["step"] is None
    res = run_cli("inspect", path, "--json", cwd=tmp_path)
    names = {t["name"] for t in json.loads(res.stdout)}
    assert {"0.weight", "1.running_mean", "1.num_batches_tracked"} <= names


class Unsafe:  # a pickled class: weights_only refuses it
    pass


def test_bad_input_is_one_line(trained, tmp_path):
    root, run_dir = trained
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    res = run_cli("inspect", junk, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not a readable" in res.stderr
    pickled = tmp_path / "obj.pt"
    torch.save({"w": torch.ones(2), "obj": Unsafe()}, pickled)
    res = run_cli("inspect", pickled, cwd=tmp_path)
    assert res.returncode == 2 and "--trust" in res.stderr, res.stderr
    res = run_cli(
        "inspect", run_dir.name, "--checkpoint", "best", "--runs-dir", root / "runs", cwd=root
    )
    assert res.returncode == 2 and "no checkpoint best.pt" in res.stderr and "last.pt" in res.stderr
    res = run_cli(
        "inspect", run_dir.name, "0.weight", "x.nosuch()", "--runs-dir", root / "runs", cwd=root
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    res = run_cli("inspect", run_dir.name, "0.wieght", "--runs-dir", root / "runs", cwd=root)
    assert res.returncode == 2 and "Did you mean 0.weight" in res.stderr


def test_the_checkpoint_server_speaks_the_control_protocol(trained, tmp_path):
    """What the Tensors tab of a finished run talks to: read-only, same answers as the CLI."""
    _root, run_dir = trained
    serve = tmp_path / "serve"
    serve.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dltui.engine.offline",
            run_dir / "checkpoints" / "last.pt",
            "--serve",
            serve,
        ],
        env=CHILD_ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        c = ControlClient(serve)
        names = {t["name"] for t in c.request("tensors").data}
        assert "0.weight" in names
        reply = c.request("tensor", name="0.weight", expr=EXPR)
        assert reply.data["stride"] == [1, 8] and reply.state["status"] == "checkpoint"
        with pytest.raises(ControlError, match="saved checkpoint, not a live run"):
            c.call("pause")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while socket_path(serve).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not socket_path(serve).exists(), "the server left its socket behind"
