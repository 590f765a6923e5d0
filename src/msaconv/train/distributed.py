"""torchrun / DistributedDataParallel helpers: process-group set-up from the environment, sharding,
metric reduction. A single process (no ``WORLD_SIZE``) is world size 1 and every helper is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup() -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl with CUDA); world size 1 otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        here = True
    return DistInfo(rank, world, local, device, here)


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's part of ``indices`` (DistributedSampler's rule: pad by wrapping, then every world_size-th)."""
    if info.world_size == 1:
        return indices
    n = len(indices)
    total = -(-n // info.world_size) * info.world_size
    if total > n:
        indices = torch.cat([indices, indices[: total - n]])
    return indices[info.rank :: info.world_size]


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank when any rank set ``flag`` (used to stop all ranks together on a signal)."""
    if not info.enabled:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], info)[0] > 0


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
