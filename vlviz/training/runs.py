"""A training run from start to checkpoint: the one code path behind `python -m vlviz train` and the Train tab.

`prepare_run` turns user choices (a model to start from, a data source, a config) into a ready
`Run`; iterating `Run.records()` trains, evaluates (held-out figures plus retention on a probe set
the run never trains on), appends every evaluation to ``metrics.jsonl`` and writes the checkpoint
atomically at the end or when stopped (never for a run that diverged: see `NonFiniteLossError`).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP

from vlviz.data.formats import read_pairs
from vlviz.data.inputs import PairSet, load_pairs_folder
from vlviz.data.samples import SAMPLES_DIR
from vlviz.data.sources import HeldOut, PairSource, SceneSource
from vlviz.losses.heads import save_loss_heads
from vlviz.models.checkpoints import save_checkpoint
from vlviz.models.encoding import VLModel
from vlviz.models.loading import load_model, resolve_device
from vlviz.models.towers import grid_size, input_side, preprocess_stats, set_token_readout
from vlviz.training.config import NonFiniteLossError, TrainConfig
from vlviz.training.distributed import DistributedContext
from vlviz.training.evaluation import HeldOutPass, evaluate, evaluation, is_evaluation
from vlviz.training.loop import Source, build_losses, train
from vlviz.training.offline_model import SCENES_MODEL_CFG, scenes_tokenizer
from vlviz.training.probe import ProbeBatch, ProbeMeasurement

FRESH = "fresh"  # start from a randomly initialised model of the offline architecture
WEIGHTS_NAME = "checkpoint.safetensors"
HELD_OUT_SCENES = 256


def parse_loss_weights(text: str) -> dict[str, float]:
    """``"clip=1,saco=0.5"`` -> ``{"clip": 1.0, "saco": 0.5}``; names are checked by the trainer's registry."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise ValueError(f"Bad loss weight {part!r}: write NAME=NUMBER, e.g. saco=0.5.") from None
    if not weights:
        raise ValueError("Give at least one loss, e.g. clip=1.")
    return weights


@dataclass
class Run:
    """A prepared run: an fp32 copy of the start model on its device, its data, and where it writes."""

    model: torch.nn.Module
    tokenizer: object
    model_cfg: dict
    source: Source
    probe: HeldOut | None
    config: TrainConfig
    out_dir: Path
    start: str
    data: str
    context: DistributedContext = field(default_factory=DistributedContext)
    stop: threading.Event = field(default_factory=threading.Event)
    # The loss modules (`prepare_run` builds them): their trained heads are saved beside the checkpoint.
    losses: dict[str, torch.nn.Module] | None = None
    # What the run tells its user before it starts (`TrainConfig.notices_for`, e.g. clip on a SigLIP model).
    notices: list[str] = field(default_factory=list)
    captions: str | None = None  # the caption style of a scenes run (`CAPTION_STYLES`); None for pairs
    _probe_batch: ProbeBatch | None = field(default=None, init=False, repr=False)
    _probe_pass: tuple[int, HeldOutPass] | None = field(default=None, init=False, repr=False)  # the last evaluation's

    def probe_measurement(self, step: int) -> ProbeMeasurement:
        """A fixed held-out probe batch under the model as it was at evaluation `step` (see `vlviz.training.probe`),
        read from that evaluation's pass over the held-out split; at any other step, under the model as it is now."""
        if self._probe_pass is not None and self._probe_pass[0] == step:
            return self._probe().measure_pass(self._probe_pass[1], grid_size(self.model), self.tokenizer, step)
        return self._probe().measure(self.model, self.tokenizer, step)

    def _probe(self) -> ProbeBatch:
        if self._probe_batch is None:
            self._probe_batch = ProbeBatch(self.source.held_out, *preprocess_stats(self.model))
        return self._probe_batch

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / WEIGHTS_NAME

    def records(self) -> Iterator[dict]:
        """Train; yield each step's record; write metrics and the checkpoint (main process only).

        A run whose loss turns NaN or infinite raises `NonFiniteLossError` out of this iterator and
        writes no checkpoint and no loss heads: its weights may already be spoilt.
        """
        main = self.context.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            config = asdict(self.config) | {"losses": self.config.losses_for(self.model)}  # None resolved
            meta = {
                "start": self.start, "data": self.data, "captions": self.captions, "config": config,
                "notices": self.notices,
            }  # fmt: skip
            (self.out_dir / "run_config.json").write_text(json.dumps(meta, indent=2))
        metrics = self.out_dir / "metrics.jsonl"
        # Step 0 is the start model: every curve starts from where the run began.
        initial = {"step": 0, **self._evaluate(0)}
        trained = diverged = False
        steps = train(
            self.model, self.tokenizer, self.source, self.config, self.stop, self.context, self.losses,
            evaluator=self._evaluate,
        )  # fmt: skip
        try:
            for record in chain([initial], steps):
                if is_evaluation(record) and main:
                    with metrics.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                trained = record["step"] > 0
                yield record
        except NonFiniteLossError:
            diverged = True  # the weights may already be NaN: no checkpoint, and the error goes to the caller
            raise
        finally:
            if main and trained and not diverged:
                save_checkpoint(self.model, self.model_cfg, self.out_dir, weights_name=WEIGHTS_NAME)
                if self.losses:
                    save_loss_heads(self.losses, self.out_dir)

    def _evaluate(self, step: int) -> dict[str, float]:
        """One evaluation at `step`: the held-out figures from one pass over the held-out split, whose first pairs
        are the probe batch's (kept for `probe_measurement`), and retention, the figures on the probe set."""
        figures, embedded = evaluation(self.model, self.tokenizer, self.source.held_out, keep_tokens=self._probe().size)
        self._probe_pass = (step, embedded.first(self._probe().size))
        if self.probe is None:
            return figures
        return figures | {f"probe_{k}": v for k, v in evaluate(self.model, self.tokenizer, self.probe).items()}


def start_model(start: str, device: torch.device, seed: int = 0) -> tuple[torch.nn.Module, object, object, dict]:
    """An fp32 trainable copy of the start model (a spec, or FRESH): (model, tokenizer, preprocess, config).

    The loaded model stays untouched in the process cache, so the other views keep showing it.
    """
    if start == FRESH:
        torch.manual_seed(seed)
        model = CLIP(**SCENES_MODEL_CFG, output_dict=True).to(device)
        preprocess = open_clip.image_transform(input_side(model), is_train=False)
        return model, scenes_tokenizer(), preprocess, SCENES_MODEL_CFG
    loaded: VLModel = load_model(start, device)
    if loaded.model_cfg is None:
        raise ValueError(f"{start}: its architecture config is unknown, so a trained copy could not be saved.")
    return copy.deepcopy(loaded.model).float(), loaded.tokenizer, loaded.preprocess, loaded.model_cfg


def make_source(
    data: str | PairSet, model: torch.nn.Module, preprocess, seed: int, captions: str = "template"
) -> tuple[Source, str]:
    """The data to train on: "scenes" (captioned in the style `captions`), "photos" (bundled), a folder of
    pairs, or uploaded pairs. A caption style other than the template is refused for data other than scenes."""
    if data == "scenes":
        source = SceneSource(input_side(model), *preprocess_stats(model), held_out=HELD_OUT_SCENES, captions=captions)
        return source, data
    if captions != "template":
        raise ValueError(f"Caption styles apply to scenes only; {captions!r} was asked for other data.")
    if isinstance(data, PairSet):
        return PairSource(data.images, data.captions, preprocess, seed=seed), "uploaded pairs"
    pairs = read_pairs(SAMPLES_DIR / "photos" if data == "photos" else data)  # any format read_pairs detects
    return PairSource(pairs.images, pairs.captions, preprocess, seed=seed), str(data)


def probe_set(data_name: str, model: torch.nn.Module, preprocess) -> HeldOut:
    """A probe of what the start model knew, from the other domain: photos for scene runs, scenes otherwise."""
    if data_name == "scenes":
        pairs = load_pairs_folder(SAMPLES_DIR / "photos")
        return HeldOut(torch.stack([preprocess(im) for im in pairs.images]), pairs.captions)
    return SceneSource(input_side(model), *preprocess_stats(model), held_out=HELD_OUT_SCENES).held_out


def prepare_run(
    start: str,
    data: str | PairSet,
    config: TrainConfig,
    out_dir: str | Path,
    device: str | torch.device | None = None,
    context: DistributedContext | None = None,
    captions: str = "template",
) -> Run:
    """Validate everything and build the run before any training starts (errors are ValueErrors).

    `captions` names the caption style of scenes (`vlviz.data.scenes.CAPTION_STYLES`).
    """
    context = context or DistributedContext(device=resolve_device(device))
    model, tokenizer, preprocess, model_cfg = start_model(start, context.device, config.seed)
    set_token_readout(model, config.token_readout_for(model))  # a ValueError when a tower has fewer blocks
    source, data_name = make_source(data, model, preprocess, config.seed, captions)
    if isinstance(source, PairSource) and config.batch_size > len(source):
        raise ValueError(f"batch_size {config.batch_size} is larger than the {len(source)} training pairs.")
    probe = probe_set(data_name, model, preprocess) if start != FRESH else None
    losses = build_losses(config, model, tokenizer, context.device)  # e.g. XMM refuses a tower without patches
    notices = config.notices_for(model)  # e.g. clip on a SigLIP model: allowed, but said
    return Run(
        model, tokenizer, model_cfg, source, probe, config, Path(out_dir), start, data_name, context,
        losses=losses, notices=notices, captions=captions if data_name == "scenes" else None,
    )  # fmt: skip
