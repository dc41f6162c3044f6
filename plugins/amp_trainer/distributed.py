"""torch.distributed glue: under ``torchrun`` every process trains one shard; otherwise a world of one.

The trainer only talks to ``World``, so the single-process path never touches torch.distributed.
Collectives take tensors on the training device (nccl needs CUDA tensors, gloo CPU ones).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in the training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process logs and writes files."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes, in place (no-op alone)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` in rank order (small Python objects: captions, RNG states)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process (its decisions, e.g. metrics computed once)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def init_world(device_type: str) -> World:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1): nccl on CUDA, gloo on CPU.

    A group the caller already initialised is used as it is. The group is destroyed at exit.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not (dist.is_available() and dist.is_initialized()):
        return World()
    if not dist.is_available():  # pragma: no cover - builds without distributed support
        from geometry_os.errors import GeometryOSError

        raise GeometryOSError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        atexit.register(_shutdown)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def wrap_ddp(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` when there is more than one process."""
    if not world.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index if device.index is not None else world.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
