"""Training-step time of CLIP's loss alone against CLIP + SPARC, through vlviz's own trainer.

Both run in this process on the offline model's architecture (`SCENES_MODEL_CFG`, fresh weights
from the same seed) and on the very same batch of scenes, so the only difference is the SPARC
path: the towers' patch and token embeddings and the fine-grained loss. The two trainers advance
in lockstep, one step each in alternating order, so that drift in machine load hits both alike;
a step's time is the wall time of one trainer record (forward, losses, backward, optimiser step).
The first steps (warm-up) and the last (which evaluates) are left out. Prints one JSON object:
median step times, the median of the paired per-step ratios, and SPARC's overhead from it.

    python -m bench.sparc                 # batch 64, 20 steps each
    python -m bench.sparc --batch 128 --steps 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import open_clip
import torch
from open_clip.model import CLIP

from vlviz.data.sources import HeldOut, SceneSource
from vlviz.training.config import TrainConfig
from vlviz.training.loop import train
from vlviz.training.offline_model import SCENES_MODEL_CFG, scenes_tokenizer

WARMUP_STEPS = 2


class FixedBatch:
    """A trainer source that hands out one batch of scenes at every step."""

    def __init__(self, batch_size: int) -> None:
        scenes = SceneSource(
            SCENES_MODEL_CFG["vision_cfg"]["image_size"],
            open_clip.OPENAI_DATASET_MEAN,
            open_clip.OPENAI_DATASET_STD,
            held_out=8,
        )
        self.held_out: HeldOut = scenes.held_out
        self.pixels, self.captions = scenes.batch(0, batch_size, seed=0)

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        return self.pixels, self.captions


def lockstep_step_times(
    settings: dict[str, dict[str, float]], batch: int, steps: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per training step of each setting's fresh model, the trainers advancing in lockstep."""
    source = FixedBatch(batch)
    runs = {}
    for name, losses in settings.items():
        torch.manual_seed(0)
        model = CLIP(**SCENES_MODEL_CFG, output_dict=True).to(device)
        config = TrainConfig(steps=steps, batch_size=batch, warmup_steps=1, eval_every=steps, losses=losses)
        runs[name] = train(model, scenes_tokenizer(), source, config)
    times: dict[str, list[float]] = {name: [] for name in settings}
    for step in range(steps):
        for name in list(runs)[:: 1 if step % 2 == 0 else -1]:  # alternate who goes first
            start = time.perf_counter()
            next(runs[name])
            times[name].append(time.perf_counter() - start)
    return {name: values[WARMUP_STEPS:-1] for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="steps per setting, warm-up and the last one included")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.steps < WARMUP_STEPS + 2:
        parser.error(f"--steps must be at least {WARMUP_STEPS + 2} (warm-up and the evaluating step are not timed)")

    times = lockstep_step_times(
        {"clip": {"clip": 1.0}, "clip+sparc": {"clip": 1.0, "sparc": 1.0}}, args.batch, args.steps, device
    )
    ratio = statistics.median(s / c for c, s in zip(times["clip"], times["clip+sparc"], strict=True))
    print(json.dumps({
        "model": "SCENES_MODEL_CFG (the offline model's architecture)",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "batch": args.batch,
        "timed_steps_per_setting": len(times["clip"]),
        "clip_step_ms": round(1000 * statistics.median(times["clip"]), 1),
        "clip_sparc_step_ms": round(1000 * statistics.median(times["clip+sparc"]), 1),
        "ratio": round(ratio, 3),
        "overhead_pct": round(100 * (ratio - 1), 1),
        "target_overhead_pct": 15,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
