"""Images per second of `VLModel.encode_images` against a plain open_clip `encode_image` loop.

Both run in this process on the same model, images and batch size; the cache is emptied before
every timed vlviz run so that it measures real encoding (hashing, patch projection and caching
included). Prints one JSON object; `overhead_pct` is the wrapper's cost over the plain loop.

    python -m bench.encode                       # offline model, 512 scenes
    python -m bench.encode --model ViT-B-32:laion2b_s34b_b79k --images 256 --size 224
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from vlviz.data.scenes import generate_scenes
from vlviz.models.encoding import ENCODE_BATCH
from vlviz.models.loading import OFFLINE_SPEC, load_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=OFFLINE_SPEC)
    parser.add_argument("--device", default=None)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64, help="side of the generated scene images in pixels")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = load_model(args.model, args.device)
    images = generate_scenes(args.images, seed=7, image_size=args.size).pil_images()

    @torch.inference_mode()
    def plain_loop() -> torch.Tensor:
        out = []
        for start in range(0, len(images), ENCODE_BATCH):
            batch = torch.stack([model.preprocess(im) for im in images[start : start + ENCODE_BATCH]])
            out.append(F.normalize(model.model.encode_image(batch.to(model.device, model.dtype)), dim=-1))
        return torch.cat(out)

    def vlviz_uncached() -> torch.Tensor:
        model._image_cache._items.clear()
        return model.encode_images(images)

    def timed(fn) -> float:
        fn()  # warm-up
        seconds = []
        for _ in range(args.repeats):
            _sync(model.device)
            start = time.perf_counter()
            fn()
            _sync(model.device)
            seconds.append(time.perf_counter() - start)
        return len(images) / statistics.median(seconds)

    # Interleave the two so that drift in machine load hits both alike.
    baseline, wrapped = timed(plain_loop), timed(vlviz_uncached)
    baseline = (baseline + timed(plain_loop)) / 2
    wrapped = (wrapped + timed(vlviz_uncached)) / 2
    cached = timed(lambda: model.encode_images(images))
    agree = torch.allclose(plain_loop().float(), vlviz_uncached().float(), atol=1e-2)
    print(json.dumps({
        "model": args.model,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "images": args.images,
        "image_size": args.size,
        "batch": ENCODE_BATCH,
        "torch_threads": torch.get_num_threads(),
        "baseline_images_per_s": round(baseline, 1),
        "vlviz_images_per_s": round(wrapped, 1),
        "ratio": round(wrapped / baseline, 3),
        "overhead_pct": round(100 * (baseline / wrapped - 1), 1),
        "vlviz_cached_images_per_s": round(cached, 1),
        "same_embeddings": agree,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
