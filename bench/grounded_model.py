"""The grounded offline model over seeds: issue 23's targets, each seed beside its untrained twin.

Trains `vlviz-scenes-grounded`'s recipe (`vlviz.training.grounded_model`) once per seed into `--out/seedN` (a
folder already holding a model is not trained again), then evaluates each model and its untrained twin on
`--n` held-out scenes of both caption styles (`vlviz.training.evaluation.evaluate`: image -> caption R@1, the
pointing game and object accuracy of colour and shape words, peak stability, the blank-scene peak share, pointing
by naming order). Rows go to `--results` (JSON lines, one per seed and caption style); `--docs` writes the table
into docs/results/grounded_model.md.

    python -m bench.grounded_model --seeds 0 1 2 --docs
    python -m bench.grounded_model --seeds 0 --models assets/models/vlviz-scenes-grounded --docs   # the shipped seed
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from bench.readme import mean_and_spread, write_results_block
from vlviz.data.sources import SceneSource
from vlviz.grounding.maps import untrained_model
from vlviz.models.loading import load_model
from vlviz.models.towers import input_side, preprocess_stats
from vlviz.training.evaluation import evaluate
from vlviz.training.grounded_model import GROUNDED_MODEL_TRAIN_CONFIG, build_grounded_model

RESULTS = Path(__file__).with_name("results") / "grounded_model.jsonl"
CAPTIONS = ("template", "varied")
# figure -> (column, issue 23's target: at least (">=") or at most ("<=") the value)
TARGETS = {
    "image_to_caption_r1": ("i→caption R@1", ">=", 0.95),
    "pointing_game_colour": ("pointing (colour)", ">=", 0.8),
    "pointing_game_shape": ("pointing (shape)", ">=", 0.6),
    "object_accuracy_colour": ("object acc. (colour)", ">=", 0.8),
    "peak_stability_colour": ("peak stability (colour)", "<=", 0.1),
    "blank_peak_share_colour": ("blank-scene peak share", "<=", 0.2),
}
NAMING_ORDER = {
    f"pointing_game_colour_named_{n}": f"colour named {nth}" for n, nth in ((1, "1st"), (2, "2nd"), (3, "3rd"))
}


def trained_model(seed: int, out: Path) -> Path:
    """The recipe's model of `seed`, trained into `out/seedN` unless one is there."""
    folder = out / f"seed{seed}"
    if not (folder / "open_clip_config.json").is_file():
        for _ in build_grounded_model(folder, replace(GROUNDED_MODEL_TRAIN_CONFIG, seed=seed)):
            pass
    return folder


def evaluate_model(folder: Path, seed: int, n: int) -> list[dict]:
    """One row per caption style: the model's held-out figures and its untrained twin's on the same scenes."""
    model = load_model(str(folder), device="cpu")
    twin = untrained_model(model)
    rows = []
    for captions in CAPTIONS:
        source = SceneSource(input_side(model.model), *preprocess_stats(model.model), held_out=n, captions=captions)
        rows.append({
            "seed": seed, "captions": captions, "held_out": n,
            "model": evaluate(model.model, model.tokenizer, source.held_out),
            "untrained": evaluate(twin.model, model.tokenizer, source.held_out),
        })  # fmt: skip
    return rows


def _meets(value: float, rule: str, target: float) -> bool:
    return value >= target if rule == ">=" else value <= target


def table(rows: list[dict]) -> str:
    """Mean ± sd over seeds per caption style, the model above its twin's row, and whether every seed met each target
    and stood above its twin on pointing and object accuracy."""
    columns = {key: label for key, (label, _, _) in TARGETS.items()} | NAMING_ORDER
    header = "| captions | model (seeds) | " + " | ".join(columns.values()) + " |"
    lines = [header, "|---" * (len(columns) + 2) + "|"]
    for captions in CAPTIONS:
        group = [r for r in rows if r["captions"] == captions]
        if not group:
            continue
        for who in ("model", "untrained"):
            cells = [mean_and_spread([r[who].get(key, float("nan")) for r in group]) for key in columns]
            name = "vlviz-scenes-grounded" if who == "model" else "untrained twin"
            lines.append(f"| {captions} | {name} ({len(group)}) | " + " | ".join(cells) + " |")
        met = [
            "yes" if all(_meets(r["model"][key], rule, target) for r in group) else "no"
            for key, (_, rule, target) in TARGETS.items()
        ]
        lines.append(f"| {captions} | target met by every seed | " + " | ".join(met) + " |" + " |" * len(NAMING_ORDER))
    above = all(
        r["model"][key] > r["untrained"][key]
        for r in rows
        for key in ("pointing_game_colour", "object_accuracy_colour")
    )
    return (
        "\n".join(lines)
        + f"\n\nEvery seed above its untrained twin on colour pointing and object accuracy: {'yes' if above else 'no'}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", type=Path, nargs="*", default=None, help="model folders, one per seed, in order")
    parser.add_argument("--out", type=Path, default=Path("runs/grounded"), help="where the seeds' models are trained")
    parser.add_argument("--n", type=int, default=200, help="held-out scenes per caption style")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--docs", action="store_true", help="write the table into docs/results/grounded_model.md")
    args = parser.parse_args()

    rows = [json.loads(line) for line in args.results.read_text().splitlines()] if args.results.exists() else []
    for index, seed in enumerate(args.seeds):
        if any(r["seed"] == seed and r["held_out"] == args.n for r in rows):
            continue
        folder = args.models[index] if args.models else trained_model(seed, args.out)
        for row in evaluate_model(folder, seed, args.n):
            with args.results.open("a") as out:
                out.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            rows.append(row)
    markdown = table([r for r in rows if r["held_out"] == args.n])
    print(markdown)
    if args.docs:
        write_results_block("grounded_model", markdown)


if __name__ == "__main__":
    main()
