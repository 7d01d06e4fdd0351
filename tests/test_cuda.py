"""CUDA paths: no host sync per step, CUDA memory in the sampler. Skipped without a GPU."""

import pytest
import torch

from dltui.engine.gate import Gate
from dltui.engine.loop import Callback, Loop, Settings
from dltui.engine.probe import Probe
from dltui.engine.recipe import Recipe
from dltui.engine.store import RunStore
from dltui.run.reader import RunReader

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


class SyncGuard(Callback):
    """Turns any host-device synchronisation into an error between run start and run end."""

    def on_run_start(self, loop):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")

    def on_run_end(self, loop, status, error):
        torch.cuda.set_sync_debug_mode("default")


def test_no_host_sync_per_step(tmp_path):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    ).to(dev)
    batches = [
        (torch.randn(16, 32, device=dev), torch.randint(0, 10, (16,), device=dev))
        for _ in range(20)
    ]
    recipe = Recipe(
        path=tmp_path / "r.py",
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=torch.nn.CrossEntropyLoss(),
        train_loader=batches,
        epochs=5,
    )
    store = RunStore(tmp_path / "run" / "run.sqlite")
    store.start()
    # Stats, histograms and the train metric read the host at their intervals: keep them out of
    # this window so every step here is an ordinary one.
    probe = Probe(store, stats_every=10_000, hist_every=10_000, metric_every=10_000)
    loop = Loop(recipe, Settings(device="cuda"), [SyncGuard(), probe], Gate())
    status, error = loop.run()
    store.close(status)
    assert error is None, error
    assert loop.step == 100
    with RunReader(tmp_path / "run") as r:
        s = r.series("loss", buckets=1000)
        assert s.steps[-1] == 100 and sum(s.counts) == 100  # every step's loss arrived, later


def test_sampler_reads_cuda_memory():
    from dltui.engine.sampler import Sampler

    torch.ones(1024, device="cuda")
    got = {}
    s = Sampler(lambda wall, values: got.update(values), lambda msg: None)
    s.sample_once()
    assert got["cuda0.allocated"] > 0 and got["cuda0.reserved"] >= got["cuda0.allocated"]


def test_cuda_device_gets_its_index_and_becomes_current():
    from dltui.engine.devices import run_device

    model = torch.nn.Linear(2, 2)
    last = torch.cuda.device_count() - 1
    assert run_device("cuda", None, model) == torch.device("cuda", torch.cuda.current_device())
    assert run_device(f"cuda:{last}", None, model) == torch.device("cuda", last)
    assert torch.cuda.current_device() == last
    on_gpu = torch.nn.Linear(2, 2).to(f"cuda:{last}")  # the recipe placed its model itself
    assert run_device(None, None, on_gpu) == torch.device("cuda", last)
    torch.cuda.set_device(0)


def test_layer_stats_extra_memory_is_bounded():
    """The probe's extra device memory: at most 1% of parameter bytes + 64 MiB, at any moment."""
    from dltui.engine.stats import LayerStats

    model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(4)]).cuda()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ls = LayerStats(model)
    ls.before_step()
    ls.after_step()
    ls.histograms()  # warm: the allocator's first blocks
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ls.before_step()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-1e-3)
    rows = torch.tensor(ls.read(ls.after_step()))
    ls.histograms()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= 0.01 * param_bytes + 64 * 2**20, (extra, param_bytes)
    assert torch.isfinite(rows[:, -1]).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_deferred_reads_on_a_second_gpu_are_ordered():
    from dltui.engine.probe import Deferred

    torch.cuda.set_device(0)
    dev = torch.device("cuda:1")
    d = Deferred(dev)
    x = torch.full((1 << 24,), 2.0, device=dev)
    got = d.push([x.sum()], "t")
    got += d.ready(wait=True)
    assert got == [("t", [float(1 << 25)])]


def test_histograms_in_deterministic_mode():
    """histc has no deterministic CUDA kernel: a script that asks for determinism still gets
    its histograms (binned on the CPU), not a failed run."""
    from dltui.engine.stats import LayerStats

    model = torch.nn.Linear(64, 64).cuda()
    model.weight.grad = torch.randn_like(model.weight)
    torch.use_deterministic_algorithms(True)
    try:
        hists = LayerStats(model).histograms()
    finally:
        torch.use_deterministic_algorithms(False)
    assert [(n, k) for n, k, *_ in hists] == [
        ("weight", "weight"),
        ("weight", "grad"),
        ("bias", "weight"),
    ]
