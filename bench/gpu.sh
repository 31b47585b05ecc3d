#!/usr/bin/env bash
# The GPU checks in one call (for a lent GPU machine: `bash bench/gpu.sh`, about 8 minutes on one GPU):
# install exactly as the README says, run the CUDA tests (`pytest -m gpu`), then the encode, train and
# SPARC benchmarks on `--device cuda`. Every result goes to $OUT (default: ./gpu-results) as JSON/text.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv && .venv/bin/pip install -q -r requirements-dev.txt > "$OUT/install.txt" 2>&1
fi
.venv/bin/python -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.device_count())" \
    > "$OUT/torch.txt" 2>&1
timeout 300 .venv/bin/python -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py > "$OUT/pytest-gpu.txt" 2>&1
echo "pytest exit $?" >> "$OUT/pytest-gpu.txt"
timeout 60 .venv/bin/python -m bench.encode --device cuda > "$OUT/encode.json" 2> "$OUT/encode.err"
timeout 60 .venv/bin/python -m bench.train --device cuda > "$OUT/train.json" 2> "$OUT/train.err"
timeout 60 .venv/bin/python -m bench.sparc --device cuda > "$OUT/sparc.json" 2> "$OUT/sparc.err"
tail -n 3 "$OUT"/pytest-gpu.txt "$OUT"/*.json
