"""Where a run computes: its device and, under `torchrun`, its place among the data-parallel processes."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda, but CUDA is not available here (torch.cuda.is_available() is False): "
                         "use device=cpu or device=auto")
    return torch.device(name)


@dataclass(frozen=True)
class World:
    """This process's rank among `size` data-parallel processes (1: no torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, models, logs and results."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def shard(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """This rank's part of a global batch, and the weight of its mean loss that makes DDP's average of the
        ranks' gradients the gradient of the global batch's mean loss. A batch smaller than the world goes
        whole to every rank."""
        if self.size == 1 or len(batch) < self.size:
            return batch, 1.0
        part = np.array_split(batch, self.size)[self.rank]
        return part, len(part) * self.size / len(batch)

    def gather(self, obj) -> list:
        """`obj` of every rank, in rank order."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value: float) -> float:
        return float(np.mean(self.gather(value)))

    def check_in_sync(self, module: torch.nn.Module) -> None:
        """Raise unless every rank holds the same parameters and buffers, bit for bit."""
        h = hashlib.sha1()
        for t in module.state_dict().values():
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        digests = self.gather(h.hexdigest())
        if len(set(digests)) > 1:
            raise RuntimeError(f"data-parallel ranks diverged: parameter digests {digests}")


def init_world(device_name: str) -> tuple[World, torch.device]:
    """The world torchrun describes in its environment (WORLD_SIZE, RANK, LOCAL_RANK), joined; and the device of
    this process (under torchrun on CUDA: the GPU of its local rank). Process group: NCCL on GPUs, gloo on CPUs."""
    device = resolve_device(device_name)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank, size), device
