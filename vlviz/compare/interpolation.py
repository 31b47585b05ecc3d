"""WiSE-FT weight interpolation between a start model and its fine-tuned version (Wortsman et al., CVPR 2022).

Continual pre-training moves a model towards new data and away from what it knew (open_clip#826
asks how much it forgets). WiSE-FT's answer is a line in weight space: theta_alpha = (1 - alpha) *
theta_start + alpha * theta_trained (the paper's Eq. 1), alpha = 0 the start model, 1 the trained one;
the paper finds points between that keep most of both. Both models must share one architecture.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from vlviz.data.inputs import PairSet
from vlviz.metrics.affinity import recall_at_k, retrieval_ranks
from vlviz.models.encoding import PairEncoding, VLModel


def interpolate_state_dicts(
    start: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """WiSE-FT's theta_alpha = (1 - alpha) theta_start + alpha theta_trained, per floating-point tensor.

    Tensors that are not floating point (integer buffers such as position ids) cannot be mixed: they
    must be equal in both, and are kept. The result is computed in float32 and stored in the start's dtype.

    Raises:
        ValueError: alpha outside [0, 1], or the two state dicts differ in names, shapes or integer buffers.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (0 the start model, 1 the trained one), got {alpha}")
    if start.keys() != trained.keys():
        missing = sorted(start.keys() ^ trained.keys())
        raise ValueError(f"the two models have different parameters ({', '.join(missing[:3])}…): not one architecture")
    mixed = {}
    for name, first in start.items():
        second = trained[name]
        if first.shape != second.shape:
            raise ValueError(f"{name} has shape {tuple(first.shape)} in one model, {tuple(second.shape)} in the other")
        if not first.is_floating_point():
            if not torch.equal(first, second.to(first.device)):
                raise ValueError(f"{name} is not a floating-point tensor and differs between the models")
            mixed[name] = first.clone()
            continue
        weight = torch.lerp(first.float(), second.to(first.device).float(), alpha)
        mixed[name] = weight.to(first.dtype)
    return mixed


def interpolated_model(start: torch.nn.Module, trained: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """A new module with WiSE-FT's weights at `alpha`; neither input is changed. In eval mode."""
    model = copy.deepcopy(start)
    model.load_state_dict(interpolate_state_dicts(start.state_dict(), trained.state_dict(), alpha))
    return model.eval()


def interpolated_vlmodel(start: VLModel, trained: VLModel, alpha: float) -> VLModel:
    """`start` and `trained` mixed at `alpha` (WiSE-FT), ready to encode with the start's preprocessing and tokenizer."""
    return VLModel(
        f"{start.spec} → {trained.spec} @ {alpha:g}",
        interpolated_model(start.model, trained.model, alpha),
        start.preprocess,
        start.tokenizer,
        start.device,
        model_cfg=start.model_cfg,
        name=f"WiSE-FT α={alpha:g} ({start.name} → {trained.name})",
    )


def mean_r1(encoding: PairEncoding) -> float:
    """The mean of image -> text and text -> image R@1 of an encoding's pairs."""
    ranks = retrieval_ranks(encoding.image_features.float(), encoding.text_features.float())
    return (recall_at_k(ranks[0]) + recall_at_k(ranks[1])) / 2


def wise_ft_path(
    start: VLModel, trained: VLModel, target: PairSet, reference: PairSet, alphas: Sequence[float]
) -> list[dict[str, float]]:
    """R@1 along WiSE-FT's line: on the `target` pairs (what training aimed at) and on `reference` pairs
    (what the start model knew), with retention = reference R@1 at alpha / reference R@1 of the start model.

    Answers open_clip#826's question of forgetting with the paper's remedy: one row per alpha, each
    {"alpha", "target_r1", "reference_r1", "retention"}; retention is NaN when the start scores 0.
    """
    rows = []
    for alpha in alphas:
        model = start if alpha == 0 else trained if alpha == 1 else interpolated_vlmodel(start, trained, alpha)
        target_r1 = mean_r1(model.encode_pairs(target.images, target.captions))
        reference_r1 = mean_r1(model.encode_pairs(reference.images, reference.captions))
        rows.append({"alpha": float(alpha), "target_r1": target_r1, "reference_r1": reference_r1})
    base = next((row["reference_r1"] for row in rows if row["alpha"] == 0), None)
    if base is None:
        base = mean_r1(start.encode_pairs(reference.images, reference.captions))
    for row in rows:
        row["retention"] = row["reference_r1"] / base if base > 0 else float("nan")
    return rows
