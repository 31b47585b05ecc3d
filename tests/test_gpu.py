"""CUDA paths, run by `bench/gpu.sh` on a machine with a GPU (`pytest -m gpu`); CI deselects them (no GPU there).

Half-precision loading (bf16 where supported, else fp16), training under autocast with the loss scaler
that fp16 needs, and NCCL data parallelism when two GPUs are present.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.model import CLIP

from tests.conftest import free_port
from vlviz.data.scenes import generate_scenes
from vlviz.data.sources import SceneSource
from vlviz.losses.clip import clip_contrastive_loss
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.models.towers import half_dtype, input_side, preprocess_stats
from vlviz.training.config import TrainConfig
from vlviz.training.distributed import gather_features, init_distributed
from vlviz.training.loop import train
from vlviz.training.offline_model import SCENES_MODEL_CFG, scenes_tokenizer

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def test_half_precision_loading_matches_the_cpu() -> None:
    """The model loads in `half_dtype` on CUDA and encodes as the fp32 CPU model does, up to half precision."""
    gpu, cpu = load_model(OFFLINE_SPEC, "cuda"), load_model(OFFLINE_SPEC, "cpu")
    assert gpu.dtype == half_dtype(CUDA) and gpu.device.type == "cuda"
    scenes = generate_scenes(16, seed=3)
    on_gpu = gpu.encode_pairs(scenes.pil_images(), scenes.captions)
    on_cpu = cpu.encode_pairs(scenes.pil_images(), scenes.captions)
    for name in ("image_features", "text_features"):
        cosine = F.cosine_similarity(getattr(on_gpu, name).float().cpu(), getattr(on_cpu, name), dim=-1)
        assert bool((cosine > 0.99).all()), (name, cosine.min())
    assert on_gpu.patch_features is not None and torch.isfinite(on_gpu.patch_features.float()).all()


@pytest.mark.parametrize("losses", [{"clip": 1.0}, {"clip": 1.0, "sparc": 1.0, "saco": 0.5}])
def test_training_under_autocast_stays_finite_and_learns(losses: dict[str, float]) -> None:
    """bf16 autocast (or fp16 with GradScaler) on CUDA: finite losses, fp32 weights, and the loss goes down."""
    torch.manual_seed(0)
    model = CLIP(**SCENES_MODEL_CFG, output_dict=True).to(CUDA)
    source = SceneSource(input_side(model), *preprocess_stats(model), held_out=64)
    config = TrainConfig(steps=40, batch_size=32, lr=5e-4, warmup_steps=5, eval_every=40, losses=losses)
    records = list(train(model, scenes_tokenizer(), source, config))
    totals = [record["total_loss"] for record in records]
    assert all(torch.isfinite(torch.tensor(totals))) and next(model.parameters()).dtype == torch.float32
    assert sum(totals[-5:]) < sum(totals[:5])
    assert "image_to_caption_r1" in records[-1]


def _nccl_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    context = init_distributed(CUDA)
    torch.manual_seed(0)
    weight = torch.randn(6, 6, device=context.device, requires_grad=True)
    inputs = torch.randn(8, 6, device=context.device)[rank * 4 : (rank + 1) * 4]
    image, text = gather_features(F.normalize(inputs @ weight, dim=-1), F.normalize(inputs.flip(1) @ weight, dim=-1))
    loss = clip_contrastive_loss(image, text, torch.tensor(10.0, device=context.device))
    torch.save({"loss": loss.detach().cpu(), "device": str(context.device)}, Path(out_dir) / f"{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallelism needs two GPUs")
def test_nccl_ranks_see_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(_nccl_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2)]
    assert [r["device"] for r in results] == ["cuda:0", "cuda:1"]
    assert torch.allclose(results[0]["loss"], results[1]["loss"])  # both ranks computed the loss of all 8 pairs
