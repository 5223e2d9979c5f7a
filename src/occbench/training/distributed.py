"""Data parallel training through torchrun: gloo on CPU, NCCL on CUDA; rank 0 alone writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Distributed:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise.

    ``device`` is execution.device: NCCL unless the run is on the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    if not dist.is_initialized():
        on_gpu = device != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if on_gpu else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_mean(values: torch.Tensor, ddp: Distributed) -> torch.Tensor:
    """Mean of a small tensor over the ranks (identity on one process)."""
    if ddp.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= ddp.world_size
    return values


def any_rank(flag: bool, ddp: Distributed, device: torch.device) -> bool:
    """True on every rank when it is true on one (so all ranks stop at the same step)."""
    if not ddp.enabled:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(ddp: Distributed) -> None:
    if ddp.enabled:
        dist.barrier()
