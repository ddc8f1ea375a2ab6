"""Data-parallel study runs under ``torchrun``: which rank this process is, and waiting for the others.

    torchrun --standalone --nproc_per_node=2 --no-python -- vlm-lens vrp --out runs/x

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``Ranks.from_env`` joins the process
group (nccl when the model runs on CUDA, gloo otherwise) and each rank uses GPU ``LOCAL_RANK``.
Extraction deals the missing shards round-robin to the ranks; rank 0 alone then runs the
analysis and writes the report. Without torchrun, ``Ranks.single()`` is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int
    joined: bool = False  # whether this process joined a torch.distributed process group

    @classmethod
    def single(cls) -> Ranks:
        return cls(0, 1, 0)

    @classmethod
    def from_env(cls, device: str | None = None) -> Ranks:
        """This process's place in a ``torchrun`` world (a world of one when not under torchrun)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls.single()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device is not None and str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        return cls(rank, world, local, joined=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def label(self) -> str:
        """A suffix for progress bars: " [rank 1/2]" under torchrun, nothing otherwise."""
        return f" [rank {self.rank}/{self.world_size}]" if self.world_size > 1 else ""

    def device(self, device: str | None) -> str | None:
        """Each rank's GPU: "cuda" becomes "cuda:<local rank>"."""
        if device == "cuda" and self.world_size > 1:
            return f"cuda:{self.local_rank}"
        return device

    def barrier(self) -> None:
        if self.joined:
            dist.barrier()

    def close(self) -> None:
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()
