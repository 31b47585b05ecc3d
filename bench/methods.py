"""Every map method on the untrained, the CLIP-trained and the grounded offline model (issue 23's table).

`python -m bench.methods [--n 200] [--captions template] [--kinds sparc,cosine,...] [--docs]` scores each map kind
with `score_scenes` (the pointing game of `eval-grounding`) on `n` held-out scenes for `vlviz-scenes`, for
`vlviz-scenes-grounded`, and for the untrained twin of each (the same architecture and read-out, seed 0 weights).
A kind a model cannot draw (the dense re-readings and PAMR on a model whose tokens are read before any block,
which has no block to re-read) is recorded with its reason. Prints one JSON object (also written to
`bench/results/methods.json`) with each figure, each kind's seconds, and each trained model's pointing as a ratio
of its twin's; `--docs` writes the table into docs/results/methods.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.readme import write_results_block
from vlviz.data.scenes import generate_scenes
from vlviz.data.sources import HELD_OUT_SEED
from vlviz.grounding.maps import GROUNDING_MAPS, MODEL_KINDS, score_scenes, untrained_model
from vlviz.models.loading import GROUNDED_SPEC, OFFLINE_SPEC, load_model
from vlviz.models.towers import input_side

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "methods.json"
KINDS = ["sparc", "cosine", *MODEL_KINDS]
WORDS = ("colour", "shape")


def score_kinds(model: Any, scenes: Any, kinds: list[str]) -> dict[str, Any]:
    """{kind: {word: figures} | {"unavailable": reason}, with "seconds"} for one model."""
    scores: dict[str, Any] = {}
    for kind in kinds:
        start = time.perf_counter()
        try:
            figures = score_scenes(model, scenes, kinds=[kind])[kind]
        except ValueError as error:
            scores[kind] = {"unavailable": str(error)}
            continue
        scores[kind] = {word: figures[word] for word in WORDS} | {"seconds": round(time.perf_counter() - start, 1)}
    return scores


def run(n: int, captions: str, kinds: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {"held_out_scenes": n, "captions": captions, "models": {}}
    for spec in (OFFLINE_SPEC, GROUNDED_SPEC):
        model = load_model(spec, device="cpu")
        scenes = generate_scenes(n, seed=HELD_OUT_SEED, image_size=input_side(model.model), captions=captions)
        trained, twin = score_kinds(model, scenes, kinds), score_kinds(untrained_model(model), scenes, kinds)
        ratios = {
            kind: {
                word: round(trained[kind][word]["pointing_game"] / max(twin[kind][word]["pointing_game"], 1e-9), 2)
                for word in WORDS
            }
            for kind in kinds
            if "unavailable" not in trained[kind]
        }
        results["models"][spec] = {"trained": trained, "untrained": twin, "pointing_vs_untrained": ratios}
    return results


def table(results: dict[str, Any]) -> str:
    rows = [
        "| map | model | pointing (colour) | pointing (shape) | object acc. (colour) | mass in object (colour) "
        "| peak stability (colour) | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    reasons: dict[str, int] = {}
    for kind in KINDS:
        for spec, record in results["models"].items():
            for which, name in (("trained", spec), ("untrained", f"{spec}'s untrained twin")):
                figures = record[which].get(kind)
                if figures is None:
                    continue
                if "unavailable" in figures:
                    note = reasons.setdefault(figures["unavailable"], len(reasons) + 1)
                    rows.append(f"| {kind} | {name} | n/a ({note}) | | | | | |")
                    continue
                colour, shape = figures["colour"], figures["shape"]
                rows.append(
                    f"| {kind} | {name} | {colour['pointing_game']:.3f} | {shape['pointing_game']:.3f} "
                    f"| {colour['object_accuracy']:.3f} | {colour['mass_in_mask']:.3f} "
                    f"| {colour['peak_stability']:.3f} | {figures['seconds']} |"
                )
    head = (
        f"{results['held_out_scenes']} held-out scenes, {results['captions']} captions; chance pointing "
        f"{next(iter(results['models'].values()))['trained']['sparc']['colour']['chance']:.3f}."
    )
    notes = [f"({number}) {reason}" for reason, number in reasons.items()]
    return "\n\n".join([head, "\n".join(rows), *notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--captions", default="template")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"comma-separated, of {[*GROUNDING_MAPS, *MODEL_KINDS]}"
    )
    parser.add_argument("--docs", action="store_true", help="write the table into docs/results/methods.md")
    args = parser.parse_args()
    results = run(args.n, args.captions, args.kinds.split(","))
    RESULTS.write_text(json.dumps(results, indent=1))
    print(json.dumps(results))
    if args.docs:
        write_results_block("methods", table(results))


if __name__ == "__main__":
    main()
