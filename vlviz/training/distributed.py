"""Data-parallel training through PyTorch's own engine (torchrun + DistributedDataParallel).

Batch-level losses (InfoNCE, SaCo) must see every rank's features, as open_clip's loss does: each
rank all-gathers the features *with gradients* and computes the loss over the global batch. Every
rank then holds the same loss value as one process on the whole batch; the all-gather's backward
sums the gradient contributions, and DDP's gradient averaging brings them back to that one
process's gradient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: its rank, how many there are, and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device | None = None) -> DistributedContext:
    """Join the process group that torchrun describes in the environment; a no-op in a plain process.

    NCCL on CUDA (one GPU per local rank), gloo on the CPU.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistributedContext(device=device or torch.device("cpu"))
    use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (world * B, ...)
        ctx.rank, ctx.world_size = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's features
        return grad.chunk(ctx.world_size)[ctx.rank]


def gather_features(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each tensor over all ranks along dim 0, keeping gradients; identity in one process.

    Ranks must hold equal batch sizes. The result is ordered by rank, so it equals the batch one
    process would have seen had it taken every rank's share in order.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    return tuple(_AllGatherWithGrad.apply(t) for t in tensors)
