"""The training loop: continual pre-training of open_clip models with any weighted mix of registered losses.

`train` is a generator: it yields one record per step (and held-out figures every `eval_every`
steps) and returns early when its `stop` event is set, so the command line, a notebook and the
Train tab all drive the same loop. It knows nothing of any UI. Losses come from
`vlviz.losses.LOSSES`: a loss's class attributes say what else it is passed (`needs_tokens`:
projected patch and token embeddings and the mask of real caption tokens; `needs_inputs`: the
batch's `pixels`, `ids` and `captions` and the `model`). Loss heads train with the model, and each
loss's `after_step()` runs after every optimiser step (an EMA update).

A step whose loss is NaN or infinite stops the run before its backward pass with a
`NonFiniteLossError` (a ValueError that says what to change).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from vlviz.data.sources import HeldOut
from vlviz.losses import Loss, create_loss
from vlviz.models.encoding import global_embeddings, image_embeddings, text_embeddings
from vlviz.models.tokens import real_token_mask
from vlviz.models.towers import half_dtype, logit_bias, transformer_blocks
from vlviz.training.config import NonFiniteLossError, TrainConfig
from vlviz.training.distributed import DistributedContext, gather_features
from vlviz.training.evaluation import evaluate

BATCH_FEATURES = ("image_features", "text_features")  # gathered over ranks for batch-level losses
TOKEN_ROWS_KEPT = 16_384  # captions whose token ids a run keeps (`TokenIds`): about 10 MB at 77 tokens


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
        for tower, n in transformer_blocks(model).items():
            blocks += [f"{tower}.resblocks.{i}." for i in range(max(0, n - last_blocks), n)]
    for name, param in model.named_parameters():
        if trainable == "all":
            param.requires_grad_(True)
        else:
            keep = name.startswith(heads) or (trainable == "last_blocks" and name.startswith((*tails, *blocks)))
            param.requires_grad_(keep)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
        image_features, text_features = global_embeddings(model, pixels, ids)
        out = {}
    out |= {"image_features": image_features, "text_features": text_features, "logit_scale": model.logit_scale.exp()}
    if logit_bias(model) is not None:
        out["logit_bias"] = logit_bias(model)
    return out


class _FeatureModel(torch.nn.Module):
    """`forward_features` as a module, so that DistributedDataParallel sees (and syncs) every pass."""

    def __init__(self, model: torch.nn.Module, with_tokens: bool) -> None:
        super().__init__()
        self.model, self.with_tokens = model, with_tokens

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> dict:
        return forward_features(self.model, pixels, ids, self.with_tokens)


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
    """Half-precision autocast on CUDA (`half_dtype`'s choice); the CPU always trains in fp32."""
    dtype = half_dtype(device) or torch.float32
    return torch.autocast(device.type, dtype=dtype, enabled=enabled and device.type == "cuda")


def build_losses(config: TrainConfig, model: torch.nn.Module, tokenizer, device: torch.device) -> dict[str, Loss]:
    """The loss modules of `config`, with their `loss_options`, on `device` (built for `model` where they need it)."""
    return {
        name: create_loss(name, model=model, tokenizer=tokenizer, **config.loss_options.get(name, {})).to(device)
        for name in config.losses_for(model)
    }


class TokenIds:
    """A tokenizer that tokenizes each caption once: scene captions repeat, a pair set's are fixed, and the BPE runs
    in Python (a few ms a batch). open_clip's tokenizers pad every caption to the context length, so a caption's
    row is the same in any batch. The oldest captions go beyond `most`."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor], most: int = TOKEN_ROWS_KEPT) -> None:
        self.tokenizer, self.most = tokenizer, most
        self._rows: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        rows = [self._rows.get(caption) for caption in captions]
        missing = list(dict.fromkeys(caption for caption, row in zip(captions, rows) if row is None))
        if missing:
            found = dict(zip(missing, self.tokenizer(missing)))
            rows = [found[caption] if row is None else row for caption, row in zip(captions, rows)]
            self._rows |= found
            for old in list(self._rows)[: max(0, len(self._rows) - self.most)]:
                del self._rows[old]
        return torch.stack(rows)  # (B, T)


def train(
    model: torch.nn.Module,
    tokenizer,
    source: Source,
    config: TrainConfig,
    stop: threading.Event | None = None,
    context: DistributedContext | None = None,
    loss_modules: dict[str, Loss] | None = None,
    evaluator: Callable[[int], dict[str, float]] | None = None,
) -> Iterator[dict[str, float]]:
    """Train `model` in place on `source`; yield a record per step, with held-out figures every `eval_every`.

    The model must hold fp32 weights (autocast handles half precision on GPUs). Under torchrun,
    pass the `DistributedContext` and a DDP-wrapped model's `.module` is what gets evaluated.
    Pass `loss_modules` (from `build_losses`) to keep hold of the trained loss heads, e.g. to save them.
    `evaluator(step)` gives the figures of an evaluation (default: `evaluate` on `source.held_out`).
    """
    if evaluator is None:
        evaluator = lambda step: evaluate(model, tokenizer, source.held_out)  # noqa: E731
    context = context or DistributedContext(device=next(model.parameters()).device)
    torch.manual_seed(config.seed)
    device = context.device
    modules = loss_modules if loss_modules is not None else build_losses(config, model, tokenizer, device)
    losses = {name: (modules[name], weight) for name, weight in config.losses_for(model).items()}
    single_process = [n for n, m in modules.items() if m.needs_inputs or list(m.parameters())]
    if context.world_size > 1 and single_process:
        raise ValueError(
            f"{', '.join(single_process)}: losses with their own heads train in one process only "
            "(DistributedDataParallel does not see their parameters or their extra passes)."
        )
    with_tokens = any(loss.needs_tokens for loss, _ in losses.values())
    set_trainable(model, config.trainable, config.last_blocks)
    network: torch.nn.Module = _FeatureModel(model, with_tokens)
    if context.world_size > 1:
        network = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device] if device.type == "cuda" else None
        )
    groups = _param_groups(model, config.weight_decay)
    groups += [g for m in modules.values() for g in _param_groups(m, config.weight_decay, config.head_lr_scale)]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))
    scaler = torch.amp.GradScaler(enabled=config.amp and half_dtype(device) == torch.float16 and device.type == "cuda")

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))

    trained = [p for group in groups for p in group["params"]]  # what the gradient clip sees
    token_ids = TokenIds(tokenizer)
    model.train()
    for step in range(config.steps):
        if stop is not None and stop.is_set():
            return
        # Each rank takes its own share of the data: a distinct seed per rank.
        pixels, captions = source.batch(step, config.batch_size, config.seed + 7_777 * context.rank)
        pixels, ids = pixels.to(device), token_ids(captions).to(device)
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
                extra = inputs if loss.needs_inputs else {}
                for key, value in loss(**(out | gathered | extra)).items():
                    terms[f"{name}/{key}"] = value * weight if key.endswith("_loss") else value
            total = sum(value for key, value in terms.items() if key.endswith("_loss"))
        # The step's one device sync, before the backward pass: the record's figures and the divergence check.
        values = torch.cat([v.detach().float().reshape(1) for v in (total, *terms.values())]).tolist()
        record = {"step": step + 1, "lr": lr_at(step), "total_loss": _total_on_every_rank(values[0], context)}
        record.update(zip(terms, values[1:]))
        if not math.isfinite(record["total_loss"]):
            raise _diverged(record, config)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trained, config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        for loss, _ in losses.values():
            loss.after_step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            record.update(evaluator(step + 1))
        yield record


def _total_on_every_rank(total: float, context: DistributedContext) -> float:
    """This rank's total loss, made non-finite on every rank when it is on any, so that all ranks stop at once.

    A rank that stopped alone would leave the others waiting for it in the backward's collectives.
    """
    if context.world_size == 1:
        return total
    flag = torch.tensor(0.0 if math.isfinite(total) else 1.0, device=context.device)
    torch.distributed.all_reduce(flag)
    return total if float(flag) == 0 else math.nan


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
