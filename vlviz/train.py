"""Continual pre-training of open_clip models with any weighted mix of registered losses.

`train` is a generator: it yields one record per step (and held-out figures every `eval_every`
steps) and returns early when its `stop` event is set, so the command line, a notebook and the
Train tab all drive the same loop. It knows nothing of any UI. Losses come from
`vlviz.losses.LOSSES`; a loss that sets ``needs_tokens = True`` also receives projected patch and
token embeddings and the mask of real caption tokens (what SPARC needs), and one that sets
``needs_inputs = True`` also receives the batch's `pixels`, `ids` and `captions` and the `model`
(SIMLA's heads re-encode masked inputs). Loss modules may hold trainable heads, which the optimiser
trains with the model, and an ``after_step()`` method, called after every optimiser step (an EMA
update); `save_loss_heads` writes their state beside a checkpoint.

A step whose loss is NaN or infinite stops the run before its backward pass with a
`NonFiniteLossError` (a ValueError that says what to change), and neither `save_checkpoint` nor
`save_loss_heads` writes non-finite weights.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import open_clip
import torch
from open_clip.model import CLIP
from safetensors.torch import load_file, save_file

from vlviz.affinity import affinity, caption_recall_at_1, recall_at_k, retrieval_ranks
from vlviz.consistency import consistency_figures
from vlviz.data.sources import HeldOut, SceneSource, preprocess_stats
from vlviz.distributed import DistributedContext, gather_features
from vlviz.encoding import PairEncoding, image_embeddings, text_embeddings
from vlviz.grounding import scene_grounding_score
from vlviz.losses import LOSSES, create_loss
from vlviz.tokens import real_token_mask, token_layout

# The offline model: an open_clip CLIP small enough to train on two CPU cores, with open_clip's
# own BPE tokenizer. 64 px scenes in 8 px patches give an 8 x 8 patch grid for grounding maps.
SCENES_MODEL_CFG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
TRAINABLE = ("all", "last_blocks", "projections")
BATCH_FEATURES = ("image_features", "text_features")  # gathered over ranks for batch-level losses
LOSS_HEADS = "loss_heads"  # loss_heads.safetensors + loss_heads.json: trained loss heads beside a checkpoint
# Bounds of a run a hosted app accepts: beyond them a run only ties up the machine or runs out of memory.
MAX_STEPS = 100_000
MAX_BATCH_SIZE = 4096
MAX_LR = 1.0  # AdamW at a peak rate above 1 only diverges
MAX_SEED = 2**32 - 1  # the data streams' generators take seeds in [0, 2**32)


@dataclass
class TrainConfig:
    steps: int = 300  # optimiser steps
    batch_size: int = 64  # pairs per step (the contrastive negatives), per process
    lr: float = 1e-4  # peak AdamW learning rate
    weight_decay: float = 0.1  # on weight matrices only, not on norms, biases, embeddings or the logit scale
    warmup_steps: int = 20  # linear warm-up, then cosine decay to zero
    grad_clip: float = 1.0  # maximum global gradient norm
    eval_every: int = 25  # evaluate on the held-out split every this many steps (and at the end)
    seed: int = 0  # initialisation, data order
    losses: dict[str, float] = field(default_factory=lambda: {"clip": 1.0})  # registry name -> weight
    loss_options: dict[str, dict] = field(default_factory=dict)  # registry name -> keyword arguments
    trainable: str = "all"  # "all", "last_blocks" (the last `last_blocks` of each tower + heads) or "projections"
    last_blocks: int = 2
    head_lr_scale: float = 10.0  # loss heads (PSL, XMM: new, untrained) learn at this multiple of `lr`
    amp: bool = True  # autocast to bf16 (else fp16) on CUDA; the CPU always trains in fp32

    def __post_init__(self) -> None:
        """Refuse settings that cannot train (or would only diverge) before any model is built."""
        _check_whole("steps", self.steps, 1, MAX_STEPS)
        _check_whole("batch_size", self.batch_size, 2, MAX_BATCH_SIZE, " (contrastive losses need negatives)")
        _check_real("lr", self.lr, positive=True, at_most=MAX_LR)
        _check_real("weight_decay", self.weight_decay)
        _check_whole("warmup_steps", self.warmup_steps, 0)
        _check_real("grad_clip", self.grad_clip, positive=True)
        _check_whole("eval_every", self.eval_every, 1)
        _check_whole("seed", self.seed, 0, MAX_SEED)
        if not isinstance(self.losses, dict) or not self.losses:
            raise ValueError("Give at least one loss, e.g. {'clip': 1.0}.")
        unknown = [name for name in self.losses if name not in LOSSES]
        if unknown:
            raise ValueError(f"Unknown loss {unknown[0]!r}; known losses: {', '.join(LOSSES)}.")
        for name, weight in self.losses.items():
            _check_real(f"losses[{name!r}]", weight)
        if not any(weight > 0 for weight in self.losses.values()):
            raise ValueError(f"losses needs at least one weight above 0, got {self.losses}")
        if not isinstance(self.loss_options, dict) or not all(isinstance(v, dict) for v in self.loss_options.values()):
            raise ValueError(
                f"loss_options must map loss names to keyword arguments (dicts), got {self.loss_options!r}"
            )
        if self.trainable not in TRAINABLE:
            raise ValueError(f"Unknown trainable {self.trainable!r}; choose one of {', '.join(TRAINABLE)}.")
        _check_whole("last_blocks", self.last_blocks, 1)
        _check_real("head_lr_scale", self.head_lr_scale, positive=True)


def _check_whole(name: str, value: object, low: int, high: int | None = None, why: str = "") -> None:
    """A whole-number setting in [low, high]: a ValueError that names it, its value and the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        limit = f" and at most {high}" if high is not None else ""
        raise ValueError(f"{name} must be at least {low}{why}{limit}, got {value!r}")


def _check_real(name: str, value: object, positive: bool = False, at_most: float | None = None) -> None:
    """A finite number, above 0 (`positive`) or at least 0, at most `at_most`; NaN fails every comparison, so
    finiteness is checked explicitly."""
    rules = ["positive" if positive else "", "finite", "" if positive else "at least 0"]
    rules.append(f"at most {at_most:g}" if at_most is not None else "")
    *first, last = filter(None, rules)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0) or (at_most is not None and value > at_most):
        raise ValueError(f"{name} must be {', '.join(first)} and {last}, got {value!r}")


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite: training stopped before that step could spoil the weights.

    A ValueError, so that callers that already show bad settings as messages show this one too.
    `step` is the 1-based step whose loss diverged (its record is never yielded), `terms` the loss
    terms that were non-finite there.
    """

    def __init__(self, message: str, step: int, terms: tuple[str, ...]) -> None:
        super().__init__(message)
        self.step, self.terms = step, terms


# How the shipped offline model was trained (`python -m vlviz build-offline-model`).
OFFLINE_MODEL_TRAIN_CONFIG = TrainConfig(steps=3000, batch_size=128, lr=5e-4, warmup_steps=100, eval_every=250)


class Source(Protocol):
    held_out: HeldOut

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, list[str]]: ...


def set_trainable(model: torch.nn.Module, trainable: str, last_blocks: int = 2) -> int:
    """Freeze what should not train; return the number of trainable parameters.

    `projections`: the joint-space heads (visual.proj, text_projection) and the logit scale/bias.
    `last_blocks`: those plus the last `last_blocks` transformer blocks and final norms of each tower.
    """
    heads = ("visual.proj", "text_projection", "text.text_projection", "logit_scale", "logit_bias")
    tails = ("visual.ln_post", "ln_final", "text.ln_final")
    blocks: list[str] = []
    if trainable == "last_blocks":
        for tower in ("visual.transformer", "transformer", "text.transformer"):
            module = model.get_submodule(tower) if _has_submodule(model, tower) else None
            if module is not None and hasattr(module, "resblocks"):
                n = len(module.resblocks)
                blocks += [f"{tower}.resblocks.{i}." for i in range(max(0, n - last_blocks), n)]
    for name, param in model.named_parameters():
        if trainable == "all":
            param.requires_grad_(True)
        else:
            keep = name.startswith(heads) or (trainable == "last_blocks" and name.startswith((*tails, *blocks)))
            param.requires_grad_(keep)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _has_submodule(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def forward_features(model: torch.nn.Module, pixels: torch.Tensor, ids: torch.Tensor, with_tokens: bool) -> dict:
    """The open_clip-named outputs the losses take; with patch/token embeddings when asked."""
    if with_tokens:
        image_features, patch_features = image_embeddings(model, pixels)
        text_features, token_features = text_embeddings(model, ids)
        if patch_features is None or token_features is None:
            raise ValueError(
                "This loss needs patch and token embeddings, which only ViT towers with a text projection have."
            )
        out = {"patch_features": patch_features, "token_features": token_features}
    else:
        image_features, text_features = (
            model.encode_image(pixels, normalize=True),
            model.encode_text(ids, normalize=True),
        )
        out = {}
    out |= {"image_features": image_features, "text_features": text_features, "logit_scale": model.logit_scale.exp()}
    if getattr(model, "logit_bias", None) is not None:
        out["logit_bias"] = model.logit_bias
    return out


class _FeatureModel(torch.nn.Module):
    """`forward_features` as a module, so that DistributedDataParallel sees (and syncs) every pass."""

    def __init__(self, model: torch.nn.Module, with_tokens: bool) -> None:
        super().__init__()
        self.model, self.with_tokens = model, with_tokens

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> dict:
        return forward_features(self.model, pixels, ids, self.with_tokens)


@torch.inference_mode()
def embed_held_out(
    model: torch.nn.Module, tokenizer, held_out: HeldOut, with_tokens: bool = False, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Image and text embeddings of a held-out split in chunks: (global images, global texts, patches, tokens).

    Patch and token embeddings come back only when asked for and when the towers have them.
    """
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    captions = held_out.captions
    images = [image_embeddings(model, p.to(device, dtype)) for p in held_out.pixels.split(chunk)]
    texts = [
        text_embeddings(model, tokenizer(captions[i : i + chunk]).to(device)) for i in range(0, len(captions), chunk)
    ]
    image_features, text_features = torch.cat([i for i, _ in images]).float(), torch.cat([t for t, _ in texts]).float()
    if not with_tokens or images[0][1] is None or texts[0][1] is None:
        return image_features, text_features, None, None
    return (
        image_features,
        text_features,
        torch.cat([p for _, p in images]).float(),
        torch.cat([t for _, t in texts]).float(),
    )


def evaluate(model: torch.nn.Module, tokenizer, held_out: HeldOut) -> dict[str, float]:
    """Held-out figures: retrieval R@1 both ways, SaCo inconsistency, and on scenes the pointing game.

    Image -> text R@1 counts an identical caption as a hit (scenes repeat captions). The pointing
    game uses SPARC's alignment weights of colour and shape words against the objects' masks.
    """
    was_training = model.training
    model.eval()
    image_features, text_features, patches, tokens = embed_held_out(
        model, tokenizer, held_out, with_tokens=held_out.scenes is not None
    )
    model.train(was_training)
    similarity = affinity(image_features, text_features)
    _, text_to_image = retrieval_ranks(similarity)
    consistency = consistency_figures(image_features, text_features)
    figures = {
        "image_to_text_r1": caption_recall_at_1(similarity, held_out.captions),
        "text_to_image_r1": recall_at_k(text_to_image, 1),
        "mean_abs_inconsistency": consistency.mean_abs_inconsistency,
        "affinity_pearson": consistency.pearson,
    }
    if patches is not None and tokens is not None and held_out.scenes is not None:
        encoding = PairEncoding(
            image_features, text_features, patches, tuple(model.visual.grid_size), tokens,
            token_layout(tokenizer, held_out.captions), logit_scale=0.0, logit_bias=None,
        )  # fmt: skip
        score = scene_grounding_score(encoding, held_out.scenes, kinds=["sparc"])["sparc"]
        figures |= {f"pointing_game_{word}": score[word]["pointing_game"] for word in ("colour", "shape")}
    return figures


def _param_groups(module: torch.nn.Module, weight_decay: float, lr_scale: float = 1.0) -> list[dict]:
    """Decay weight matrices only, as open_clip's trainer does; `lr_scale` multiplies the scheduled rate."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name or "embedding" in name
        (no_decay if exclude else decay).append(param)
    return [
        {"params": params, "weight_decay": decay_rate, "lr_scale": lr_scale}
        for params, decay_rate in ((decay, weight_decay), (no_decay, 0.0))
    ]


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled and device.type == "cuda")


def build_losses(
    config: TrainConfig, model: torch.nn.Module, tokenizer, device: torch.device
) -> dict[str, torch.nn.Module]:
    """The loss modules of `config`, with their `loss_options`, on `device` (built for `model` where they need it)."""
    return {
        name: create_loss(name, model=model, tokenizer=tokenizer, **config.loss_options.get(name, {})).to(device)
        for name in config.losses
    }


def train(
    model: torch.nn.Module,
    tokenizer,
    source: Source,
    config: TrainConfig,
    stop: threading.Event | None = None,
    context: DistributedContext | None = None,
    loss_modules: dict[str, torch.nn.Module] | None = None,
) -> Iterator[dict[str, float]]:
    """Train `model` in place on `source`; yield a record per step, with held-out figures every `eval_every`.

    The model must hold fp32 weights (autocast handles half precision on GPUs). Under torchrun,
    pass the `DistributedContext` and a DDP-wrapped model's `.module` is what gets evaluated.
    Pass `loss_modules` (from `build_losses`) to keep hold of the trained loss heads, e.g. to save them.
    """
    context = context or DistributedContext(device=next(model.parameters()).device)
    torch.manual_seed(config.seed)
    device = context.device
    modules = loss_modules if loss_modules is not None else build_losses(config, model, tokenizer, device)
    losses = {name: (modules[name], weight) for name, weight in config.losses.items()}
    single_process = [n for n, m in modules.items() if getattr(m, "needs_inputs", False) or list(m.parameters())]
    if context.world_size > 1 and single_process:
        raise ValueError(
            f"{', '.join(single_process)}: losses with their own heads train in one process only "
            "(DistributedDataParallel does not see their parameters or their extra passes)."
        )
    with_tokens = any(getattr(loss, "needs_tokens", False) for loss, _ in losses.values())
    set_trainable(model, config.trainable, config.last_blocks)
    network: torch.nn.Module = _FeatureModel(model, with_tokens)
    if context.world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device] if device.type == "cuda" else None
        )
    groups = _param_groups(model, config.weight_decay)
    groups += [g for m in modules.values() for g in _param_groups(m, config.weight_decay, config.head_lr_scale)]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))
    scaler = torch.amp.GradScaler(enabled=config.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported())

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))

    model.train()
    for step in range(config.steps):
        if stop is not None and stop.is_set():
            return
        # Each rank takes its own share of the data: a distinct seed per rank.
        pixels, captions = source.batch(step, config.batch_size, config.seed + 7_777 * context.rank)
        pixels, ids = pixels.to(device), tokenizer(captions).to(device)
        inputs = {"pixels": pixels, "ids": ids, "captions": captions, "model": model}  # for `needs_inputs` losses
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step) * group["lr_scale"]
        with _autocast(device, config.amp):
            out = network(pixels, ids)
            if with_tokens:
                out["token_mask"] = real_token_mask(tokenizer, ids)
            gathered = dict(zip(BATCH_FEATURES, gather_features(*(out[k] for k in BATCH_FEATURES)), strict=True))
            terms: dict[str, torch.Tensor] = {}
            for name, (loss, weight) in losses.items():
                extra = inputs if getattr(loss, "needs_inputs", False) else {}
                for key, value in loss(**(out | gathered | extra)).items():
                    terms[f"{name}/{key}"] = value * weight if key.endswith("_loss") else value
            total = sum(value for key, value in terms.items() if key.endswith("_loss"))
        # The step's one device sync, before the backward pass: the record's figures and the divergence check.
        record = {"step": step + 1, "lr": lr_at(step), "total_loss": _total_on_every_rank(total.detach(), context)}
        record.update({key: float(value.detach()) for key, value in terms.items()})
        if not math.isfinite(record["total_loss"]):
            raise _diverged(record, config)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for group in groups for p in group["params"]], config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        for loss, _ in losses.values():
            if hasattr(loss, "after_step"):
                loss.after_step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            record.update(evaluate(model, tokenizer, source.held_out))
        yield record


def _total_on_every_rank(total: torch.Tensor, context: DistributedContext) -> float:
    """This rank's total loss, made non-finite on every rank when it is on any, so that all ranks stop at once.

    A rank that stopped alone would leave the others waiting for it in the backward's collectives.
    """
    if context.world_size == 1:
        return float(total)
    flag = (~torch.isfinite(total)).float()
    torch.distributed.all_reduce(flag)
    return float(total) if float(flag) == 0 else math.nan


def _diverged(record: dict[str, float], config: TrainConfig) -> NonFiniteLossError:
    """The error that stops a diverged run: where the loss went, which terms, and what to change."""
    step = int(record["step"])
    terms = tuple(k for k, v in record.items() if k.endswith("_loss") and k != "total_loss" and not math.isfinite(v))
    where = ", ".join(terms) or "on another process"
    if step == 1:
        advice = "before any update: the start model, the data or a loss gives it; check them and train again"
    else:
        advice = f"lower the learning rate (now {config.lr:g}) and train again"
    message = f"the loss became {record['total_loss']} at step {step} ({where}); {advice}"
    return NonFiniteLossError(message, step, terms)


def _check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Refuse to write NaN or infinite weights: a checkpoint that loads but only computes NaN."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        which = f"{bad[0]} and {len(bad) - 1} more hold" if len(bad) > 1 else f"{bad[0]} holds"
        raise ValueError(
            f"Not saving {what}: {which} NaN or infinite values (the run diverged); "
            "lower the learning rate and train again."
        )


def save_checkpoint(
    model: torch.nn.Module,
    model_cfg: dict,
    out_dir: str | Path,
    dtype: torch.dtype | None = None,
    weights_name: str = "open_clip_model.safetensors",
) -> Path:
    """Write `model` in open_clip's local-dir format (config JSON + safetensors), atomically.

    Each file is written to a temporary name and renamed, so a crash never leaves a half file. Weights
    with any NaN or infinite value are refused (ValueError): they would load and compute only NaN.
    `vlviz.load_model(out_dir)` and `open_clip.create_model("local-dir:" + out_dir)` load it.
    """
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    _check_finite(state, "the checkpoint")  # after the cast: fp16 overflows to inf
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mean, std = preprocess_stats(model)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(mean), "std": list(std)}}
    _write_atomically(
        out,
        {
            weights_name: lambda path: save_file(state, path),
            "open_clip_config.json": lambda path: Path(path).write_text(json.dumps(config, indent=2)),
        },
    )
    return out


def _write_atomically(out: Path, writers: dict[str, Callable[[str], object]]) -> None:
    """Write each file of `out` through a temporary name and a rename, so a crash never leaves a half file."""
    for name, write in writers.items():
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes files private; checkpoints are meant to be shared
            os.replace(tmp, out / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def save_loss_heads(losses: dict[str, torch.nn.Module], out_dir: str | Path) -> Path | None:
    """Write the state of the losses that have one (trained heads, EMA copies) beside a checkpoint.

    `loss_heads.safetensors` holds each loss's state under ``NAME.``; `loss_heads.json` the keyword
    arguments that rebuild it (its `options`). Returns the weights' path, or None when no loss has state.
    """
    stateful = {name: loss for name, loss in losses.items() if loss.state_dict()}
    if not stateful:
        return None
    state = {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name, loss in stateful.items()
        for key, value in loss.state_dict().items()
    }
    _check_finite(state, "the loss heads")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = {name: getattr(loss, "options", {}) for name, loss in stateful.items()}
    _write_atomically(
        out,
        {
            f"{LOSS_HEADS}.safetensors": lambda path: save_file(state, path),
            f"{LOSS_HEADS}.json": lambda path: Path(path).write_text(json.dumps(options, indent=2)),
        },
    )
    return out / f"{LOSS_HEADS}.safetensors"


def load_loss_heads(path: str | Path, model: torch.nn.Module, tokenizer) -> dict[str, torch.nn.Module]:
    """The trained loss modules saved by `save_loss_heads`, rebuilt for `model`: {} when there are none.

    `path` is a checkpoint folder or a file in one (a model spec that names no path has none). They
    come back in evaluation mode, on the model's device and in its floating-point dtype.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        return {}
    weights, options_file = folder / f"{LOSS_HEADS}.safetensors", folder / f"{LOSS_HEADS}.json"
    if not weights.is_file() or not options_file.is_file():
        return {}
    state = load_file(weights)
    parameter = next(model.parameters())
    modules = {}
    for name, options in json.loads(options_file.read_text()).items():
        module = create_loss(name, model=model, tokenizer=tokenizer, **options)
        prefix = f"{name}."
        module.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
        modules[name] = module.to(parameter.device, parameter.dtype).eval()
    return modules


def scenes_tokenizer():
    """open_clip's BPE tokenizer at the offline model's context length."""
    return open_clip.get_tokenizer("ViT-B-32", context_length=SCENES_MODEL_CFG["text_cfg"]["context_length"])


def build_offline_model(
    out_dir: str | Path, config: TrainConfig = OFFLINE_MODEL_TRAIN_CONFIG
) -> Iterator[dict[str, float]]:
    """Train the offline `vlviz-scenes` model from scratch and save it (fp16 weights) to `out_dir`.

    Yields the training records; the last one carries the held-out figures of the saved model.
    """
    torch.manual_seed(config.seed)
    model = CLIP(**SCENES_MODEL_CFG, output_dict=True)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    source = SceneSource(SCENES_MODEL_CFG["vision_cfg"]["image_size"], mean, std, held_out=1000)
    yield from train(model, scenes_tokenizer(), source, config)
    save_checkpoint(model, SCENES_MODEL_CFG, out_dir, dtype=torch.float16)
    (Path(out_dir) / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
