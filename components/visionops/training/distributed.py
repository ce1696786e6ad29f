"""Device choice and DistributedDataParallel setup from the environment ``torchrun`` (and a Kubeflow
PyTorchJob) sets: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.

Without ``WORLD_SIZE`` (or with 1) training runs in a single process and nothing here touches the network.
Backends: ``nccl`` on CUDA, ``gloo`` on CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from visionops.errors import ConfigError
from visionops.settings import Settings, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Where this process trains and its place in a distributed job."""

    device: Any  # torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass(frozen=True)
class LaunchSettings(Settings):
    """The variables torchrun (or a PyTorchJob) sets for each process: its contract, not ours."""

    kind: ClassVar[str] = "torchrun environment"

    world_size: int = setting(
        1, "Processes in the job.", env="WORLD_SIZE", check=lambda v: v >= 1, must="must be >= 1", cli=False
    )
    rank: int = setting(
        0, "This process's rank.", env="RANK", check=lambda v: v >= 0, must="must be >= 0", cli=False
    )
    local_rank: int = setting(
        0, "Rank on this node.", env="LOCAL_RANK", check=lambda v: v >= 0, must="must be >= 0", cli=False
    )
    master_addr: str = setting("", "Rendezvous host.", env="MASTER_ADDR", cli=False)
    master_port: str = setting("", "Rendezvous port.", env="MASTER_PORT", cli=False)


def resolve_device(requested: str, local_rank: int = 0):
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU fails with a clear message."""
    import torch

    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(
                "device 'cuda' requested but no CUDA device is available; use --device cpu or auto"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(requested_device: str) -> Runtime:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1) and pick the device."""
    import torch.distributed as dist

    launch = LaunchSettings.from_env()
    world_size, rank, local_rank = launch.world_size, launch.rank, launch.local_rank
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        for name, value in (("MASTER_ADDR", launch.master_addr), ("MASTER_PORT", launch.master_port)):
            if not value:
                raise ConfigError(f"WORLD_SIZE={world_size} but {name} is not set; launch with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        log.info(
            "DDP: rank %d/%d (local %d) on %s, backend %s", rank, world_size, local_rank, device, backend
        )
    return Runtime(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown(runtime: Runtime) -> None:
    import torch.distributed as dist

    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    import torch.distributed as dist

    if runtime.distributed:
        dist.barrier()


def all_sum(runtime: Runtime, values: list[float]) -> list[float]:
    """Sum a few numbers over all ranks (identity in a single process)."""
    if not runtime.distributed:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(runtime: Runtime, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list of one in a single process)."""
    if not runtime.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(runtime: Runtime, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not runtime.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
