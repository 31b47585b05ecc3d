"""Sharded embedding at scale: `embed` N generated scene pairs from webdataset shards, then `report` from the folder.

Writes N scenes (64 px, template captions, seeds 0..N-1) as webdataset tars of 10,000 samples, then
runs the two commands a user runs, each in its own process: `python -m vlviz embed` (or `torchrun
--nproc_per_node R -m vlviz embed` with --ranks R) and `python -m vlviz report --embeddings`, timing each
from process start to exit (imports and model load included) with the peak resident memory of its
largest process; then reruns `embed` to time a resume of a complete folder. Prints one JSON object.

    python -m bench.embed                        # 100k pairs, offline model, one process
    python -m bench.embed --pairs 20000 --ranks 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlviz.cli.report import REPORT_MAX_PAIRS
from vlviz.data.scenes import generate_scenes
from vlviz.models.loading import OFFLINE_SPEC

TAR_SAMPLES = 10_000  # samples per webdataset tar
CHUNK = 1_000  # scenes generated at a time


def write_scene_tars(folder: Path, pairs: int, fields: bool = False) -> str:
    """`pairs` scenes as webdataset tars ({key}.png + {key}.txt); returns their brace pattern. With `fields` each
    sample also has a {key}.json of numbers, as LAION's shards keep theirs: its objects and their mean size (0 small,
    1 large), which `embed` keeps as the source's columns."""
    folder.mkdir(parents=True, exist_ok=True)
    tars = -(-pairs // TAR_SAMPLES)
    for number in range(tars):
        with tarfile.open(folder / f"{number:04d}.tar", "w") as tar:
            for start in range(number * TAR_SAMPLES, min(pairs, (number + 1) * TAR_SAMPLES), CHUNK):
                count = min(CHUNK, pairs - start, (number + 1) * TAR_SAMPLES - start)
                scenes = generate_scenes(count, seed=start, image_size=64)
                objects = scenes.present.sum(axis=1)
                mean_size = (scenes.size * scenes.present).sum(axis=1) / np.maximum(objects, 1)
                for offset, (image, caption) in enumerate(zip(scenes.pil_images(), scenes.captions)):
                    png = io.BytesIO()
                    image.save(png, format="PNG")
                    key = f"{start + offset:07d}"
                    members = [(f"{key}.png", png.getvalue()), (f"{key}.txt", caption.encode())]
                    if fields:
                        facts = {"objects": int(objects[offset]), "mean_size": round(float(mean_size[offset]), 3)}
                        members.append((f"{key}.json", json.dumps(facts).encode()))
                    for name, data in members:
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    return str(folder / f"{{0000..{tars - 1:04d}}}.tar")


_PEAK = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)
"""A small launcher that runs a command and prints its peak RSS (KiB): the peak of a child forked from this
process would start at this process's own (Linux keeps the pre-exec high-water mark)."""


def timed_command(command: list[str]) -> tuple[float, float, str]:
    """Run a command to its end: wall seconds, the peak RSS in MB of its largest process (torchrun's ranks
    included), and its stdout."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, *command], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, int(done.stderr.strip().splitlines()[-1]) / 1024, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--model", default=OFFLINE_SPEC)
    parser.add_argument("--ranks", type=int, default=1, help="torchrun processes (1: a plain process)")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--format", default="npz", choices=["npz", "parquet"])
    parser.add_argument("--sample", type=int, default=REPORT_MAX_PAIRS, help="report: pairs analysed")
    parser.add_argument("--method", default="umap", choices=["umap", "pca"], help="report: the embedding map")
    parser.add_argument("--workdir", default=None, help="where data, shards and report go (default: a temp dir)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="vlviz-bench-embed-"))
    start = time.perf_counter()
    source = write_scene_tars(work / "data", args.pairs)
    data_seconds = time.perf_counter() - start
    out, report = work / "embeddings", work / "report"
    shutil.rmtree(out, ignore_errors=True)
    launcher = [sys.executable, "-m"] if args.ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.ranks), "-m"
    ]  # fmt: skip
    embed = [*launcher, "vlviz", "embed", "--model", args.model, "--data", source, "--out", str(out),
             "--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size), "--format", args.format]  # fmt: skip
    embed_seconds, embed_peak, printed = timed_command(embed)
    summary = json.loads(printed.strip().splitlines()[-1])
    resume_seconds, _, _ = timed_command(embed)
    report_seconds, report_peak, _ = timed_command([
        sys.executable, "-m", "vlviz", "report", "--embeddings", str(out), "--out", str(report),
        "--sample", str(args.sample), "--method", args.method,
    ])  # fmt: skip
    facts = json.loads((report / "report.json").read_text())
    print(json.dumps({
        "pairs": summary["pairs"], "model": args.model, "ranks": args.ranks, "format": args.format,
        "shard_size": args.shard_size, "batch_size": args.batch_size, "shards": summary["shards"],
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "write_webdataset_s": round(data_seconds, 1),
        "embed_s": round(embed_seconds, 1), "embed_s_per_1k_pairs": round(1000 * embed_seconds / args.pairs, 2),
        "embed_pairs_per_s": round(args.pairs / embed_seconds, 1), "embed_peak_rss_mb": round(embed_peak),
        "folder_mb": round(sum(p.stat().st_size for p in out.iterdir()) / 2**20, 1),
        "resume_complete_s": round(resume_seconds, 1),
        "report_s": round(report_seconds, 1), "report_peak_rss_mb": round(report_peak),
        "report_pairs": facts["pairs"], "report_method": args.method, "workdir": str(work),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
