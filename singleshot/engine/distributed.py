"""DistributedDataParallel plumbing: set-up from torchrun's environment, rank helpers, gathering.

``torchrun --nproc_per_node N -m singleshot train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`setup` joins them into one process group
(NCCL on CUDA, gloo on CPU). A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) runs without one and
every helper here degrades to the obvious single-process answer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from singleshot.errors import UserError

_STORE_TIMEOUT = timedelta(minutes=30)  # torch's default for the process group


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, and the device it computes on."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the one process that writes files and draws progress (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``"auto"``/None -> CUDA when available (``cuda:LOCAL_RANK``), else CPU; otherwise the named device."""
    if name in (None, "", "auto"):
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {name} asks for CUDA, which this machine does not have; use --device cpu"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    return device


def setup(device: str | None = None) -> World:
    """Join the process group that torchrun describes in the environment, if any.

    Returns the :class:`World` of this process; its device is ``cuda:LOCAL_RANK`` under torchrun with
    CUDA, else what ``device`` names.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=resolve_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs, **_attempt_store(size))
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, device=dev)


def _attempt_store(size: int) -> dict:
    """``init_process_group`` arguments that keep a torchrun restart off the keys of the attempt before.

    torchrun's agent serves one store for every attempt of its workers (``TORCHELASTIC_USE_AGENT_STORE``),
    and the process group's keys are the same each time: a restarted worker could read the address a
    killed one posted and fail to connect. The keys of attempt ``TORCHELASTIC_RESTART_COUNT`` get their
    own prefix. Empty (the plain ``env://`` set-up) outside torchrun.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        size,
        is_master=False,
        timeout=_STORE_TIMEOUT,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = dist.PrefixStore(f"singleshot/attempt_{attempt}", store)
    return {"store": prefixed, "rank": int(os.environ["RANK"]), "world_size": size}


def teardown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_gather_objects(obj, world: World) -> list:
    """Every rank's ``obj`` in rank order (``[obj]`` without a process group)."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, world: World, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a tensor over ranks (the tensor itself without a process group)."""
    if not world.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / world.size


def average_batch_norm_statistics(module: torch.nn.Module, world: World) -> None:
    """Replace the running statistics of every batch-norm layer by their mean over ranks.

    DistributedDataParallel keeps parameters equal but each rank's last forward pass updates its own
    running statistics; averaging them at the end of an epoch makes all ranks identical again and uses
    every rank's images.
    """
    if not world.distributed:
        return
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats:
            for buffer in (m.running_mean, m.running_var):
                dist.all_reduce(buffer.data, op=dist.ReduceOp.SUM)
                buffer.data.div_(world.size)


def shard(indices: Sequence[int], world: World, pad: bool) -> list[int]:
    """This rank's share of ``indices``: every ``size``-th one starting at ``rank``.

    With ``pad`` the list is first extended by wrapping around, so that every rank gets the same number
    (training: all ranks must take the same number of steps); without it the shares may differ by one
    (evaluation: every sample exactly once).
    """
    indices = list(indices)
    if pad and world.size > 1 and indices:
        extra = (-len(indices)) % world.size
        indices = indices + (indices * (extra // len(indices) + 1))[:extra]
    return indices[world.rank :: world.size]
