"""Where a run computes: its device, precision and CPU threads, and its place among ``torchrun`` processes.

``setup_hardware`` is the one place a trainer configures them. Without ``WORLD_SIZE`` in the environment
the run is one process on ``--device`` (default: cuda if available). With it (``torchrun``) and a trainer
that supports it, the process group is initialized from the environment (NCCL on CUDA, gloo on CPU) and
each process takes GPU ``LOCAL_RANK`` when there are GPUs. Threads are set only when ``--threads`` is given
on a CPU run: the ``facerig`` command has already set them (``runtime.configure_threads``), and a run
resumed bit-identically needs the thread count the caller chose (float reductions depend on it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from facerig import runtime


@dataclass
class Hardware:
    device: torch.device
    precision: str  # resolved: "fp32" or "bf16"
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes the run's shared files (logs, samples, weights)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, stats: torch.Tensor) -> torch.Tensor:
        """``stats`` averaged over the processes (in place; unchanged when alone)."""
        if self.world > 1:
            dist.all_reduce(stats)
            stats /= self.world
        return stats


def setup_hardware(device: str | None, precision: str, threads: int | None, distributed: bool = False) -> Hardware:
    """Device, resolved precision and process placement of a run (see the module docstring)."""
    rank, world, local_rank = 0, 1, 0
    if distributed and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        else:
            dev = torch.device("cpu")
        if not dist.is_initialized():
            cuda = dev.type == "cuda"
            dist.init_process_group("nccl" if cuda else "gloo", device_id=dev if cuda else None)
    else:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cpu" and threads is not None:
        runtime.configure_threads(threads)
    return Hardware(dev, runtime.resolve_precision(precision, dev), rank, world, local_rank)


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Tear down, on the way out, the process group that ``setup_hardware`` makes under torchrun."""
    made = "WORLD_SIZE" in os.environ and not dist.is_initialized()
    try:
        yield
    finally:
        if made and dist.is_initialized():
            dist.destroy_process_group()
