"""Process-group set-up for `python`, `torchrun` and `torch.distributed.launch`; rank helpers and gathers.

Rank, world size and local rank come from the environment that both launchers set (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a plain `python run.py` is a world of one and
needs no process group. The backend is nccl when CUDA is available, gloo otherwise.
A leaf module: data, objectives, evaluation and the engine import it; it imports nothing of vast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process without a process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def init_distributed() -> DistInfo:
    """Join the process group the launcher describes (idempotent); pick this process's device."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world_size == 1:
        return DistInfo(0, 1, 0, device, None)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    _feature_group()  # created now, at the same point on every rank
    return DistInfo(rank, world_size, local_rank, device, backend)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(value, src: int = 0):
    """Rank `src`'s value on every rank (e.g. an error message, so all ranks stop together)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_objects(value) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def shutdown() -> None:
    global _FEATURE_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _FEATURE_GROUP = None


_FEATURE_GROUP = None


def _feature_group():
    """A communicator of its own for feature gathers: their backward all-reduce runs inside autograd,
    where sharing DDP's communicator could interleave with its gradient buckets differently by rank."""
    global _FEATURE_GROUP
    if _FEATURE_GROUP is None:
        _FEATURE_GROUP = dist.new_group()
    return _FEATURE_GROUP


def _row_counts(tensor: torch.Tensor) -> list[int]:
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count, group=_feature_group())
    return [int(c) for c in counts]


def _gather_padded(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """all_gather of tensors whose row counts differ by rank: pad to the largest, gather, unpad."""
    longest = max(counts)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded, group=_feature_group())
    return torch.cat([g[:n] for g, n in zip(gathered, counts)], dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's rows (gloo has no
    reduce_scatter, so the backward all-reduces the full gradient and keeps the local part)."""

    @staticmethod
    def forward(ctx, tensor):
        counts = _row_counts(tensor)
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(counts[:rank]), sum(counts[: rank + 1])
        return _gather_padded(tensor, counts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=_feature_group())
        return grad[ctx.start:ctx.stop]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows concatenated in rank order; gradients flow back to the rank that owns them."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _gather_padded(tensor.detach(), _row_counts(tensor))


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
