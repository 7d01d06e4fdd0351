"""A recipe under torchrun (engine/distributed.py runs the ranks): the process group, a
DistributedSampler for each loader, DistributedDataParallel for the forward, resume on every rank.

A script does all of this itself; the engine never inits the process group for one.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .distributed import World


def init_group(world: World, device: str | None, timeout_s: float | None = None) -> str | None:
    """Init the process group for a recipe run; returns the device this rank should use."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and not (device or "").startswith("cpu")
    if cuda:
        index = world.local_rank
        if device and ":" in device:  # an explicit device names the node's first one to use
            index += int(device.split(":", 1)[1])
        torch.cuda.set_device(index)
        device = f"cuda:{index}"
    if not dist.is_initialized():
        extra = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
        dist.init_process_group("nccl" if cuda else "gloo", **extra)
    return device


def share_checkpoint(world: World, ck: Any) -> Any:
    """Resume restores every rank: rank 0's checkpoint, sent to the others (another node need
    not see the run directory)."""
    import torch.distributed as dist

    box = [ck if world.leader else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_loader(loader: Any, world: World, seed: int | None) -> tuple[Any, str | None]:
    """A DataLoader dealing this rank its share (a DistributedSampler), else the loader as it is
    with the reason it could not be sharded (None: already sharded by the recipe)."""
    from torch.utils.data import (
        BatchSampler,
        DataLoader,
        DistributedSampler,
        IterableDataset,
        RandomSampler,
    )

    if not isinstance(loader, DataLoader):
        return loader, f"it is a {type(loader).__name__}, not a DataLoader"
    if sampler_of(loader) is not None:
        return loader, None
    if isinstance(loader.dataset, IterableDataset):
        return loader, "its dataset is an IterableDataset (shard it in the dataset)"
    if type(loader.batch_sampler) is not BatchSampler:
        return loader, f"it uses its own batch sampler ({type(loader.batch_sampler).__name__})"
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=world.world_size,
        rank=world.rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed or 0,
        drop_last=loader.drop_last,
    )
    extra = {}
    if loader.num_workers:
        extra = {
            "prefetch_factor": loader.prefetch_factor,
            "persistent_workers": loader.persistent_workers,
        }
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        **extra,
    ), None


def sampler_of(loader: Any) -> Any:
    from torch.utils.data import DistributedSampler

    for s in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if isinstance(s, DistributedSampler):
            return s
    return None


def prepare_recipe(recipe: Any, world: World, seed: int | None) -> list[str]:
    """Shard the recipe's loaders; returns notes for the run (loaders left as they were)."""
    notes = []
    for name in ("train_loader", "val_loader"):
        loader = getattr(recipe, name)
        if loader is None:
            continue
        new, why = shard_loader(loader, world, seed)
        setattr(recipe, name, new)
        if why:
            notes.append(
                f"{name} is not sharded across the {world.world_size} ranks: {why}; every rank "
                "reads all of it."
            )
    return notes


def _forward_module(model: Any, forward: Any) -> Any:
    """What DDP wraps: the model's own forward, without the model's hooks (those run once, in
    the model's own __call__); a module holding the model, so DDP finds its parameters."""
    from torch import nn

    class Forward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return forward(*args, **kwargs)

    return Forward()


def wrap_model(loop: Any, world: World) -> None:
    """Route the model's forward through DistributedDataParallel (gradient all-reduce, rank 0's
    weights broadcast now), leaving loop.model the plain module: its state_dict, names and
    stats are those of a single-process run."""
    from torch.nn.parallel import DistributedDataParallel

    model = loop.model
    inner = _forward_module(model, model.forward)
    ids = [loop.device.index] if loop.device.type == "cuda" else None
    ddp = DistributedDataParallel(inner, device_ids=ids)

    def forward(*args: Any, **kwargs: Any) -> Any:
        return ddp(*args, **kwargs)

    object.__setattr__(model, "forward", forward)  # a plain attribute: not a submodule
    loop.ddp = ddp


def finish_group() -> None:
    """The recipe run's process group, when the engine made it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # a peer already gone: nothing left to tear down cleanly
            print(f"dltui: process group teardown: {e}", file=sys.__stderr__)
