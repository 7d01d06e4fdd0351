"""The run's device: --device over the recipe's `device` over where the recipe put its model."""

from __future__ import annotations

import pytest
import torch

from dltui.engine.devices import run_device


def test_flag_over_recipe_over_model_placement():
    model = torch.nn.Linear(2, 2)
    assert run_device("cpu", "cuda:3", model) == torch.device("cpu")  # --device wins
    assert run_device(None, "cpu", model) == torch.device("cpu")
    fallback = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if not torch.cuda.is_available():
        assert run_device(None, None, model) == fallback
    # a model on the meta device (not yet materialised) is not a device choice
    assert run_device(None, None, torch.nn.Linear(2, 2, device="meta")).type != "meta"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_a_cuda_request_fails_clearly():
    with pytest.raises(RuntimeError, match="no usable CUDA"):
        run_device("cuda:1", None, torch.nn.Linear(2, 2))
