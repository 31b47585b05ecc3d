"""A Dataset-tab selection analysed, against the bare read and encode of the same pairs (issue 24).

`python -m bench.selection [--pairs 20000] [--select 1000] [--repeats 3] [--workdir DIR] [--docs]` writes N scenes
(64 px) as uncompressed webdataset tars of 10,000 (`bench.embed.write_scene_tars`) and embeds them with the offline
model in its own process (`python -m vlviz embed --thumbnails 64`; a rerun on the same --workdir resumes it). It then
picks `select` pairs spread evenly over the folder (the last one near its end, so a reader that streams the source
reads all of it) and times, in this process, each with a fresh model (no encoding cached between them):

  selection  what sending a selection to Analyze does: `EmbeddedDataset.pairs` (each image read where `embed` found
             it in its tar, `vlviz.data.formats.read_located_images`, and decoded), `encode_pair_set` (global, patch
             and token embeddings, as Analyze holds them) and the Affinity view's figures and heatmaps;
  streamed   the same with the stored locations ignored: the source streamed from its start to the last selected
             pair, as folders embedded without locations (or compressed shards) are read;
  baseline   the bare read and encode of those pairs: the same PNG files read from a folder, decoded
             (`load_image`) and encoded by `encode_images` / `encode_texts` (global embeddings).

Prints one JSON object (also written to bench/results/selection.json) with the best of `repeats` for selection and
baseline, one streamed run, and their ratios to the baseline (issue 24's target: selection <= 5x).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.embed import TAR_SAMPLES, timed_command, write_scene_tars
from bench.readme import write_results_block
from vlviz.data.inputs import load_image
from vlviz.embedding.dataset import EmbeddedDataset, open_dataset
from vlviz.metrics.affinity import affinity_report, pair_figures
from vlviz.models.encoding import VLModel, encode_pair_set
from vlviz.models.loading import OFFLINE_SPEC, load_model
from vlviz.viz.views import affinity_view

RESULTS = Path(__file__).resolve().parent / "results" / "selection.json"
TARGET_RATIO = 5.0


def fresh(model: VLModel) -> VLModel:
    """The same weights with empty encoding caches: each measurement encodes everything it needs."""
    return VLModel(model.spec, model.model, model.preprocess, model.tokenizer, model.device, model.model_cfg)


def extract_pngs(data: Path, positions: np.ndarray, out: Path) -> tuple[list[Path], list[str]]:
    """The PNG files and captions of the scenes at `positions` (bench.embed names them by position), as files."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = {f"{int(p):07d}" for p in positions}
    files, captions = {}, {}
    for tar_path in sorted(data.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                if key in wanted:
                    data_bytes = tar.extractfile(member).read()
                    if extension == "png":
                        (out / member.name).write_bytes(data_bytes)
                        files[key] = out / member.name
                    else:
                        captions[key] = data_bytes.decode()
    keys = sorted(wanted)
    return [files[key] for key in keys], [captions[key] for key in keys]


def analyse_selection(dataset: EmbeddedDataset, chosen: np.ndarray, model: VLModel) -> dict[str, float]:
    """Seconds of each stage of sending `chosen` to Analyze."""
    start = time.perf_counter()
    pairs = dataset.pairs(chosen, max_pairs=len(chosen))
    read = time.perf_counter()
    encoded = encode_pair_set(model, pairs)
    encoding = encoded.encoding
    encode = time.perf_counter()
    figures = pair_figures(encoding.image_features, encoding.text_features, encoding.logit_scale, encoding.logit_bias)
    report = affinity_report(
        encoding.image_features, encoding.text_features, encoding.logit_scale, encoding.logit_bias,
        shown=np.arange(min(300, len(pairs))), pairs=figures,
    )  # fmt: skip
    affinity_view(report, pairs.names, pairs.captions)
    done = time.perf_counter()
    return {"s": done - start, "read_s": read - start, "encode_s": encode - read, "views_s": done - encode}


def bare_read_and_encode(files: list[Path], captions: list[str], model: VLModel) -> dict[str, float]:
    start = time.perf_counter()
    images = [load_image(path) for path in files]
    read = time.perf_counter()
    model.encode_images(images)
    model.encode_texts(captions)
    done = time.perf_counter()
    return {"s": done - start, "read_s": read - start, "encode_s": done - read}


def run(pairs: int, select: int, repeats: int, work: Path) -> dict[str, Any]:
    tars = -(-pairs // TAR_SAMPLES)
    data, out = work / "data", work / "embeddings"
    if len(list(data.glob("*.tar"))) != tars:
        write_scene_tars(data, pairs)
    source = str(data / f"{{0000..{tars - 1:04d}}}.tar")
    command = [sys.executable, "-m", "vlviz", "embed", "--model", OFFLINE_SPEC, "--data", source, "--out", str(out)]
    embed_s, embed_peak_mb, _ = timed_command([*command, "--thumbnails", "64"])
    dataset = open_dataset(out, layout=False)
    chosen = np.linspace(0, len(dataset) - 1, select).round().astype(np.int64)
    files, captions = extract_pngs(data, dataset.positions[chosen], work / "selected")
    model = load_model(OFFLINE_SPEC, device="cpu")
    baseline, selection = [], []
    for _ in range(repeats):  # interleaved, so a busy moment of the machine hits both
        baseline.append(bare_read_and_encode(files, captions, fresh(model)))
        selection.append(analyse_selection(dataset, chosen, fresh(model)))
    streaming = open_dataset(out, layout=False)
    streaming._image_locations = lambda chosen: None  # as a folder without locations is read
    streamed = analyse_selection(streaming, chosen, fresh(model))
    best_baseline, best_selection = min(baseline, key=lambda r: r["s"]), min(selection, key=lambda r: r["s"])
    rounded = {name: {key: round(value, 3) for key, value in record.items()}
               for name, record in (("baseline", best_baseline), ("selection", best_selection), ("streamed", streamed))}  # fmt: skip
    return {
        "pairs": len(dataset), "selected": select, "repeats": repeats, "embed_s": round(embed_s, 1),
        "embed_peak_rss_mb": round(embed_peak_mb), **rounded,
        "selection_ratio": round(best_selection["s"] / best_baseline["s"], 2),
        "streamed_ratio": round(streamed["s"] / best_baseline["s"], 2),
        "target_ratio": TARGET_RATIO, "target_met": best_selection["s"] / best_baseline["s"] <= TARGET_RATIO,
    }  # fmt: skip


def docs_table(result: dict[str, Any]) -> str:
    rows = ["| | seconds | read | encode | views | ratio to the bare read + encode |", "|---|---|---|---|---|---|"]
    for name, label in (("baseline", "bare read + encode (baseline)"), ("selection", "selection -> Analyze"),
                        ("streamed", "the same, source streamed")):  # fmt: skip
        record = result[name]
        ratio = record["s"] / result["baseline"]["s"]
        rows.append(
            f"| {label} | {record['s']:.2f} | {record['read_s']:.2f} | {record['encode_s']:.2f} "
            f"| {record.get('views_s', 0):.2f} | {ratio:.2f}x |"
        )
    return f"{result['selected']:,} pairs spread over a folder of {result['pairs']:,}.\n\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--select", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="data and folder (default: a temp dir); reused when given")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/results/selection.md")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vlviz-bench-selection-"))
    result = run(args.pairs, args.select, args.repeats, work)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    if args.docs:
        write_results_block("selection", docs_table(result))


if __name__ == "__main__":
    main()
