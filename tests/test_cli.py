"""End to end through the real `dltui` CLI: every example headless, the headless default, runs
listing, CSV export, console capture, and run ids of runs started together."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from conftest import (
    EXAMPLES,
    linear_recipe,
    only_run,
    run_cli,
    run_dirs,
    scalar_table,
    start_cli,
    steps_of,
)

from dltui.run.reader import RunReader

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.py"))
MAX_STEPS = 10  # as many as the assertions need: each example's steps are its cost here


class Batch:
    """Every example (and the no-flag default run) started at once: each engine spends seconds
    importing torch and torchmetrics, and they can do that side by side."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = root / "runs"
        # --log-every 0: a status line after every step, so even a few fast steps print some.
        flags = ("--headless", "--max-steps", MAX_STEPS, "--log-every", 0, "--runs-dir", self.runs)
        self.examples = {
            path.stem: start_cli("train", *flags, path, cwd=root, tag=path.stem)
            for path in EXAMPLE_FILES
        }
        # No --headless: stdout is a file, not a terminal, so headless must be the default.
        self.default_runs = root / "default-runs"
        self.default = start_cli(
            "train",
            "--max-steps",
            10,
            "--runs-dir",
            self.default_runs,
            EXAMPLES / "regression.py",
            cwd=root,
            tag="default",
        )

    def all(self) -> list:
        return [*self.examples.values(), self.default]

    def run_dir(self, stem: str) -> Path:
        self.examples[stem].wait()
        (d,) = [d for d in run_dirs(self.runs) if d.name.endswith("-" + stem)]
        return d

    def wait_all(self) -> None:
        for p in self.all():
            p.wait()


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Batch:
    b = Batch(tmp_path_factory.mktemp("cli"))
    yield b
    for p in b.all():
        p.kill()


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
def test_example_runs_headless(batch, example):
    res = batch.examples[example.stem].wait()
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = batch.run_dir(example.stem)
    lines = res.stdout.splitlines()
    assert re.fullmatch(
        rf"\[dltui\] run {run_dir.name}: .*{example.name} on \w+, \d+ epochs, {MAX_STEPS} steps",
        lines[0],
    ), lines[0]
    status_lines = [
        ln
        for ln in lines
        if re.match(rf"\[dltui\] epoch \d+/\d+  step \d+/{MAX_STEPS}  loss \S+", ln)
    ]
    assert status_lines and f"step {MAX_STEPS}/{MAX_STEPS}" in status_lines[-1]
    assert "samples/s" in status_lines[-1] and "ETA" in status_lines[-1]
    assert f"[dltui] finished: {MAX_STEPS} steps" in res.stdout
    assert "[dltui]   last train loss " in res.stdout
    assert f"[dltui]   run store: {run_dir / 'run.sqlite'}" in res.stdout

    table = scalar_table(run_dir)
    assert steps_of(table, "loss") == list(range(1, MAX_STEPS + 1))
    val_steps = steps_of(table, "loss", "val")
    assert not val_steps or val_steps[-1] == MAX_STEPS  # stopped by --max-steps: validated there
    with RunReader(run_dir) as r:
        assert r.status() == "finished"
        meta = r.meta()
        assert meta["script"] == str(example.resolve())
        assert meta["progress"]["step"] == MAX_STEPS
        assert r.params() and r.layer_stats_latest()[0] is not None


def test_headless_is_the_default_when_stdout_is_not_a_terminal(batch):
    res = batch.default.wait()
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("[dltui] run ")
    assert "[dltui] finished: 10 steps" in res.stdout
    run_dir = only_run(batch.default_runs)
    with RunReader(run_dir) as r:
        assert r.status() == "finished"
        assert r.meta()["headless"] is True


def test_runs_lists_status_steps_and_best_metric(batch):
    batch.wait_all()
    res = run_cli("runs", "--runs-dir", batch.runs, cwd=batch.root)
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    assert header.split() == ["RUN", "STATUS", "STEPS", "BEST"]
    assert len(rows) == len(EXAMPLE_FILES)
    for row in rows:
        run_id, status, steps, *best = row.split()
        assert status == "finished" and steps == f"{MAX_STEPS}/{MAX_STEPS}"
        with RunReader(batch.runs / run_id) as r:
            val_loss = r.meta()["best"]["val_loss"]
        assert best[:2] == ["val_loss", f"{val_loss:.4g}"], row

    # The global option works before the subcommand too.
    listed = json.loads(run_cli("--runs-dir", batch.runs, "runs", "--json", cwd=batch.root).stdout)
    assert sorted(r["id"] for r in listed) == sorted(d.name for d in run_dirs(batch.runs))
    for r in listed:
        assert r["status"] == "finished"
        assert (r["step"], r["total_steps"]) == (MAX_STEPS, MAX_STEPS)
        assert r["best"]["step"] == MAX_STEPS and "val_loss" in r["best"]
        assert Path(r["script"]).parent == EXAMPLES.resolve()


def test_runs_on_an_empty_folder(tmp_path):
    res = run_cli("runs", "--runs-dir", tmp_path / "none", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("no runs in")
    assert (
        json.loads(run_cli("runs", "--json", "--runs-dir", tmp_path / "none", cwd=tmp_path).stdout)
        == []
    )


def test_status_json(batch):
    run_dir = batch.run_dir("cnn")
    res = run_cli("status", run_dir.name[:-1], "--json", "--runs-dir", batch.runs, cwd=batch.root)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["id"] == run_dir.name and out["status"] == "finished"
    assert out["progress"]["step"] == MAX_STEPS
    assert out["last_events"][-1]["kind"] == "status"
    missing = run_cli("status", "no-such-run", "--runs-dir", batch.runs, cwd=batch.root)
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr


def test_export_csv_matches_the_store(batch):
    """Wide CSV: one row per (step, phase), a column per scalar, every stored value in its cell."""
    run_dir = batch.run_dir("regression")
    out = batch.root / "regression.csv"
    res = run_cli("export", run_dir.name, "--csv", out, "--runs-dir", batch.runs, cwd=batch.root)
    assert res.returncode == 0, res.stderr
    with open(out, newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header[:4] == ["step", "epoch", "phase", "wall"]
    assert header[4] == "loss" and set(header[4:]) >= {
        "loss",
        "mae",
        "lr/0",
        "step_time",
        "samples_per_s",
    }
    with RunReader(run_dir) as r:
        stored = r.db.execute(
            "SELECT s.step, s.epoch, r.phase, r.name, s.value FROM scalars s"
            " JOIN series r ON r.id = s.series ORDER BY s.step, s.rowid"
        ).fetchall()
    keys = {(step, phase) for step, _, phase, _, _ in stored}
    assert f"wrote {len(keys)} rows" in res.stderr and len(rows) == len(keys)
    cells = {
        (int(row[0]), row[2], name): row[4 + i] for row in rows for i, name in enumerate(header[4:])
    }
    for step, _, phase, name, value in stored:
        got = cells[(step, phase, name)]
        assert (got == "" and value is None) or float(got) == value, (step, phase, name)
    train_steps = [int(row[0]) for row in rows if row[2] == "train"]
    assert train_steps == sorted(set(train_steps)), "one train row per optimizer step"
    assert all(row[4 + header[4:].index("loss")] != "" for row in rows if row[2] == "train")

    to_stdout = run_cli(
        "export", run_dir.name, "--csv", "-", "--runs-dir", batch.runs, cwd=batch.root
    )
    assert list(csv.reader(io.StringIO(to_stdout.stdout)))[1:] == rows


PRINTS = linear_recipe(
    n=100,
    batch=20,
    epochs=1,
    extra="""
import sys

print("loading data from memory")  # at import time
calls = 0


def train_step(model, batch):
    global calls
    calls += 1
    if calls == 3:
        print(f"checkpoint of my own at batch {calls}")
        print("a warning of my own", file=sys.stderr)
    x, y = batch
    out = model(x)
    return loss_fn(out, y), out, y
""",
)


class Twin:
    def __init__(self, res, run_dir: Path | None) -> None:
        self.res, self.run_dir = res, run_dir

    def console(self) -> list[tuple[str, str]]:
        with RunReader(self.run_dir) as r:
            return [(stream, line) for _, _, stream, line in r.console()]


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> list[Twin]:
    """Two runs of one printing script started together into one runs folder, as a sweep would:
    the run-id test needs both; the console tests read whichever one worked."""
    root = tmp_path_factory.mktemp("twins")
    recipe = root / "prints.py"
    recipe.write_text(PRINTS)
    procs = [
        start_cli(
            "train",
            "--headless",
            "--seed",
            seed,
            "--runs-dir",
            root / "runs",
            recipe,
            cwd=root,
            tag=f"seed{seed}",
        )
        for seed in (1, 2)
    ]
    results = [p.wait() for p in procs]
    by_pid = {}
    for d in run_dirs(root / "runs"):
        with RunReader(d) as r:
            by_pid[r.meta().get("pid")] = d
    return [Twin(res, by_pid.get(p.pid)) for p, res in zip(procs, results, strict=True)]


@pytest.fixture(scope="module")
def printed(twins) -> Twin:
    ok = [t for t in twins if t.res.returncode == 0 and t.run_dir is not None]
    assert ok, twins[0].res.stderr
    return ok[0]


def test_print_lines_are_shown_and_recorded(printed):
    assert "checkpoint of my own at batch 3" in printed.res.stdout.splitlines()
    assert "a warning of my own" in printed.res.stderr.splitlines()
    console = printed.console()
    assert ("stdout", "checkpoint of my own at batch 3") in console
    assert ("stderr", "a warning of my own") in console
    assert not any(line.startswith("[dltui]") for _, line in console)  # only the script's own


def test_print_at_import_time_is_recorded_too(printed):
    assert "loading data from memory" in printed.res.stdout.splitlines()
    assert ("stdout", "loading data from memory") in printed.console()


def test_runs_started_together_get_their_own_run_directories(twins):
    """Two `dltui train` of one script in the same second must not share (or fight over) a run."""
    for t in twins:
        assert t.res.returncode == 0, t.res.stderr[-2000:]
    dirs = [t.run_dir for t in twins]
    assert None not in dirs and dirs[0] != dirs[1], dirs
    for d in dirs:
        assert steps_of(scalar_table(d), "loss") == list(range(1, 6))
