"""Checkpoints in open_clip's local-dir format, written atomically (a temporary name, then a rename) and never
with NaN or infinite weights; they load with safetensors only (no pickle). `vlviz.load_model(folder)` and
`open_clip.create_model("local-dir:" + folder)` load one. The trained loss heads saved beside a checkpoint are
the losses' (`vlviz.losses.heads`), written with `write_atomically` and `check_finite` from here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlviz.models.towers import READOUT_KEY, TokenReadout, preprocess_stats, set_token_readout, token_readout

CONFIG_NAME = "open_clip_config.json"


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
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
    check_finite(state, "the checkpoint")  # after the cast: fp16 overflows to inf
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mean, std = preprocess_stats(model)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(mean), "std": list(std)}}
    if token_readout(model) != TokenReadout():  # where its maps are read travels with the weights
        config[READOUT_KEY] = asdict(token_readout(model))
    write_atomically(
        out,
        {
            weights_name: lambda path: save_file(state, path),
            CONFIG_NAME: lambda path: Path(path).write_text(json.dumps(config, indent=2)),
        },
    )
    return out


def write_atomically(out: Path, writers: dict[str, Callable[[str], object]]) -> None:
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


def load_token_readout(model: torch.nn.Module, folder: str | Path) -> None:
    """Set `model`'s token readout from its checkpoint folder's config (`save_checkpoint`), when one is saved."""
    config = json.loads((Path(folder) / CONFIG_NAME).read_text())
    saved = config.get(READOUT_KEY) if isinstance(config, dict) else None
    if saved is not None:
        if not isinstance(saved, dict) or set(saved) - {"image_blocks", "text_blocks"}:
            raise ValueError(f"{CONFIG_NAME}: {READOUT_KEY} must be an object with image_blocks and text_blocks.")
        set_token_readout(model, TokenReadout(**saved))
