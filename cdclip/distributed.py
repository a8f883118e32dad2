"""torch.distributed for the commands: start under ``torchrun``, shards of an image list, rank 0 only.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` for every process it starts. A
command calls :func:`init_from_env` once. The process group then uses NCCL when the processes have
GPUs and Gloo on CPUs; each process takes the GPU of its ``LOCAL_RANK``. Without those variables
nothing is initialised and every helper answers for one process, so the same code runs from
``python`` and from ``torchrun``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "Shard",
    "cleanup",
    "collective_device",
    "global_batch_means",
    "init_from_env",
    "is_main_process",
    "mean_denominator",
    "parse_shard",
    "rank_and_world",
    "sum_over_processes",
]

_SYNC_MEANS = False  # set by global_batch_means(): loss means over the global batch


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` (0-based) of a list: every ``count``-th item from ``index`` on."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--shard: expected K/N with 0 <= K < N, got {self.index}/{self.count}")

    def select(self, items: list[int]) -> list[int]:
        """The items of this shard: a fixed, disjoint split whatever the list."""
        return items[self.index :: self.count]

    @property
    def tag(self) -> str:
        return f"shard{self.index}of{self.count}"


def parse_shard(text: str) -> Shard:
    """``"K/N"`` (0-based ``K``, as SLURM's ``$SLURM_ARRAY_TASK_ID``) → :class:`Shard`."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if match is None:
        raise ValueError(f"--shard: expected K/N with 0 <= K < N, such as 0/4, got {text!r}")
    return Shard(int(match.group(1)), int(match.group(2)))


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device(device: torch.device | str | None = None) -> torch.device:
    """Where a collective's buffer lives: the current CUDA device under NCCL, else ``device`` (default CPU)."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device) if device is not None else torch.device("cpu")


def sum_over_processes(values: Sequence[int]) -> list[int]:
    """Integer counts summed over the processes in one all-reduce; unchanged without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [int(v) for v in values]
    buffer = torch.tensor([int(v) for v in values], dtype=torch.int64, device=collective_device())
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return [int(v) for v in buffer.tolist()]


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def init_from_env(device: str = "cpu") -> str:
    """Join the ``torchrun`` process group when its variables are set; returns this process's device.

    ``device`` is the requested device: ``cuda`` becomes ``cuda:<LOCAL_RANK>`` and picks NCCL,
    anything else uses Gloo. Without ``torchrun`` (no ``WORLD_SIZE`` > 1) nothing happens.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    if not dist.is_available():
        raise RuntimeError("torchrun: this torch build has no torch.distributed")
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def cleanup() -> None:
    """Leave the process group (after a last barrier), if one was joined."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def global_batch_means() -> Iterator[None]:
    """Within the block, losses average over the pixels (pairs) of the whole global batch.

    A loss ``S / N`` over one process's batch, averaged by DDP over ``W`` processes, is not the loss
    of the global batch when the counts ``N`` differ between processes. :func:`mean_denominator`
    then returns ``N_global / W`` instead of ``N``: DDP's average of ``S_r / (N_global / W)`` is
    exactly ``Σ S_r / N_global``, so ``W`` processes × batch ``B`` train as one process × ``W·B``.
    Without an initialised process group the block changes nothing.
    """
    global _SYNC_MEANS
    previous, _SYNC_MEANS = _SYNC_MEANS, rank_and_world()[1] > 1
    try:
        yield
    finally:
        _SYNC_MEANS = previous


def mean_denominator(count: torch.Tensor) -> torch.Tensor:
    """``max(count, 1)``: the denominator of a loss mean; inside :func:`global_batch_means` the
    global count over the processes (``max(ΣN, 1) / W``, no gradient).

    Shape:
        - count: () a count
        - output: () float or the count's dtype
    """
    if not _SYNC_MEANS:
        return count.clamp_min(1)
    import torch.distributed as dist

    total = count.detach().to(dtype=torch.float64, device=collective_device(count.device)).reshape(1).clone()
    dist.all_reduce(total)
    world = dist.get_world_size()
    dtype = count.dtype if count.is_floating_point() else torch.float64
    return (total.clamp_min(1) / world).to(device=count.device, dtype=dtype).reshape(())
