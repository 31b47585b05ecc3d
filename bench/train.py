"""Steps per second of vlviz's trainer against a minimal hand-written PyTorch loop.

Same model (the offline model's architecture, fresh), same CLIP loss, same batch, in one process:
the trainer's loop (loss registry, named terms, learning-rate schedule, clipping, logit-scale
clamp, records, the held-out evaluation at the last step) must keep at least 95% of the plain loop's
speed. Both get their tokenizer ready before the clock starts (building open_clip's BPE takes 0.2 s).
Repeats are interleaved; `ratio` is best against best, `ratios` each repeat's. Prints one JSON object.

    python -m bench.train --steps 20 --batch-size 64
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import open_clip
import torch
from open_clip.model import CLIP

from vlviz.data.scenes import generate_scenes
from vlviz.data.sources import HeldOut, normalise_uint8
from vlviz.losses.clip import clip_contrastive_loss
from vlviz.models.loading import resolve_device
from vlviz.training.config import TrainConfig
from vlviz.training.loop import train
from vlviz.training.offline_model import SCENES_MODEL_CFG, scenes_tokenizer


class FixedBatch:
    """The same batch at every step, so both loops do identical work."""

    def __init__(self, pixels: torch.Tensor, captions: list[str]) -> None:
        self.pixels, self.captions = pixels, captions
        self.held_out = HeldOut(pixels[:8], captions[:8])

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        return self.pixels, self.captions


def plain_loop(model: CLIP, pixels: torch.Tensor, ids: torch.Tensor, steps: int) -> float:
    """The baseline: AdamW on the CLIP loss, nothing else."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    for _ in range(steps):
        image = model.encode_image(pixels, normalize=True)
        text = model.encode_text(ids, normalize=True)
        loss = clip_contrastive_loss(image, text, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if pixels.device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def trainer_loop(model: CLIP, tokenizer, source: FixedBatch, steps: int, batch_size: int) -> float:
    config = TrainConfig(steps=steps, batch_size=batch_size, eval_every=10**9, warmup_steps=1)
    start = time.perf_counter()
    for _ in train(model, tokenizer, source, config):
        pass
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = CLIP(**SCENES_MODEL_CFG, output_dict=True).to(device)
    scenes = generate_scenes(args.batch_size, seed=0)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    pixels = normalise_uint8(torch.from_numpy(scenes.images), mean, std).to(device)
    tokenizer = scenes_tokenizer()
    ids = tokenizer(scenes.captions).to(device)
    source = FixedBatch(pixels, scenes.captions)

    plain_loop(copy.deepcopy(model), pixels, ids, 3)  # warm-up: first steps allocate optimizer state
    trainer_loop(copy.deepcopy(model), tokenizer, source, 3, args.batch_size)
    plain, ours = [], []
    for _ in range(args.repeats):  # interleaved, so that drift in machine load hits both alike
        plain.append(plain_loop(copy.deepcopy(model), pixels, ids, args.steps))
        ours.append(trainer_loop(copy.deepcopy(model), tokenizer, source, args.steps, args.batch_size))
    baseline, trainer = max(plain), max(ours)
    print(json.dumps({
        "device": str(device),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "plain_steps_per_s": round(baseline, 3),
        "trainer_steps_per_s": round(trainer, 3),
        "ratio": round(trainer / baseline, 3),
        "ratios": [round(o / p, 3) for p, o in zip(plain, ours)],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
