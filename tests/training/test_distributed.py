"""Two CPU processes on gloo see the same batch-level loss and gradients as one process on the whole batch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.conftest import free_port
from vlviz.losses.clip import clip_contrastive_loss
from vlviz.training.distributed import DistributedContext, gather_features, init_distributed

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


def _train_worker(rank: int, port: int, out_dir: str) -> None:
    import open_clip

    from tests.conftest import TINY_VIT_CFG
    from vlviz.data.sources import SceneSource
    from vlviz.training.config import TrainConfig
    from vlviz.training.loop import train

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    context = init_distributed(torch.device("cpu"))
    torch.manual_seed(0)  # the same initial weights on both ranks, as DDP requires
    from open_clip.model import CLIP

    model = CLIP(**TINY_VIT_CFG, output_dict=True)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    source = SceneSource(32, mean, std, held_out=8)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    config = TrainConfig(steps=3, batch_size=4, eval_every=100, losses={"clip": 1.0, "saco": 0.5})
    records = list(train(model, tokenizer, source, config, context=context))
    state = {k: v for k, v in model.state_dict().items()}
    torch.save({"records": records, "state": state}, Path(out_dir) / f"train{rank}.pt")
    dist.destroy_process_group()


def test_ddp_training_keeps_ranks_in_step(tmp_path: Path) -> None:
    """Both ranks see the global batch's loss and end with identical weights (DDP synced the gradients)."""
    mp.spawn(_train_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"train{r}.pt", weights_only=True) for r in range(2))
    assert [r["total_loss"] for r in first["records"]] == pytest.approx([r["total_loss"] for r in second["records"]])
    assert all(torch.equal(v, second["state"][k]) for k, v in first["state"].items())
    # One process on the global batch (rank 0's share, then rank 1's) gives the same first-step losses.
    import open_clip
    from open_clip.model import CLIP

    from tests.conftest import TINY_VIT_CFG
    from vlviz.data.sources import SceneSource
    from vlviz.losses.saco import saco_loss
    from vlviz.training.loop import forward_features

    torch.manual_seed(0)
    model = CLIP(**TINY_VIT_CFG, output_dict=True)
    source = SceneSource(32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, held_out=8)
    shares = [source.batch(0, 4, 0 + 7_777 * rank) for rank in range(2)]
    pixels = torch.cat([p for p, _ in shares])
    ids = open_clip.get_tokenizer("ViT-B-32", context_length=16)([c for _, cs in shares for c in cs])
    with torch.no_grad():
        out = forward_features(model, pixels, ids, with_tokens=False)
        clip = clip_contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])
        saco = saco_loss(out["image_features"], out["text_features"])
    assert first["records"][0]["clip/contrastive_loss"] == pytest.approx(float(clip), rel=1e-5)
    assert first["records"][0]["saco/saco_loss"] == pytest.approx(0.5 * float(saco), rel=1e-5)
