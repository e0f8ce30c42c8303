"""Ranks of a data-parallel job: one tidepool session per rank on the
node's daemon, the optimizer's collectives over Gloo. Under torchrun
(WORLD_SIZE > 1) torch.distributed is used once, to agree on a fresh
rendezvous directory for Gloo; the collectives themselves are tidepool's
(libtidepool's Gloo communicator)."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import torch

from tidepool import _core


def world_and_rank() -> tuple[int, int, int]:
    """(world, rank, local rank) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return world, rank, local


def open_communicator(world: int, rank: int):
    if world == 1:
        return _core.local_communicator()
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    box = [tempfile.mkdtemp(prefix="tidepool-gloo-") if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    comm = _core.gloo_communicator(rank, world, box[0])
    if rank == 0:
        atexit.register(shutil.rmtree, box[0], True)
    return comm


def broadcast_initial(values: list[torch.Tensor], world: int) -> None:
    """Every rank starts from rank 0's parameters (as DDP does)."""
    if world == 1:
        return
    import torch.distributed as dist
    for v in values:
        dist.broadcast(v, src=0)
