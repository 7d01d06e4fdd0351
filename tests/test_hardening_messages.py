"""Issue 13, items 4, 9 and 11 in process: what a user types gets a short, named answer — a
non-scalar loss_fn, a loader of ints, counts of 5,000 digits, JSON nested too deeply, and a
tensor expression that would make millions of pieces."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import linear_recipe, run_cli, train_in_process

from dltui.engine.inspect_tensor import MAX_PIECES, InspectError, inspect
from dltui.engine.recipe import RecipeError, load_recipe
from dltui.run import wire

HUGE = "1" * 5000


def test_a_non_scalar_loss_fn_is_named_not_an_autograd_traceback(tmp_path, write_recipe):
    path = write_recipe(linear_recipe(n=40, extra="loss_fn = nn.MSELoss(reduction='none')\n"))
    t = train_in_process(path, tmp_path / "run")
    assert t.status == "failed"
    msg = str(t.error)
    assert "`loss_fn` returned a tensor of shape [20, 1]" in msg and "reduction" in msg, msg
    assert "implicitly created" not in msg


def test_a_bare_tensor_from_train_step_is_its_loss(tmp_path, write_recipe):
    step = "def train_step(model, batch):\n    x, y = batch\n    return loss_fn(model(x), y)\n"
    t = train_in_process(write_recipe(linear_recipe(n=40, extra=step)), tmp_path / "run")
    assert t.status == "finished", t.error


def test_a_loader_of_ints_reads_as_english(write_recipe):
    path = write_recipe(linear_recipe(extra="train_loader = [1, 2, 3]\n"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "`train_loader` yields an int;" in str(info.value)
    assert "a an" not in str(info.value)


@pytest.mark.parametrize("flag", ["--max-steps", "--epochs", "--seed"])
def test_a_5000_digit_count_is_one_short_line(tmp_path, flag):
    res = run_cli("train", flag, HUGE, "x.py", cwd=tmp_path, timeout=60)
    assert res.returncode == 2
    assert "5,000-digit number is too large" in res.stderr, res.stderr[:300]
    assert "set_int_max_str_digits" not in res.stderr and HUGE not in res.stderr


def test_ctl_step_of_5000_digits_is_refused_before_any_run_is_looked_up(tmp_path):
    res = run_cli("ctl", "step", HUGE, cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "too large" in res.stderr, res.stderr[:300]
    assert "set_int_max_str_digits" not in res.stderr


@pytest.mark.parametrize(
    "line,why",
    [
        (b"[" * 60000, "nested too deeply"),
        (b'{"cmd": "step", "args": {"n": ' + HUGE.encode() + b"}}", "a number too long"),
    ],
)
def test_requests_that_break_json_get_a_malformed_request_error(line, why):
    with pytest.raises(ValueError, match=why):
        wire.Request.decode(line)


@pytest.mark.parametrize(
    "expr,pieces",
    [
        ("x.unsqueeze(0).expand(3000000,-1,-1).split(1)[0]", 3_000_000),
        ("x.view(-1).split(1)[0]", 1_000_000),
        ("x.chunk(100000, 1)[3]", 1000),  # chunk makes at most one piece per element
    ],
)
def test_an_expression_making_too_many_pieces_is_refused_at_once(expr, pieces):
    x = torch.randn(1000, 1000)
    t0 = time.perf_counter()
    if pieces > MAX_PIECES:
        with pytest.raises(InspectError, match=f"{pieces:,} pieces"):
            inspect(x, "w", expr)
    else:
        assert inspect(x, "w", expr)["shape"] == [1000, 1]
    assert time.perf_counter() - t0 < 1.0
