"""Time and peak memory of the chunked SaCo figures and top-k, against the dense path.

For each N: random L2-normalised image embeddings (D = 512) and captions that are noisy copies
of them (so the two affinities correlate, as in a trained model). The chunked pass is
`consistency_summary` (global figures, per-sample scores, top-k pairs, never an N x N matrix);
the dense baseline is `consistency_figures` plus a top-k over the full |A_I - A_T| matrix,
run only up to --dense-max. Each measurement runs in a fresh subprocess, so that its peak
memory (the growth of the process's maximum resident set, or CUDA's peak allocation) belongs to
it alone; the time is one run after a small warm-up. Prints one JSON object.

The workers run with the default allocator: `consistency_summary` reuses five preallocated tiles, so
its loop allocates nothing tile-sized and glibc's heap cannot fragment (before, with a fresh 32 MB
temporary per step, the resident set grew by about 12 MB per tile: 14 GB at N = 100k). `peak_rss_mb`
is the worker's whole resident set at its peak (embeddings, torch and all); `peak_mb` its growth
during the pass.

    python -m bench.consistency                          # N = 1k, 10k, 100k
    python -m bench.consistency --sizes 1000 10000       # a busy machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from vlviz.metrics.consistency import consistency_figures, consistency_summary, inconsistency_matrix

D = 512


def _embeddings(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded pairs, made in blocks so that no temporary raises the peak memory before the timed run."""
    generator = torch.Generator().manual_seed(n)
    images, texts = torch.empty(n, D, device=device), torch.empty(n, D, device=device)
    for start in range(0, n, 4096):
        block = torch.randn(min(4096, n - start), D, generator=generator)
        images[start : start + len(block)] = F.normalize(block, dim=-1)
        noise = torch.randn(len(block), D, generator=generator) / 20
        texts[start : start + len(block)] = F.normalize(block + noise, dim=-1)
    return images, texts


def _dense(images: torch.Tensor, texts: torch.Tensor, k: int) -> dict[str, object]:
    figures = consistency_figures(images, texts)
    difference = inconsistency_matrix(images, texts).triu(diagonal=1)  # (N, N); each pair i < j once
    values, flat = difference.view(-1).topk(k)
    n = images.shape[0]
    return {"figures": figures.to_dict(), "top": [(int(f) // n, int(f) % n) for f in flat], "top_values": values}


def _chunked(images: torch.Tensor, texts: torch.Tensor, k: int) -> dict[str, object]:
    summary = consistency_summary(images, texts, k=k)
    top = summary.top_pairs
    return {
        "figures": summary.figures.to_dict(),
        "top": list(zip(top.first.tolist(), top.second.tolist())),
        "top_values": top.inconsistency,
    }


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _worker(mode: str, n: int, k: int, device: torch.device) -> dict[str, object]:
    """One measurement in this (fresh) process."""
    run = _dense if mode == "dense" else _chunked
    run(*_embeddings(64, device), k)  # warm-up: allocator, kernels, thread pool
    images, texts = _embeddings(n, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = _peak_bytes(device)
    start = time.perf_counter()
    out = run(images, texts, k)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    out["top_values"] = [round(float(v), 6) for v in out["top_values"]]
    peak = _peak_bytes(device)
    return {"seconds": round(seconds, 3), "peak_mb": round((peak - before) / 2**20, 1),
            "peak_rss_mb": round(peak / 2**20, 1), **out}  # fmt: skip


def _measure(mode: str, n: int, k: int, device: str) -> dict[str, object]:
    command = [sys.executable, "-m", "bench.consistency", "--worker", mode, "--sizes", str(n), "--k", str(k)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # the default allocator
    done = subprocess.run([*command, "--device", device], capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dense-max", type=int, default=10_000, help="largest N for the dense baseline")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worker", choices=["dense", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.sizes[0], args.k, torch.device(args.device))))
        return

    results = []
    for n in args.sizes:
        chunked = _measure("chunked", n, args.k, args.device)
        row = {"n": n, "chunked": {key: chunked[key] for key in ("seconds", "peak_mb", "peak_rss_mb", "figures")}}
        if n <= args.dense_max:
            dense = _measure("dense", n, args.k, args.device)
            row["dense"] = {key: dense[key] for key in ("seconds", "peak_mb", "figures")}
            row["dense_over_chunked"] = {
                "time": round(dense["seconds"] / chunked["seconds"], 2),
                "memory": round(dense["peak_mb"] / max(chunked["peak_mb"], 0.1), 1),
            }
            row["same_top_k"] = chunked["top"] == dense["top"]
            row["max_figure_difference"] = max(
                abs(chunked["figures"][key] - dense["figures"][key])
                for key in ("mean_abs_inconsistency", "pearson", "symmetric_kl")
            )
        results.append(row)
    print(json.dumps({
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "dimension": D,
        "k": args.k,
        "results": results,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
