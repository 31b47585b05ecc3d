"""The trained loss heads saved beside a checkpoint (PSL's head and EMA copy, SIMLA's XMM fusion head), and
rebuilt when it loads (`VLModel.loss_heads`), so the views can show a trained PSL or XMM head.

`loss_heads.safetensors` holds each loss's state under ``NAME.``; `loss_heads.json` the keyword options
that rebuild it. Written atomically and never with non-finite weights, as checkpoints are.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlviz.losses import Loss, create_loss
from vlviz.models.checkpoints import check_finite, write_atomically

LOSS_HEADS = "loss_heads"  # loss_heads.safetensors + loss_heads.json: trained loss heads beside a checkpoint


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
    check_finite(state, "the loss heads")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = {name: asdict(loss.config) for name, loss in stateful.items()}
    write_atomically(
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
