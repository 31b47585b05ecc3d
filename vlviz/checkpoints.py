"""Checkpoints in open_clip's local-dir format, and the trained loss heads saved beside them.

Both are written atomically (a temporary name, then a rename) and never with NaN or infinite
weights; both load with safetensors only (no pickle). `vlviz.load_model(folder)` and
`open_clip.create_model("local-dir:" + folder)` load a checkpoint; `load_model` also rebuilds the
loss heads found beside it (`VLModel.loss_heads`), so the views can show a trained PSL or XMM head.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlviz.losses import Loss, create_loss
from vlviz.towers import preprocess_stats

CONFIG_NAME = "open_clip_config.json"
LOSS_HEADS = "loss_heads"  # loss_heads.safetensors + loss_heads.json: trained loss heads beside a checkpoint


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
            CONFIG_NAME: lambda path: Path(path).write_text(json.dumps(config, indent=2)),
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


def save_loss_heads(losses: dict[str, Loss], out_dir: str | Path) -> Path | None:
    """Write the state of the losses that have one (trained heads, EMA copies) beside a checkpoint.

    `loss_heads.safetensors` holds each loss's state under ``NAME.``; `loss_heads.json` the keyword
    options that rebuild it (its config). Returns the weights' path, or None when no loss has state.
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
    options = {name: asdict(loss.config) for name, loss in stateful.items()}
    _write_atomically(
        out,
        {
            f"{LOSS_HEADS}.safetensors": lambda path: save_file(state, path),
            f"{LOSS_HEADS}.json": lambda path: Path(path).write_text(json.dumps(options, indent=2)),
        },
    )
    return out / f"{LOSS_HEADS}.safetensors"


def load_loss_heads(path: str | Path, model: torch.nn.Module, tokenizer: object) -> dict[str, Loss]:
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
        if name == "psl" and "vocabulary_source" not in options:
            options["vocabulary_source"] = "fixed"  # saved before PSL's vocabulary was an option: its fixed list
        module = create_loss(name, model=model, tokenizer=tokenizer, **options)
        prefix = f"{name}."
        module.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
        modules[name] = module.to(parameter.device, parameter.dtype).eval()
    return modules
