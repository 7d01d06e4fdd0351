"""A wrong recipe gets one clear message (file, name, problem), exit status 2, no engine traceback,
and nothing recorded. The end-to-end cases go through the real `dltui train --headless`; the
finer type checks call load_recipe in this process (the message is the same RecipeError)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from conftest import assert_no_internal_frames, linear_recipe, start_cli, user_frames

from dltui.engine.recipe import RecipeError, load_recipe

# -- the real CLI ----------------------------------------------------------------------------

SYNTAX_ERROR = """\
import torch
from torch import nn

model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters() lr=0.1)
loss_fn = nn.MSELoss()
"""

IMPORT_ERROR = """\
import torch
import nonexistent_pkg_for_dltui_tests
from torch import nn
"""

RAISES_AT_IMPORT = """\
import torch


def load_table(name):
    raise FileNotFoundError(f"no such table: {name}")


data = load_table("train.csv")
"""

RECIPE_FUNCTION_RAISES = """\
import torch


def recipe():
    raise ValueError("the dataset is not there")
"""

# A user who forgot two of the four names (and builds no optimizer: the first one costs torch
# another ~1.5 s of imports, which these error cases can do without).
MISSING_TWO = """\
import torch
from torch import nn

model = nn.Linear(4, 1)
train_loader = [(torch.zeros(8, 4), torch.zeros(8, 1))]
"""

# name -> (recipe source or None for a missing file, extra CLI arguments). Each costs an engine
# start (1.5-3 s of CPU importing torch); the other type checks run in process further down.
CLI_CASES: dict[str, tuple[str | None, list[str]]] = {
    "not_found": (None, []),
    "syntax": (SYNTAX_ERROR, []),
    # Without a recipe's names these files would be scripts (run, failed, traceback shown):
    # --recipe asks for the recipe loader's verdict.
    "import_error": (IMPORT_ERROR, ["--recipe"]),
    "raises_at_import": (RAISES_AT_IMPORT, ["--recipe"]),
    "missing_several": (MISSING_TWO, []),
    "model_is_class": (linear_recipe(extra="model = nn.Linear\n"), []),
    "recipe_raises": (RECIPE_FUNCTION_RAISES, []),
    "device_cuda": (linear_recipe(), ["--device", "cuda"]),
}


class Case:
    def __init__(self, recipe: Path, runs_dir: Path, started) -> None:
        self.recipe = recipe
        self.runs_dir = runs_dir
        self.started = started

    def result(self) -> subprocess.CompletedProcess:
        return self.started.wait()


@pytest.fixture(scope="module")
def cli_cases(tmp_path_factory) -> dict[str, Case]:
    """Every CLI case started at once (each engine spends ~1.5 s importing torch), read lazily."""
    root = tmp_path_factory.mktemp("recipe_errors")
    cases = {}
    for name, (source, extra_args) in CLI_CASES.items():
        folder = root / name
        folder.mkdir()
        recipe = folder / f"{name}.py"
        if source is not None:
            recipe.write_text(source)
        runs_dir = folder / "runs"
        started = start_cli(
            "train",
            "--headless",
            *extra_args,
            "--runs-dir",
            runs_dir,
            recipe,
            cwd=folder,
            tag=name,
        )
        cases[name] = Case(recipe, runs_dir, started)
    yield cases
    for case in cases.values():
        case.started.kill()


def check_usage_error(case: Case, *needles: str, user_traceback: bool = False) -> str:
    """Exit 2, one `dltui:` message on stderr naming the file and each needle, nothing recorded."""
    res = case.result()
    err = res.stderr
    assert res.returncode == 2, f"exit {res.returncode}\n{err}"
    assert err.startswith(f"dltui: {case.recipe}"), err
    assert err.count("dltui:") == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    if user_traceback:
        frames = user_frames(err)
        assert frames, err
        assert all(f == str(case.recipe.resolve()) for f in frames), (
            f"frames not from the recipe: {frames}"
        )
        assert_no_internal_frames(err)
    else:
        assert "Traceback" not in err, err
    assert res.stdout == "", res.stdout
    assert not case.runs_dir.exists() or not any(case.runs_dir.iterdir()), (
        f"something was recorded: {list(case.runs_dir.rglob('*'))}"
    )
    return err


def test_file_not_found(cli_cases):
    check_usage_error(cli_cases["not_found"], "file not found")


def test_syntax_error_shows_the_line_and_its_number(cli_cases):
    case = cli_cases["syntax"]
    err = check_usage_error(case, "line 5", "syntax error")
    assert "optimizer = torch.optim.SGD(model.parameters() lr=0.1)" in err
    assert "^" in err  # points at the place


def test_import_error_in_user_code_shows_the_users_line(cli_cases):
    case = cli_cases["import_error"]
    err = check_usage_error(
        case,
        "ModuleNotFoundError",
        "nonexistent_pkg_for_dltui_tests",
        "line 2",
        user_traceback=True,
    )
    assert "import nonexistent_pkg_for_dltui_tests" in err


def test_exception_at_import_shows_the_users_traceback(cli_cases):
    err = check_usage_error(
        cli_cases["raises_at_import"],
        "FileNotFoundError: no such table: train.csv",
        user_traceback=True,
    )
    # Both user frames, outermost first: the module line, then the function that raised.
    assert err.index("line 8") < err.index("line 5"), err


def test_several_missing_names_are_all_named(cli_cases):
    err = check_usage_error(cli_cases["missing_several"], "`optimizer`", "`loss_fn`")
    assert "`model`" not in err and "`train_loader`" not in err


def test_model_class_not_instantiated(cli_cases):
    check_usage_error(cli_cases["model_is_class"], "`model`", "class Linear", "nn.Module")


def test_recipe_function_raising(cli_cases):
    check_usage_error(
        cli_cases["recipe_raises"],
        "recipe()",
        "ValueError: the dataset is not there",
        user_traceback=True,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(cli_cases):
    case = cli_cases["device_cuda"]
    res = case.result()
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("dltui: --device is 'cuda'"), res.stderr
    assert "CUDA is not available" in res.stderr
    assert "Traceback" not in res.stderr
    assert not case.runs_dir.exists() or not any(case.runs_dir.iterdir())


# -- finer checks, in process: load_recipe raises one RecipeError --------------------------


def recipe_error(write_recipe, source: str) -> tuple[Path, str]:
    path = write_recipe(source)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg  # the file first
    return path, msg


@pytest.mark.parametrize("name", ["model", "optimizer", "loss_fn", "train_loader"])
def test_each_required_name_missing(write_recipe, name):
    # `optimizer` is built from `model` before the del, so only `name` is missing.
    _, msg = recipe_error(write_recipe, linear_recipe(extra=f"del {name}\n"))
    assert f"defines no `{name}`." in msg
    others = {"model", "optimizer", "loss_fn", "train_loader"} - {name}
    assert not any(f"`{o}`" in msg for o in others), msg


BAD_VALUES = {
    # id: (line appended to a good recipe, words the message must contain)
    "model_function": (
        "def model(x):\n    return x\n",
        ["`model`", "function (model)", "nn.Module"],
    ),
    "model_class": ("model = nn.Linear\n", ["`model`", "class Linear", "model = Linear()"]),
    "model_tensor": ("model = torch.zeros(3)\n", ["`model`", "Tensor", "nn.Module"]),
    "loss_float": ("loss_fn = 0.5\n", ["`loss_fn`", "float", "not callable"]),
    "loss_class": ("loss_fn = nn.MSELoss\n", ["`loss_fn`", "class MSELoss", "loss_fn = MSELoss()"]),
    "optimizer_class": (
        "optimizer = torch.optim.SGD\n",
        ["`optimizer`", "class SGD", "torch.optim.Optimizer"],
    ),
    "optimizer_dict": (
        'optimizer = {"lr": 0.1}\n',
        ["`optimizer`", "dict", "torch.optim.Optimizer"],
    ),
    "optimizer_other_model": (
        "optimizer = torch.optim.SGD(nn.Linear(4, 1).parameters(), lr=0.1)\n",
        ["`optimizer`", "not over the model's parameters", "model.parameters()"],
    ),
    "optimizer_partly_foreign": (
        "optimizer = torch.optim.SGD([*model.parameters(), *nn.Linear(2, 2).parameters()], lr=0.1)\n",
        ["`optimizer`", "2 tensors that are not parameters of `model`"],
    ),
    "loader_int": ("train_loader = 5\n", ["`train_loader`", "int", "can't be iterated"]),
    "loader_generator": (
        "train_loader = ((a, b) for a, b in zip(x, y))\n",
        ["`train_loader`", "one-shot", "DataLoader"],
    ),
    "loader_empty": (
        "train_loader = DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4)\n",
        ["`train_loader`", "no batches"],
    ),
    "loader_dicts": (
        "train_loader = [{'image': x[:4], 'label': y[:4]}]\n",
        ["`train_loader`", "dicts", "'image'", "'label'", "train_step"],
    ),
    "loader_triples": (
        "train_loader = [(x[:4], y[:4], y[:4])]\n",
        ["`train_loader`", "tuple of 3 items", "(input, target)"],
    ),
    "loader_lists": (
        "train_loader = [([1.0, 2.0], [3.0])]\n",
        ["`train_loader`", "input is a list, not a tensor"],
    ),
    "loader_target_not_tensor": (
        "train_loader = [(x[:4], 'cat')]\n",
        ["`train_loader`", "target is a str, not a tensor"],
    ),
    "val_loader_dicts": (
        "val_loader = [{'x': x[:4]}]\n",
        ["`val_loader`", "dicts"],
    ),
    "loader_first_batch_fails": (
        "class Broken(torch.utils.data.Dataset):\n"
        "    def __len__(self):\n        return 10\n"
        "    def __getitem__(self, i):\n        raise KeyError(f'row {i} is missing')\n"
        "train_loader = DataLoader(Broken(), batch_size=2)\n",
        ["`train_loader`", "first batch", "KeyError", "row 0 is missing"],
    ),
    "epochs_zero": ("epochs = 0\n", ["`epochs`", "is 0", "1 or more"]),
    "epochs_text": ('epochs = "ten"\n', ["`epochs`", "'ten'", "whole number"]),
    "epochs_float": ("epochs = 2.5\n", ["`epochs`", "2.5"]),
    "epochs_bool": ("epochs = True\n", ["`epochs`", "True"]),
    "scheduler_interval_batch": (
        "scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)\nscheduler_interval = 'batch'\n",
        ["`scheduler_interval`", "'batch'", '"epoch" or "step"'],
    ),
    "scheduler_not_a_scheduler": ("scheduler = 0.1\n", ["`scheduler`", "float", "no .step()"]),
    "metrics_string": ("metrics = 'accuracy'\n", ["`metrics`", "str", "torchmetrics Metric"]),
    "metrics_list": (
        "from torchmetrics.regression import MeanAbsoluteError\nmetrics = [MeanAbsoluteError()]\n",
        ["`metrics`", "list", "dict of name -> Metric"],
    ),
    "metrics_dict_of_functions": (
        "metrics = {'mae': lambda p, t: (p - t).abs().mean()}\n",
        ["`metrics`", "dict"],
    ),
    "train_step_not_callable": ("train_step = 3\n", ["`train_step`", "int", "must be a function"]),
    "hparams_list": ("hparams = [0.1, 32]\n", ["`hparams`", "list", "dict"]),
    "device_nonsense": ("device = 'tpu9'\n", ["`device`", "'tpu9'", "not a device"]),
    "recipe_returns_list": (
        "def recipe():\n    return [model, optimizer, loss_fn, train_loader]\n",
        ["recipe() returned a list", "must return a dict"],
    ),
    "recipe_returns_none": ("def recipe():\n    pass\n", ["recipe() returned a NoneType", "dict"]),
    "recipe_dict_missing_loader": (
        "def recipe():\n    return {'model': model, 'optimizer': optimizer, 'loss_fn': loss_fn}\n",
        ["defines no `train_loader`"],
    ),
}


@pytest.mark.parametrize("extra, needles", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_bad_value_names_the_name_and_the_problem(write_recipe, extra, needles):
    _, msg = recipe_error(write_recipe, linear_recipe(extra=extra))
    for needle in needles:
        assert needle in msg, f"{needle!r} not in: {msg}"
    assert "Traceback" not in msg or "first batch" in msg
    assert_no_internal_frames(msg)


def test_recipe_function_raising_shows_only_user_frames(write_recipe):
    path, msg = recipe_error(write_recipe, RECIPE_FUNCTION_RAISES)
    assert "recipe() raised an error" in msg
    assert user_frames(msg) == [str(path.resolve())]
    assert msg.rstrip().endswith("ValueError: the dataset is not there")


def test_exit_at_import(write_recipe):
    _, msg = recipe_error(write_recipe, "import sys\nsys.exit(3)\n")
    assert "exit(3)" in msg


def test_not_a_python_file(tmp_path):
    path = tmp_path / "recipe.txt"
    path.write_text("model = 1\n")
    with pytest.raises(RecipeError, match="not a Python file"):
        load_recipe(path)


def test_good_recipe_loads(write_recipe):
    # The baseline every bad case above is one line away from.
    r = load_recipe(write_recipe(linear_recipe(epochs=3)))
    assert isinstance(r.model, torch.nn.Linear)
    assert r.epochs == 3 and r.scheduler_interval == "epoch"
