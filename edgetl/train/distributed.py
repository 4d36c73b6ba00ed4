"""Scale-out through PyTorch's own engine: `torchrun --nproc_per_node=N -m edgetl finetune ...`.

torchrun sets RANK/WORLD_SIZE/MASTER_ADDR; we join a process group (gloo on CPU, nccl on
GPUs) and the trainer shards batches and evaluation across it. Without torchrun, a
world of one and every call here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def all_gather_rows(self, rows: torch.Tensor, total: int) -> torch.Tensor:
        """Rows computed by each rank for indices rank::size, put back in index order."""
        if not self.distributed:
            return rows
        per_rank = -(-total // self.size)
        padded = torch.zeros((per_rank,) + tuple(rows.shape[1:]), dtype=rows.dtype)
        padded[: len(rows)] = rows
        gathered = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(gathered, padded)
        out = torch.empty((total,) + tuple(rows.shape[1:]), dtype=rows.dtype)
        for r, part in enumerate(gathered):
            n = len(range(r, total, self.size))
            out[r :: self.size] = part[:n]
        return out

    def sum(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = World()


def join() -> World:
    """Join the process group torchrun describes in the environment (or stay single)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size())


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
