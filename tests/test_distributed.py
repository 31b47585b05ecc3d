"""Two CPU processes on gloo see the same batch-level loss and gradients as one process on the whole batch."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.conftest import free_port
from vlviz.distributed import DistributedContext, gather_features, init_distributed
from vlviz.losses import clip_contrastive_loss

N, D = 8, 6


def _features(weight: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    image = F.normalize(inputs @ weight, dim=-1)
    text = F.normalize(inputs.flip(1) @ weight, dim=-1)
    return image, text


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    context = init_distributed(torch.device("cpu"))
    torch.manual_seed(0)
    weight = torch.randn(D, D, requires_grad=True)
    inputs = torch.randn(N, D)
    share = inputs[rank * N // 2 : (rank + 1) * N // 2]  # this rank's half of the batch
    image, text = gather_features(*_features(weight, share))
    loss = clip_contrastive_loss(image, text, torch.tensor(10.0))
    loss.backward()
    dist.all_reduce(weight.grad)  # what DDP does (then divides by the world size)
    weight.grad /= context.world_size
    torch.save({"loss": loss.detach(), "grad": weight.grad, "rank": context.rank}, Path(out_dir) / f"{rank}.pt")
    dist.destroy_process_group()


def test_gathered_loss_and_gradients_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    weight = torch.randn(D, D, requires_grad=True)
    inputs = torch.randn(N, D)
    loss = clip_contrastive_loss(*_features(weight, inputs), torch.tensor(10.0))
    loss.backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert result["rank"] == rank
        assert torch.allclose(result["loss"], loss.detach(), atol=1e-6)
        assert torch.allclose(result["grad"], weight.grad, atol=1e-6)


def test_single_process_is_a_no_op(monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    assert init_distributed() == DistributedContext()
    x = torch.randn(3, 2)
    assert gather_features(x)[0] is x
