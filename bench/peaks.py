"""Where do a trained model's word peaks go, and at which block of the image tower do they leave the objects?

The grounding table (`bench.grounding`) found that every loss moves colour words' peaks off the objects:
an untrained model's peaks land on some object for about 0.6 of the words, a trained one's for 0.04-0.4.
This script looks for the cause on held-out scenes, for each model given:

- where the peaks land: on the named object, on another object, on the named object's edge, on background
  touching it, or on background elsewhere (`PLACES`);
- a lens over the image tower: the patch tokens after each block, through the tower's final norm and
  projection, as SPARC's maps would use them if the tower ended there;
- an intervention: the last block's attention replaced by its value path, so that each patch attends
  to itself only there (MaskCLIP's reading of CLIP's last layer, Zhou et al. 2022). If the peaks come
  back to the objects, the last attention is what carried the words' evidence off them;
- where a peak's evidence comes from: each object painted out in turn (its pixels set to the scene's
  background), how much the word's similarity at its peak patch drops when the named object goes,
  against when another object of the scene goes. The patch embedding sees only its own 8x8 pixels, so a
  background patch whose score follows the named object got that evidence through attention;
- the occlusion map (`vlviz.grounding.occlusion`): each patch hidden in turn, how much the word's SPARC fine
  similarity falls. It reads where the evidence comes from in the pixels, wherever the tower keeps it.

    # the models of docs/results/peaks.md: 300 steps from scratch on varied captions, seed 0, as bench.grounding trains them
    for loss in word_region sparc clip; do
        python -m vlviz train --model fresh --data scenes --captions varied --loss $loss=1 --steps 300 \
            --batch-size 32 --lr 5e-4 --eval-every 300 --seed 0 --out runs/peaks/$loss
    done
    PYTHONPATH=. python -m bench.peaks --models runs/peaks/word_region runs/peaks/sparc runs/peaks/clip \
        vlviz-scenes --n 300 > bench/results/peaks.jsonl
    PYTHONPATH=. python -m bench.peaks --n 32 > /dev/null     # a smoke run: vlviz-scenes and its untrained twin

Prints one JSON line per model and reading on stdout (figures for colour and shape words), tables on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer

from vlviz.data.scenes import BACKGROUND, CAPTION_STYLES, SceneBatch, generate_scenes
from vlviz.data.sources import HELD_OUT_SEED, normalise_uint8
from vlviz.grounding.maps import (
    MIN_COVER,
    OCCLUSION,
    named_maps,
    object_patch_masks,
    occlusion_scene_maps,
    scene_grounding_score,
    scene_word_positions,
    scored_words,
    untrained_model,
)
from vlviz.grounding.sparc import grounding_maps, similarities, word_maps
from vlviz.models.encoding import VLModel, image_embeddings
from vlviz.models.loading import load_model
from vlviz.models.towers import input_side, preprocess_stats

# Where a word's peak patch can lie: inside the named object (at least MIN_COVER of the patch, as the pointing
# game counts it), inside another, on the named object's edge (some of its pixels, less than MIN_COVER), on a
# patch touching the named object's patches, or on background elsewhere.
OCCLUDED = "occlusion (pixels)"  # the reading of `vlviz.grounding.occlusion`'s maps, not of any tower block
PLACES = ("named object", "other object", "its edge", "next to it", "background")


@torch.inference_mode()
def patch_lens(visual: VisionTransformer, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Projected patch embeddings (N, P, D) read after each block, and with the last block's value path only.

    Every reading goes through the tower's own final norm and projection, so block L is exactly what
    SPARC's maps use (`vlviz.models.encoding.image_embeddings`).
    """
    out = visual.forward_intermediates(pixels, normalize_intermediates=True, output_fmt="NLC", intermediates_only=True)
    readings = {f"after block {i + 1}": x @ visual.proj for i, x in enumerate(out["image_intermediates"])}
    blocks = visual.transformer.resblocks
    x = visual._embeds(pixels)
    for block in blocks[:-1]:
        x = block(x)
    last, width = blocks[-1], blocks[-1].attn.embed_dim
    # Attention of every token to itself alone: softmax over one key is 1, leaving out_proj(W_v x).
    value = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width :], last.attn.in_proj_bias[2 * width :])
    x = x + last.ls_1(last.attn.out_proj(value))
    x = x + last.ls_2(last.mlp(last.ln_2(x)))
    readings["last block, value path"] = visual.ln_post(x[:, 1:]) @ visual.proj
    return readings


def peak_place(
    word_map: torch.Tensor, inside: torch.Tensor, touched: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Where each word's peak patch lies, as an index into `PLACES`: (N, K) from (N, K, P) maps and masks.

    `inside`: each object's patches (`object_patch_masks`); `touched`: the patches holding any of its pixels.
    """
    n, k, _ = inside.shape
    peak = word_map.argmax(dim=-1, keepdim=True)  # (N, K, 1)
    named = inside.gather(-1, peak).squeeze(-1)
    on_any = inside.any(dim=1, keepdim=True).expand(-1, k, -1).gather(-1, peak).squeeze(-1)
    edge = touched.gather(-1, peak).squeeze(-1)
    near = F.max_pool2d(inside.float().reshape(n * k, 1, *grid), 3, stride=1, padding=1).reshape(n, k, -1) > 0
    touching = near.gather(-1, peak).squeeze(-1)
    index = torch.full_like(peak.squeeze(-1), len(PLACES) - 1)
    for place, here in reversed(list(enumerate((named, on_any, edge, touching)))):  # the first that holds wins
        index = torch.where(here, place, index)
    return index


def place_shares(place: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """The share of valid words whose peak lies on each of `PLACES`."""
    counts = torch.bincount(place[valid], minlength=len(PLACES)).float() / max(int(valid.sum()), 1)
    return dict(zip(PLACES, counts.tolist()))


@torch.inference_mode()
def evidence_drops(model: VLModel, scenes: SceneBatch, word_index: torch.Tensor, tokens: torch.Tensor) -> dict:
    """drops[word]: (N, K objects painted out, K words) how much each word's similarity at its peak patch falls.

    The peak is that of SPARC's weights on the scene as drawn; the similarity is the raw token-patch inner
    product (Eq. 2's s, the mean over the word's tokens). Painted pixels get the background's level and noise.
    """
    mean, std = preprocess_stats(model.model)
    images = torch.from_numpy(scenes.images)
    targets = scene_word_positions(scenes)

    def patch_embeddings(pixels: torch.Tensor) -> torch.Tensor:
        return image_embeddings(model.model, normalise_uint8(pixels, mean, std).to(model.device, model.dtype))[
            1
        ].float()

    def similarity_maps(patches: torch.Tensor) -> torch.Tensor:
        return word_maps(similarities(tokens, patches), word_index).cpu()  # (N, W, P)

    patches = patch_embeddings(images)
    drawn = similarity_maps(patches)
    weights = word_maps(grounding_maps(tokens, patches, "sparc"), word_index).cpu()
    peaks = {word: named_maps(weights, target).argmax(-1, keepdim=True) for word, target in targets.items()}
    rng = torch.Generator().manual_seed(0)
    drops: dict[str, list[torch.Tensor]] = {word: [] for word in targets}
    for k in range(scenes.masks.shape[1]):  # a handful of object slots; each is one batched pass
        noise = (BACKGROUND + 5 * torch.randn(images.shape, generator=rng)).clamp(0, 255).to(torch.uint8)
        painted = similarity_maps(
            patch_embeddings(torch.where(torch.from_numpy(scenes.masks[:, k])[..., None], noise, images))
        )
        for word, target in targets.items():
            before = named_maps(drawn, target).gather(-1, peaks[word]).squeeze(-1)
            after = named_maps(painted, target).gather(-1, peaks[word]).squeeze(-1)
            drops[word].append(before - after)  # (N, K words)
    return {word: torch.stack(values, dim=1) for word, values in drops.items()}


def evidence_figures(drops: torch.Tensor, place: torch.Tensor, present: torch.Tensor, valid: torch.Tensor) -> dict:
    """Per peak place: the share of words whose peak score falls more when their own object goes than another.

    drops (N, K painted, K words); place (N, K) index into `PLACES`; present (N, K) objects; valid (N, K) words.
    Only scenes with two objects or more count (there must be another object to paint out).
    """
    k = drops.shape[1]
    own = drops.diagonal(dim1=1, dim2=2)  # (N, K words)
    others = present[:, :, None] & ~torch.eye(k, dtype=torch.bool)[None]  # (N, K painted, K words)
    other_mean = (drops * others).sum(1) / others.sum(1).clamp_min(1)
    counted = valid & (others.sum(1) > 0)
    figures = {}
    for index, name in enumerate(PLACES):
        here = counted & (place == index)
        share = float((own > other_mean)[here].float().mean()) if here.any() else float("nan")
        figures[f"own object matters most, {name}"] = share
        figures[f"words, {name}"] = int(here.sum())
    return figures


def diagnose(model: VLModel, scenes: SceneBatch) -> dict[str, dict[str, dict[str, float]]]:
    """{reading: {"colour"|"shape": figures}}: SPARC weights at each tower reading (the tower's own adds the
    painting test), and the occlusion map."""
    encoding = model.encode_pairs(scenes.pil_images(), scenes.captions)
    mean, std = preprocess_stats(model.model)
    pixels = normalise_uint8(torch.from_numpy(scenes.images), mean, std).to(model.device, model.dtype)
    inside = object_patch_masks(scenes.masks, encoding.grid_size, MIN_COVER)
    touched = object_patch_masks(scenes.masks, encoding.grid_size, min_cover=0.0)  # any pixel of the object
    word_index = encoding.tokens.word_index.to(encoding.token_features.device)
    tokens = encoding.token_features.float()
    targets = scene_word_positions(scenes)
    valid = {word: scored_words(t, word_index.cpu()) for word, t in targets.items()}
    readings = patch_lens(model.model.visual, pixels)
    final = f"after block {len(model.model.visual.transformer.resblocks)}"
    drops = evidence_drops(model, scenes, word_index, tokens)
    results = {}
    for reading, patches in [*readings.items(), (OCCLUDED, None)]:
        if patches is None:  # where the evidence comes from: each patch hidden in turn (`vlviz.grounding.occlusion`)
            kind, token_maps = OCCLUSION, occlusion_scene_maps(model, scenes.pil_images(), scenes.captions, False)
            scores = scene_grounding_score(encoding, scenes, kinds=[kind], token_maps={kind: token_maps})
            maps = word_maps(token_maps[0].to(word_index.device), word_index).cpu()
        else:
            kind = "sparc"
            scores = scene_grounding_score(replace(encoding, patch_features=patches.float()), scenes, kinds=[kind])
            maps = word_maps(grounding_maps(tokens, patches.float(), kind), word_index).cpu()
        results[reading] = {}
        for word, target in targets.items():
            place = peak_place(named_maps(maps, target), inside, touched, encoding.grid_size)
            kept = ("pointing_game", "object_accuracy", "peak_stability")
            figures = {name: scores[kind][word][name] for name in kept} | place_shares(place, valid[word])
            if reading == final:
                present = torch.from_numpy(scenes.present)
                figures |= evidence_figures(drops[word], place, present, valid[word])
            results[reading][word] = figures
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["vlviz-scenes"], help="model specs; each beside its untrained twin"
    )
    parser.add_argument("--n", type=int, default=500, help="held-out scenes")
    parser.add_argument("--captions", default="varied", choices=list(CAPTION_STYLES))
    args = parser.parse_args()
    rows = []
    for spec in args.models:
        model = load_model(spec)
        scenes = generate_scenes(args.n, seed=HELD_OUT_SEED, image_size=input_side(model.model), captions=args.captions)
        pairs = [(spec, model)] + ([("untrained", untrained_model(model))] if spec == args.models[0] else [])
        for name, candidate in pairs:
            for reading, figures in diagnose(candidate, scenes).items():
                row = {"model": name, "reading": reading, "captions": args.captions, "n": args.n, **figures}
                print(json.dumps(row), flush=True)
                rows.append(row)
    header = f"{'model':<28} {'reading':<24} {'pointing':>8} {'obj acc':>8} " + " ".join(f"{p:>12}" for p in PLACES)
    print("\ncolour words\n" + header, file=sys.stderr)
    for row in rows:
        colour = row["colour"]
        places = " ".join(f"{colour[p]:>12.2f}" for p in PLACES)
        print(
            f"{row['model'][-28:]:<28} {row['reading']:<24} {colour['pointing_game']:>8.2f} "
            f"{colour['object_accuracy']:>8.2f} {places}",
            file=sys.stderr,
        )
    print(
        "\ncolour words, painting test: the share whose peak score falls more when their own object is painted out"
        " than another (0.5 if unrelated), and how many words",
        file=sys.stderr,
    )
    print(f"{'model':<28} " + " ".join(f"{p:>18}" for p in PLACES), file=sys.stderr)
    for row in rows:
        colour = row["colour"]
        if f"words, {PLACES[0]}" in colour:
            cells = (f"{colour[f'own object matters most, {p}']:.2f} ({colour[f'words, {p}']})" for p in PLACES)
            print(f"{row['model'][-28:]:<28} " + " ".join(f"{c:>18}" for c in cells), file=sys.stderr)


if __name__ == "__main__":
    main()
