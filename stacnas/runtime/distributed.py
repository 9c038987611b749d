"""Data parallelism under `torchrun` (one process per GPU, or several CPU processes with gloo).

Every rank holds the whole model and a shard of each batch. After every backward the gradients of *all*
parameters — the architecture α included — are averaged over the ranks in one all-reduce, and rank 0's
parameters and buffers are broadcast once at the start, so α and the weights stay bit-identical on every rank
(the failure this prevents: α kept outside the data-parallel wrapper, each rank ending with its own architecture).
This is what DistributedDataParallel does for one backward per step; doing it by hand also covers the steps DDP's
reducer cannot see (the second-order search step takes gradients with torch.autograd.grad).
Only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UsageError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def main_process() -> bool:
    """Rank 0 of the processes torchrun started, or the only process; known outside a process group too."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> Context:
    """Join the process group torchrun describes in the environment (nothing to do for a single process)."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size())
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Context()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return Context(dist.get_rank(), dist.get_world_size())


def device_for(name: str) -> torch.device:
    """cpu, cuda, cuda:N or auto; under torchrun each process takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise UsageError(f"device {name!r} is not one of cpu, cuda, cuda:N, auto")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name} was asked for but no GPU is visible; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise UsageError(f"device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
        if launched_by_torchrun() and not index:
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
    return torch.device(name)


def broadcast_state(module: torch.nn.Module, ctx: Context) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if ctx.active:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_tensors(tensors: list[torch.Tensor], ctx: Context) -> list[torch.Tensor]:
    """Average tensors (gradients) over the ranks in one flat all-reduce."""
    if not ctx.active:
        return list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= ctx.world
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def average_gradients(params, ctx: Context) -> None:
    """Average .grad of every parameter over the ranks (a missing grad counts as zero)."""
    if not ctx.active:
        return
    params = list(params)
    grads = average_tensors([p.grad if p.grad is not None else torch.zeros_like(p) for p in params], ctx)
    for p, g in zip(params, grads):
        p.grad = g


def sum_over_ranks(values: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.active:
        values = values.clone()
        dist.all_reduce(values)
    return values


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def teardown(ctx: Context) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
