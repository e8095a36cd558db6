"""torchrun support: `torchrun --nproc_per_node=N -m data2vec2 pretrain ...` sets the environment
variables read here. gloo on CPU; on CUDA, NCCL for GPU tensors and gloo for the host's. Nothing
is launched by hand."""

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

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str, group_of_one: bool = False) -> DistInfo:
    """The process group of torchrun's processes. Without torchrun: none, or with `group_of_one`
    (FSDP needs a group even alone) a group of this one process. On CUDA, GPU tensors go over
    NCCL and the host's own scalars (masked counts, the loss) over gloo, which NCCL does not carry."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    backend = "cuda:nccl,cpu:gloo" if device_type == "cuda" else "gloo"
    if world <= 1:
        if group_of_one and not dist.is_initialized():
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend)
    info = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def is_distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t)
    return t


def all_reduce_max(value: float) -> float:
    """The largest of the processes' `value`s (a host number, over gloo on GPUs too)."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def all_gather_objects(obj) -> list:
    if is_distributed():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
