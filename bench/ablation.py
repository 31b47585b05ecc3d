"""The toy-scale version of the papers' tables: does SaCo make affinities consistent, does SPARC ground words?

Continues training the same start model (the offline `vlviz-scenes` model, as SaCo's continual
pre-training proposes) on scenes with (a) CLIP, (b) CLIP + SaCo, (c) CLIP + SPARC and (d) all three,
three seeds each, and reports held-out image -> text R@1, mean |A_I - A_T| and the SPARC
pointing game (colour and shape words), as mean ± standard deviation over seeds. Prints JSON and,
with --docs, writes the table into docs/results/ablation.md between its markers, whatever it shows.

    python -m bench.ablation --steps 60 --docs
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.readme import mean_and_spread, write_results_block
from vlviz.training.config import TrainConfig
from vlviz.training.runs import prepare_run

SETTINGS = {
    "(a) CLIP": {"clip": 1.0},
    "(b) CLIP + SaCo": {"clip": 1.0, "saco": 1.0},
    "(c) CLIP + SPARC": {"clip": 1.0, "sparc": 1.0},
    "(d) CLIP + SaCo + SPARC": {"clip": 1.0, "saco": 1.0, "sparc": 1.0},
}
FIGURES = {
    "image_to_caption_r1": "i→caption R@1",
    "mean_abs_inconsistency": "mean abs(A_I − A_T)",
    "pointing_game_colour": "pointing (colour)",
    "pointing_game_shape": "pointing (shape)",
}


def run_all(start: str, steps: int, batch_size: int, lr: float, seeds: list[int]) -> dict[str, list[dict]]:
    """Final held-out figures of every setting and seed (plus the start model's, under "start")."""
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, losses in SETTINGS.items():
            for seed in seeds:
                config = TrainConfig(
                    steps=steps, batch_size=batch_size, lr=lr, eval_every=steps, seed=seed, losses=losses
                )
                records = list(prepare_run(start, "scenes", config, Path(scratch) / f"{name}-{seed}").records())
                results.setdefault("start", [records[0]])  # the same start model for every run
                results.setdefault(name, []).append(records[-1])
    return results


def table(results: dict[str, list[dict]], steps: int, batch_size: int, seeds: list[int]) -> str:
    """A Markdown table: mean ± standard deviation over seeds of each figure."""
    lines = [
        f"| setting ({steps} steps, batch {batch_size}, seeds {', '.join(map(str, seeds))}) | "
        + " | ".join(FIGURES.values()) + " |",
        "|---" * (len(FIGURES) + 1) + "|",
    ]  # fmt: skip
    for name, records in results.items():
        cells = [mean_and_spread([r[key] for r in records if key in r]) for key in FIGURES]
        lines.append(f"| {'start model (step 0)' if name == 'start' else name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="vlviz-scenes")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--docs", action="store_true", help="write the table into docs/results/ablation.md")
    args = parser.parse_args()

    results = run_all(args.start, args.steps, args.batch_size, args.lr, args.seeds)
    markdown = table(results, args.steps, args.batch_size, args.seeds)
    print(json.dumps({name: [{k: r.get(k) for k in FIGURES} for r in records] for name, records in results.items()}))
    print(markdown)
    if args.docs:
        write_results_block("ablation", markdown)


if __name__ == "__main__":
    main()
