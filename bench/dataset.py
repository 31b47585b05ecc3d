"""Exploring a million pairs: the layout, the search index and an opened folder, each against a baseline.

For each size N: a synthetic embedding folder (the issue allows it) of CLIP-like pairs, D = 512 float16 in
npz shards of 10,000 as `embed` writes them: each pair shares one of 1,000 concepts, each modality adds its own
noise (a power-law spectrum) and sits in its own cone (own-pair cosine about 0.48, other pairs 0.10, a modality
gap of 0.65). Then, each in a fresh process timed from start to exit with its peak resident memory:

  prepare   `prepare_dataset(layout=False)`: the pair columns and both search indexes (stage times from its
            progress);
  layout    `prepare_dataset()`: the 2-D map. Baseline: umap-learn's own `transform` of the same fit, timed on
            2,000 points and projected to all 2N, and its neighbour overlap beside ours (the share of each
            point's 10 nearest neighbours in the embedding space that are among its 10 nearest on the map,
            over 2,000 points that were not sampled: 1 keeps every neighbourhood);
  open      `open_dataset(prepare=False)`, its resident memory, then 500 single queries of each direction
            through `EmbeddedDataset.search` (held-out pairs of the same generator: captions and images asking
            the image and the caption index), p95 latency and recall@10 against exact search. Baseline:
            `load_embeddings` of the whole folder (what `report --embeddings` reads) and brute-force search
            over its float32 matrix.

Prints one JSON object and writes it to bench/results/dataset.json (a size measured before and not run again
is kept there); --docs writes its table into docs/dataset.md.

    nice -n 10 python -m bench.dataset                     # 100k and 1M pairs (about an hour at 1M)
    python -m bench.dataset --pairs 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.embed import timed_command
from bench.readme import write_results_block

RESULTS = Path(__file__).resolve().parent / "results" / "dataset.json"
DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "dataset.md"
DIM = 512
SHARD = 10_000
CONCEPTS = 1_000
QUERIES = 500  # single queries timed a direction
LAYOUT_CHECK = 2_000  # points whose placement is timed and scored against umap-learn's transform
HELD_OUT = 10**9  # where the generator's held-out pairs start
TARGETS = {"layout_s": 1800, "layout_peak_rss_mb": 4096, "p95_ms": 100, "recall_at_10": 0.95, "open_rss_mb": 3072}
"""The issue's targets at 1,000,000 pairs on 2 cores."""


def synthetic_pairs(count: int, start: int, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` CLIP-like pairs from position `start` of one seeded generator: (count, dim) float32 image and
    caption embeddings, L2-normalised (the same positions always give the same pairs)."""
    base = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
    scale /= np.linalg.norm(scale)  # a power-law spectrum of unit total variance
    centres = base.standard_normal((CONCEPTS, dim)).astype(np.float32) * scale
    axes = np.linalg.qr(base.standard_normal((dim, 2)))[0].T.astype(np.float32)
    axes[1] = (0.35 * axes[0] + axes[1]) / np.linalg.norm(0.35 * axes[0] + axes[1])  # two cones, 0.33 apart
    rng = np.random.default_rng([seed, start])
    shared = centres[rng.integers(CONCEPTS, size=count)]
    shared += 0.5 * rng.standard_normal((count, dim), dtype=np.float32) * scale
    images = shared + rng.standard_normal((count, dim), dtype=np.float32) * scale + axes[0]
    captions = shared + rng.standard_normal((count, dim), dtype=np.float32) * scale + axes[1]
    return (images / np.linalg.norm(images, axis=1, keepdims=True),
            captions / np.linalg.norm(captions, axis=1, keepdims=True))  # fmt: skip


def write_synthetic_folder(folder: Path, pairs: int, dim: int = DIM, shard_size: int = SHARD) -> None:
    """An embedding folder as `embed` writes it (index.json, npz shards of float16 features), of synthetic pairs."""
    from vlviz.embedding.store import FORMAT_NAME, FORMAT_VERSION, shard_name

    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, first in enumerate(range(0, pairs, shard_size)):
        count = min(shard_size, pairs - first)
        images, captions = synthetic_pairs(count, first, dim)
        positions = np.arange(first, first + count)
        with (folder / shard_name(number, "npz")).open("wb") as file:
            np.savez(file, index=positions, names=np.char.add("pair-", positions.astype(str)),
                     captions=np.char.add("synthetic caption ", positions.astype(str)),
                     image_features=images.astype(np.float16), text_features=captions.astype(np.float16),
                     weights=np.asarray("synthetic"))  # fmt: skip
        shards.append({"file": shard_name(number, "npz"), "first": first, "count": count, "held": count,
                       "complete": True})  # fmt: skip
    index = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": "synthetic", "weights": "synthetic",
             "precision": "float32", "source": "synthetic", "source_options": {}, "shard_size": shard_size,
             "file_format": "npz", "dtype": "float16", "patches": False, "thumbnails": 0, "dim": dim,
             "logit_scale": 100.0, "logit_bias": None, "grid_size": None, "context_length": 77, "pairs": pairs,
             "held": pairs, "skipped": 0, "skipped_pairs": [], "complete": True, "shards": shards}  # fmt: skip
    (folder / "index.json").write_text(json.dumps(index, indent=1))


def _rss_mb() -> float:
    """This process's resident memory now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stage_prepare(folder: Path, layout: bool) -> dict[str, Any]:
    """`prepare_dataset` with the seconds of each stage from its progress."""
    from vlviz.embedding.dataset import prepare_dataset

    first: dict[str, float] = {}
    last: dict[str, float] = {}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        first.setdefault(stage.split()[0], now)
        last[stage.split()[0]] = now

    start = time.perf_counter()
    built = prepare_dataset(folder, layout=layout, progress=progress)
    stages = sorted(first, key=first.get)  # type: ignore[arg-type]
    ends = [first[s] for s in stages[1:]] + [time.perf_counter()]
    return {"built": built, "seconds": round(time.perf_counter() - start, 1),
            "stage_seconds": {s: round(end - first[s], 1) for s, end in zip(stages, ends)}}  # fmt: skip


def _neighbour_overlap(points: np.ndarray, coordinates: np.ndarray, k: int = 10) -> float:
    """The mean share of each point's k nearest neighbours (cosine) that are among its k nearest on the map."""
    import torch

    x, y = torch.from_numpy(points), torch.from_numpy(np.ascontiguousarray(coordinates, dtype=np.float32))
    near = (x @ x.T).fill_diagonal_(-9).topk(k, dim=1).indices
    mapped = torch.cdist(y, y).fill_diagonal_(float("inf")).topk(k, dim=1, largest=False).indices
    return float((near[:, :, None] == mapped[:, None, :]).any(dim=2).float().mean())


def _stage_layout_baseline(folder: Path) -> dict[str, Any]:
    """umap-learn's `transform` against our placement, on LAYOUT_CHECK points the layout did not sample."""
    import torch

    from vlviz.embedding import layout_store
    from vlviz.embedding.folder import open_folder
    from vlviz.embedding.store import sample_positions
    from vlviz.embedding.umap_layout import umap_coordinates

    embeddings = open_folder(folder)
    sample = sample_positions(embeddings.pairs, layout_store.SAMPLE_PAIRS, layout_store.SETTINGS.seed)
    rows = embeddings.rows(sample, ("image_features", "text_features"))
    anchors = np.concatenate([rows["image_features"], rows["text_features"]]).astype(np.float32)
    start = time.perf_counter()
    umap = layout_store.SETTINGS
    coordinates, reducer = umap_coordinates(anchors, umap.n_neighbors, umap.min_dist, umap.metric, umap.seed)
    fit_seconds = time.perf_counter() - start
    others = np.setdiff1d(np.arange(embeddings.pairs), sample)
    chosen = np.random.default_rng(1).choice(others, LAYOUT_CHECK // 2, replace=False)
    check = embeddings.rows(chosen, ("image_features", "text_features"))
    points = np.concatenate([check["image_features"], check["text_features"]]).astype(np.float32)
    start = time.perf_counter()
    theirs = reducer.transform(points)
    transform_seconds = time.perf_counter() - start
    placing = layout_store.Anchors.of(torch.from_numpy(anchors), torch.from_numpy(coordinates))
    start = time.perf_counter()
    ours = placing.place(torch.from_numpy(points))
    place_seconds = time.perf_counter() - start
    other_points = 2 * (embeddings.pairs - len(sample))
    return {
        "umap_fit_s": round(fit_seconds, 1),
        "umap_transform_ms_per_point": round(1000 * transform_seconds / len(points), 3),
        "placement_ms_per_point": round(1000 * place_seconds / len(points), 3),
        "umap_transform_projected_s": round(fit_seconds + transform_seconds / len(points) * other_points, 1),
        "neighbour_overlap_umap_transform": round(_neighbour_overlap(points, theirs), 3),
        "neighbour_overlap_ours": round(_neighbour_overlap(points, ours.numpy()), 3),
    }


def _queries(count: int) -> dict[str, tuple[np.ndarray, str]]:
    """Held-out query vectors of each direction: name -> (vectors, modality searched)."""
    images, captions = synthetic_pairs(count, HELD_OUT)
    return {"text->image": (captions, "image"), "image->image": (images, "image"),
            "text->caption": (captions, "caption"), "image->caption": (images, "caption")}  # fmt: skip


def _stage_open(folder: Path) -> dict[str, Any]:
    """Open, then single queries through the dataset: p95 latency and recall@10 against exact search."""
    from vlviz.embedding.dataset import open_dataset
    from vlviz.embedding.search_index import exact_search, recall_at_k

    start = time.perf_counter()
    dataset = open_dataset(folder, prepare=False)
    opened = {"open_s": round(time.perf_counter() - start, 2), "rss_mb_after_open": round(_rss_mb()),
              "held_bytes_mb": round(dataset.nbytes / 2**20)}  # fmt: skip
    figures: dict[str, Any] = {}
    for name, (vectors, modality) in _queries(QUERIES).items():
        found, times = [], []
        for vector in vectors:
            begin = time.perf_counter()
            hits = dataset.search(vector, k=10, modality=modality)
            times.append(time.perf_counter() - begin)
            found.append(hits.pairs)
        truth = exact_search(dataset.embeddings, vectors, 10, modality).pairs
        figures[name] = {"p95_ms": round(1000 * float(np.percentile(times, 95)), 2),
                         "p50_ms": round(1000 * float(np.median(times)), 2),
                         "recall_at_10": round(recall_at_k(np.stack(found), truth), 4)}  # fmt: skip
    probes = {m: index.probes for m, index in dataset._indexes.items()}
    return {**opened, "rss_mb_after_queries": round(_rss_mb()), "peak_rss_mb": round(_peak_mb()),
            "probes": probes, "directions": figures}  # fmt: skip


def _stage_baseline_open(folder: Path) -> dict[str, Any]:
    """`load_embeddings` of the whole folder, and brute-force single queries over its float32 matrices."""
    import torch

    from vlviz.embedding.store import load_embeddings

    start = time.perf_counter()
    stored = load_embeddings(folder)
    loaded = {"load_s": round(time.perf_counter() - start, 1), "rss_mb_after_load": round(_rss_mb())}
    times = []
    for vectors, modality in _queries(QUERIES // 5).values():
        matrix = stored.image_features if modality == "image" else stored.text_features
        for vector in torch.from_numpy(vectors):
            begin = time.perf_counter()
            (matrix @ vector).topk(10)
            times.append(time.perf_counter() - begin)
    return {**loaded, "exact_p95_ms": round(1000 * float(np.percentile(times, 95)), 2),
            "peak_rss_mb": round(_peak_mb())}  # fmt: skip


STAGES = {"prepare": lambda f: _stage_prepare(f, layout=False), "layout": lambda f: _stage_prepare(f, layout=True),
          "layout-baseline": _stage_layout_baseline, "open": _stage_open, "open-baseline": _stage_baseline_open}  # fmt: skip


def _run_stage(stage: str, folder: Path) -> dict[str, Any]:
    """One stage in a fresh process: its JSON, wall seconds and peak resident memory."""
    seconds, peak, printed = timed_command([sys.executable, "-m", "bench.dataset", "--stage", stage, str(folder)])
    return {**json.loads(printed.strip().splitlines()[-1]), "process_s": round(seconds, 1),
            "process_peak_rss_mb": round(peak)}  # fmt: skip


def bench_size(pairs: int, work: Path) -> dict[str, Any]:
    folder = work / f"synthetic-{pairs}"
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    write_synthetic_folder(folder, pairs)
    written = time.perf_counter() - start
    prepare = _run_stage("prepare", folder)
    layout = _run_stage("layout", folder)
    layout_baseline = _run_stage("layout-baseline", folder)
    opened = _run_stage("open", folder)
    baseline = _run_stage("open-baseline", folder)
    manifest = json.loads((folder / "dataset.json").read_text())["built"]
    search = manifest["search"]
    worst_p95 = max(d["p95_ms"] for d in opened["directions"].values())
    worst_recall = min(d["recall_at_10"] for d in opened["directions"].values())
    result = {
        "pairs": pairs, "dim": DIM, "shards": -(-pairs // SHARD), "write_folder_s": round(written, 1),
        "folder_mb": round(sum(p.stat().st_size for p in folder.glob("embeddings-*")) / 2**20),
        "columns_s": prepare["stage_seconds"].get("columns"),
        "search": {
            "build_s": round(prepare["stage_seconds"]["search"], 1), "lists": search["lists"], "code": search["code"],
            "probes": opened["probes"], "index_mb": round(sum(f["bytes"] for f in search["files"].values()) / 2**20),
            "columns_and_search_process_peak_rss_mb": prepare["process_peak_rss_mb"],
            "directions": opened["directions"], "exact_p95_ms": baseline["exact_p95_ms"],
            "p95_speedup_vs_exact": round(baseline["exact_p95_ms"] / worst_p95, 1),
            "worst_p95_ms": worst_p95, "worst_recall_at_10": worst_recall,
        },
        "layout": {
            "s": layout["seconds"], "process_s": layout["process_s"], "peak_rss_mb": layout["process_peak_rss_mb"],
            "method": manifest["layout"]["method"],
            **{key: value for key, value in layout_baseline.items() if not key.startswith("process_")},
            "speedup_vs_umap_transform": round(layout_baseline["umap_transform_projected_s"] / layout["seconds"], 1),
        },
        "open": {
            "s": opened["open_s"], "process_s": opened["process_s"], "rss_mb_after_open": opened["rss_mb_after_open"],
            "rss_mb_after_queries": opened["rss_mb_after_queries"], "peak_rss_mb": opened["process_peak_rss_mb"],
            "baseline_load_embeddings_s": baseline["load_s"], "baseline_rss_mb": baseline["rss_mb_after_load"],
            "rss_ratio_vs_baseline": round(baseline["rss_mb_after_load"] / opened["rss_mb_after_queries"], 1),
        },
    }  # fmt: skip
    result["targets_met"] = {
        "layout_s": layout["process_s"] <= TARGETS["layout_s"],
        "layout_peak_rss_mb": layout["process_peak_rss_mb"] <= TARGETS["layout_peak_rss_mb"],
        "p95_ms": worst_p95 <= TARGETS["p95_ms"], "recall_at_10": worst_recall >= TARGETS["recall_at_10"],
        "open_rss_mb": opened["process_peak_rss_mb"] <= TARGETS["open_rss_mb"],
    }  # fmt: skip
    shutil.rmtree(folder)
    return result


def docs_table(results: list[dict[str, Any]]) -> str:
    """The figures as the Markdown table of docs/dataset.md."""
    rows = ["| pairs | layout | search index build | search p95 (worst direction) | recall@10 (worst) | open |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        s, lay, o = r["search"], r["layout"], r["open"]
        rows.append(
            f"| {r['pairs']:,} | {lay['process_s']:.0f} s, {lay['peak_rss_mb']:,} MB peak "
            f"(umap-learn's transform: {lay['umap_transform_projected_s']:.0f} s projected, "
            f"{lay['speedup_vs_umap_transform']}×; neighbour overlap {lay['neighbour_overlap_ours']} vs "
            f"{lay['neighbour_overlap_umap_transform']}) | {s['build_s']:.0f} s, {s['index_mb']} MB "
            f"(L = {s['lists']}) | {s['worst_p95_ms']} ms (exact: {s['exact_p95_ms']} ms, "
            f"{s['p95_speedup_vs_exact']}×) | {s['worst_recall_at_10']} | {o['s']} s, {o['peak_rss_mb']:,} MB peak "
            f"(`load_embeddings`: {o['baseline_rss_mb']:,} MB, {o['rss_ratio_vs_baseline']}×) |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workdir", default=None, help="where the synthetic folders go (default: a temp dir)")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/dataset.md")
    parser.add_argument("--stage", nargs=2, metavar=("STAGE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(STAGES[args.stage[0]](Path(args.stage[1]))))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vlviz-bench-dataset-"))
    for pairs in args.pairs:  # the file is rewritten after each size, so a long run keeps what it measured
        measured = {**bench_size(pairs, work), "load_average_1min_at_end": round(os.getloadavg()[0], 2)}
        kept = json.loads(RESULTS.read_text())["sizes"] if RESULTS.exists() else []
        results = sorted([r for r in kept if r["pairs"] != pairs] + [measured], key=lambda r: r["pairs"])
        report = {"cpus": os.cpu_count(), "targets_at_1m": TARGETS, "sizes": results}
        RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    if args.docs:
        write_results_block("dataset", docs_table(results), DOCS_PAGE)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
