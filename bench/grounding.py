"""Does SPARC ground words on scenes? CLIP, SPARC and SIMLA at equal compute, from scratch and continual,
on template and varied captions, over seeds: the table issue 12 asks for, whatever it shows.

Every run trains `--steps` steps of batch `--batch-size` on scenes of one caption style and is evaluated
on held-out scenes of the same style (`vlviz.training.evaluation`): image -> text R@1, the SPARC pointing
game of colour and shape words, and object accuracy (of the words whose peak patch lies on some object,
the share on the one named; object chance is about 0.5). Step 0 of a run from scratch is the untrained
model, of a continual run the shipped `vlviz-scenes`: both are rows of the table.

Each finished run is appended to `--results` (JSON lines, committed beside this script), and a run
already there is not trained again: the grid resumes where a stopped session left it, and the table
(all runs in the file at these steps, batch size and learning rate) can be rebuilt without training.
`--docs` writes the table into docs/results/grounding.md between its markers.

    python -m bench.grounding --docs        # the main grid: 2 starts x 2 caption styles x 4 settings x 3 seeds
    python -m bench.grounding --starts scratch --captions varied \\
        --settings "SPARC, mean pooling" "SPARC, mean pooling, λf 5" --docs      # SPARC's open options
    python -m bench.grounding --table-only --docs       # the table of the runs done so far, nothing trained
    python -m bench.grounding --steps 5 --seeds 0 --settings CLIP --starts scratch --results /tmp/smoke.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

from bench.readme import mean_and_spread, write_results_block
from vlviz.training.config import TrainConfig
from vlviz.training.runs import prepare_run

# name -> (loss weights, loss options[, other TrainConfig fields])
SETTINGS: dict[str, tuple] = {
    "CLIP": ({"clip": 1.0}, {}),
    "SPARC (paper: λg 0.5, λf 1)": ({"sparc": 1.0}, {}),
    "SPARC, λf 5": ({"sparc": 1.0}, {"sparc": {"fine_weight": 5.0}}),  # the paper sweeps λf, names none
    "SIMLA (CLIP + XMM + PSL)": ({"clip": 1.0, "xmm": 1.0, "psl": 1.0}, {}),
    # SPARC's options where the paper is silent: the global term on mean-pooled patch and token embeddings
    "SPARC, mean pooling": ({"sparc": 1.0}, {"sparc": {"global_pooling": "mean"}}),
    "SPARC, mean pooling, λf 5": ({"sparc": 1.0}, {"sparc": {"global_pooling": "mean", "fine_weight": 5.0}}),
    # vlviz's own cross-image variant (vlviz.losses.word_region), not SPARC
    "word-region (vlviz)": ({"word_region": 1.0}, {}),
    "word-region, threshold 0.5": ({"word_region": 1.0}, {"word_region": {"threshold": 0.5}}),
    # where the grouping reads each tower's tokens (`TrainConfig.image_token_blocks`, `text_token_blocks`; issue 23)
    "word-region, read before the blocks": (
        {"word_region": 1.0},
        {},
        {"image_token_blocks": 0, "text_token_blocks": 0},
    ),
    "word-region, image after block 1, text before": (
        {"word_region": 1.0},
        {},
        {"image_token_blocks": 1, "text_token_blocks": 0},
    ),
    "word-region, threshold 0.5, read before the blocks": (
        {"word_region": 1.0},
        {"word_region": {"threshold": 0.5}},
        {"image_token_blocks": 0, "text_token_blocks": 0},
    ),
}
MAIN_SETTINGS = list(SETTINGS)[:4]
RESULTS = Path(__file__).with_name("results") / "grounding.jsonl"
STARTS = {"scratch": "fresh", "continual": "vlviz-scenes"}
CAPTIONS = ("template", "varied")
FIGURES = {
    "image_to_caption_r1": "i→caption R@1",
    "pointing_game_colour": "pointing (colour)",
    "pointing_game_shape": "pointing (shape)",
    "object_accuracy_colour": "object acc. (colour)",
    "object_accuracy_shape": "object acc. (shape)",
    "peak_stability_colour": "peak stability (colour)",  # 1: colour words peak where they would on any image
    "blank_peak_share_colour": "blank-scene peak share (colour)",  # colour words peaking on a blank scene's top patch
    # the naming-order diagnostic: pointing of the colour word named first, second, third in its caption
    **{
        f"pointing_game_colour_named_{place}": f"pointing (colour named {nth})"
        for place, nth in enumerate(["1st", "2nd", "3rd"], 1)
    },
}
# Derived from a record, not measured again: pointing = (share of words peaking on some object) x object accuracy
COLUMNS = {**FIGURES, "on_object_colour": "peak on an object (colour)"}


def with_derived(figures: dict) -> dict:
    """A record's figures plus the share of colour words whose peak patch lies on some object (pointing / object acc.)."""
    pointing, accuracy = figures.get("pointing_game_colour"), figures.get("object_accuracy_colour")
    share = pointing / accuracy if pointing is not None and accuracy else None  # no word on an object: unknown
    return figures | {"on_object_colour": share}


def run_one(start: str, captions: str, setting: tuple, args: argparse.Namespace, seed: int) -> list[dict]:
    """The records of one run of a `SETTINGS` entry: step 0 (the start model) and the last step."""
    losses, options, *fields = setting
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, eval_every=args.steps, seed=seed,
        losses=losses, loss_options=options, **(fields[0] if fields else {}),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        records = list(prepare_run(start, "scenes", config, scratch, captions=captions).records())
    return [records[0], records[-1]]


def _same_budget(row: dict, args: argparse.Namespace) -> bool:
    return (row["steps"], row["batch_size"], row["lr"]) == (args.steps, args.batch_size, args.lr)


def run_all(args: argparse.Namespace) -> list[dict]:
    """Train every run of the grid not yet in `args.results`, appending each as it finishes; return the file's rows."""
    args.results.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.results.read_text().splitlines()] if args.results.exists() else []
    done = {(r["start"], r["captions"], r["setting"], r["seed"]) for r in rows if _same_budget(r, args)}
    grid = itertools.product(args.seeds, args.starts, args.captions, args.settings)  # seed-major: a whole table first
    for seed, start, captions, name in grid:
        if (start, captions, name, seed) in done:
            continue
        first, last = run_one(STARTS[start], captions, SETTINGS[name], args, seed)
        row = {"start": start, "captions": captions, "setting": name, "seed": seed, "steps": args.steps,
               "batch_size": args.batch_size, "lr": args.lr}  # fmt: skip
        row |= {"step0": {k: first.get(k) for k in FIGURES}, "last": {k: last.get(k) for k in FIGURES}}
        with args.results.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """Markdown: mean ± standard deviation over seeds of each figure, one row per start, captions and setting.

    The start model's row (untrained, or `vlviz-scenes`) gathers step 0 of every run: one fresh model per
    seed from scratch, the same shipped model for every continual run (its spread is the held-out sampling).
    """
    groups: dict[tuple[str, str, str], dict[int, dict]] = {}  # (start, captions, setting) -> seed -> figures
    for row in (r for r in rows if _same_budget(r, args)):
        start, captions, seed = row["start"], row["captions"], row["seed"]
        groups.setdefault((start, captions, "step 0"), {})[seed] = with_derived(row["step0"])
        groups.setdefault((start, captions, row["setting"]), {})[seed] = with_derived(row["last"])
    order = {name: i for i, name in enumerate(["step 0", *SETTINGS])}
    keys = sorted(groups, key=lambda k: (list(STARTS).index(k[0]), CAPTIONS.index(k[1]), order[k[2]]))
    header = f"| start | captions | setting ({args.steps} steps, batch {args.batch_size}, seeds) | " + " | ".join(
        COLUMNS.values()
    )
    lines = [header + " |", "|---" * (len(COLUMNS) + 3) + "|"]
    for start, captions, name in keys:
        records = list(groups[(start, captions, name)].values())
        cells = [mean_and_spread([r[key] for r in records if r.get(key) is not None]) for key in COLUMNS]
        label = ("untrained" if start == "scratch" else "vlviz-scenes") if name == "step 0" else name
        lines.append(f"| {start} | {captions} | {label} ({len(records)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=MAIN_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=list(STARTS))
    parser.add_argument("--captions", nargs="+", default=list(CAPTIONS), choices=list(CAPTIONS))
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON lines of finished runs (resumed)")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/results/grounding.md")
    parser.add_argument("--table-only", action="store_true", help="train nothing: the table of the runs in --results")
    args = parser.parse_args()

    if args.table_only:
        rows = [json.loads(line) for line in args.results.read_text().splitlines()] if args.results.exists() else []
    else:
        rows = run_all(args)
    markdown = table(rows, args)
    print(markdown)
    if args.docs:
        write_results_block("grounding", markdown)


if __name__ == "__main__":
    main()
