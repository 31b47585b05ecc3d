"""Does SPARC ground words on scenes? CLIP, SPARC and SIMLA at equal compute, from scratch and continual,
on template and varied captions, over seeds: the table issue 12 asks for, whatever it shows.

Every run trains `--steps` steps of batch `--batch-size` on scenes of one caption style and is evaluated
on held-out scenes of the same style (`vlviz.training.evaluation`): image -> text R@1, the SPARC pointing
game of colour and shape words, and object accuracy (of the words whose peak patch lies on some object,
the share on the one named; object chance is about 0.5). Step 0 of a run from scratch is the untrained
model, of a continual run the shipped `vlviz-scenes`: both are rows of the table. Prints JSON lines as
runs finish and a Markdown table; `--readme` writes the table into README.md between its markers.

    python -m bench.grounding --steps 300 --seeds 0 1 2 --readme     # the full table: about 36 runs
    python -m bench.grounding --steps 5 --seeds 0 --settings CLIP --starts scratch   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile

from bench.readme import mean_and_spread, write_readme_block
from vlviz.training.config import TrainConfig
from vlviz.training.runs import prepare_run

SETTINGS: dict[str, tuple[dict[str, float], dict[str, dict]]] = {
    "CLIP": ({"clip": 1.0}, {}),
    "SPARC (paper: λg 0.5, λf 1)": ({"sparc": 1.0}, {}),
    "SPARC, λf 5": ({"sparc": 1.0}, {"sparc": {"fine_weight": 5.0}}),  # the paper sweeps λf, names none
    "SIMLA (CLIP + XMM + PSL)": ({"clip": 1.0, "xmm": 1.0, "psl": 1.0}, {}),
}
STARTS = {"scratch": "fresh", "continual": "vlviz-scenes"}
CAPTIONS = ("template", "varied")
FIGURES = {
    "image_to_text_r1": "i→t R@1",
    "pointing_game_colour": "pointing (colour)",
    "pointing_game_shape": "pointing (shape)",
    "object_accuracy_colour": "object acc. (colour)",
    "object_accuracy_shape": "object acc. (shape)",
}


def run_one(start: str, captions: str, losses: dict, options: dict, args: argparse.Namespace, seed: int) -> list[dict]:
    """The records of one run: step 0 (the start model) and the last step."""
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, eval_every=args.steps, seed=seed,
        losses=losses, loss_options=options,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        records = list(prepare_run(start, "scenes", config, scratch, captions=captions).records())
    return [records[0], records[-1]]


def run_all(args: argparse.Namespace) -> dict[tuple[str, str, str], list[dict]]:
    """Last-step figures per (start, captions, setting) over seeds, and each start model's as setting "step 0"."""
    results: dict[tuple[str, str, str], list[dict]] = {}
    seen: set[tuple] = set()  # start models recorded: a fresh one per seed, the shipped one once
    for start in args.starts:
        for captions in args.captions:
            for name in args.settings:
                losses, options = SETTINGS[name]
                for seed in args.seeds:
                    first, last = run_one(STARTS[start], captions, losses, options, args, seed)
                    start_model = (start, captions, seed if start == "scratch" else None)
                    if start_model not in seen:
                        seen.add(start_model)
                        results.setdefault((start, captions, "step 0"), []).append(first)
                    results.setdefault((start, captions, name), []).append(last)
                    row = {"start": start, "captions": captions, "setting": name, "seed": seed}
                    print(json.dumps(row | {k: last.get(k) for k in FIGURES}), flush=True)
    return results


def table(results: dict[tuple[str, str, str], list[dict]], args: argparse.Namespace) -> str:
    """Markdown: mean ± standard deviation over seeds of each figure, one row per start, captions and setting."""
    header = f"| start | captions | setting ({args.steps} steps, batch {args.batch_size}) | " + " | ".join(
        FIGURES.values()
    )
    lines = [header + " |", "|---" * (len(FIGURES) + 3) + "|"]
    for (start, captions, name), records in results.items():
        cells = [mean_and_spread([r[key] for r in records if key in r]) for key in FIGURES]
        label = ("untrained" if start == "scratch" else "vlviz-scenes") if name == "step 0" else name
        lines.append(f"| {start} | {captions} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=list(STARTS))
    parser.add_argument("--captions", nargs="+", default=list(CAPTIONS), choices=list(CAPTIONS))
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()

    markdown = table(run_all(args), args)
    print(markdown)
    if args.readme:
        write_readme_block("grounding", markdown)


if __name__ == "__main__":
    main()
