"""The recipe of the grounded offline model `vlviz-scenes-grounded`: `vlviz-scenes` trained on with word-region
contrast while both towers' tokens are read before any block (issue 23; docs/grounding.md).

Attention moves a word's evidence off its object block by block, and the causal text tower carries earlier
words into later tokens; read before the blocks, each patch token holds its own patch and each caption token
its own word, so the grouping can only match a word to the patches that look like it. The global embeddings
stay the towers' outputs, so retrieval keeps what `vlviz-scenes` learnt. `python -m vlviz build-offline-model
--grounded` runs it; the saved model says where its maps are read (`vlviz.models.towers.TokenReadout`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from vlviz.models.checkpoints import save_checkpoint
from vlviz.models.loading import OFFLINE_SPEC
from vlviz.training.config import TrainConfig
from vlviz.training.evaluation import is_evaluation
from vlviz.training.runs import prepare_run

GROUNDED_CAPTIONS = "varied"  # the richer caption style: word order and phrasing change, so position cannot stand in
GROUNDED_MODEL_TRAIN_CONFIG = TrainConfig(
    steps=400, batch_size=32, lr=2e-4, warmup_steps=20, eval_every=100, losses={"word_region": 1.0},
    image_token_blocks=0, text_token_blocks=0,
)  # fmt: skip


def build_grounded_model(
    out_dir: str | Path, config: TrainConfig = GROUNDED_MODEL_TRAIN_CONFIG, captions: str = GROUNDED_CAPTIONS
) -> Iterator[dict]:
    """Train `vlviz-scenes-grounded` from `vlviz-scenes` and save it (fp16 weights, its readout) to `out_dir`.

    Yields the run's records (evaluations carry the held-out figures); the log and config are saved beside it.
    """
    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as scratch:
        run = prepare_run(OFFLINE_SPEC, "scenes", config, scratch, captions=captions)
        log = []
        for record in run.records():
            log.append(record)
            yield record
        save_checkpoint(run.model, run.model_cfg, out, dtype=torch.float16)
    (out / "train_config.json").write_text(json.dumps(asdict(config) | {"start": OFFLINE_SPEC, "captions": captions}))
    (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log if is_evaluation(r)))
