"""The Train tab: continual pre-training with any mix of losses, streamed live; stop, compare, reuse.

The callback drives `vlviz.training.runs.Run.records()` as a generator and turns records into figures
every few steps. Each browser session has its own runs (in `gr.State`), writes them under its own
server-made folder and keeps their stop flags in its `SessionSpace`, so two people training at once
never see, stop or overwrite each other's runs. A session trains one run at a time, numbered by its
`SessionSpace`, and keeps its runs within a disk budget (`SessionSpace.make_room`). At most
`MAX_TRAININGS` train at once; the others wait in Gradio's queue, which shows their position.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from vlviz.compare.interpolation import interpolated_vlmodel, wise_ft_path
from vlviz.data.inputs import InputError, PairSet, pairs_from_uploads
from vlviz.data.samples import sample_files
from vlviz.losses import LOSSES, loss_keys
from vlviz.losses.saco import SACO_DISTANCES
from vlviz.models.encoding import EncodedPairs, VLModel, encode_pair_set
from vlviz.models.loading import OFFLINE_SPEC, ModelUnavailableError, load_model
from vlviz.training.config import TRAINABLE, NonFiniteLossError, TrainConfig
from vlviz.training.evaluation import is_evaluation
from vlviz.training.runs import FRESH, Run, prepare_run
from vlviz.ui.agents import open_choices
from vlviz.ui.messages import inform, refusal, warn
from vlviz.ui.session import ANALYSIS_EVENT, CHECKPOINT_PREFIX, SESSIONS, SessionSpace, analyzed
from vlviz.viz.figures import compare_runs, training_curves
from vlviz.viz.lens_view import lens_view, wise_ft_figure
from vlviz.viz.run_comparison import VIEWS, side_by_side
from vlviz.viz.views import probe_figures

MAX_TRAININGS = int(os.environ.get("VLVIZ_MAX_TRAININGS", 2))  # trainings running at once, all sessions together
MAX_STEPS, MAX_BATCH_SIZE = 2000, 256  # the sliders' ends; the API is held to them too (the library allows more)
STARTS = {"offline scenes model": OFFLINE_SPEC, "the model chosen above": None, "a fresh model (from scratch)": FRESH}
DATA = ["scenes", "photos", "uploaded pairs"]
RETRIEVAL_KEYS = ["image_to_caption_r1", "text_to_image_r1", "probe_image_to_caption_r1", "probe_text_to_image_r1"]
ALIGNMENT_KEYS = ["mean_abs_inconsistency", "pointing_game_colour", "pointing_game_shape"]
SHARE_KEYS = loss_keys("shares")  # the losses' accuracies (SIMLA's XMM and PSL), plotted on one axis
COMPARE_KEYS = ["total_loss", *RETRIEVAL_KEYS, *ALIGNMENT_KEYS, *SHARE_KEYS]
DEFAULT_WEIGHTS = {"clip": 1.0, "saco": 0.5}  # the default demo: continual CLIP + SaCo on scenes
PROBE_KEYS = ["grounding", "inconsistency", "embedding"]  # the probe's figures, refreshed at each evaluation
STREAM_EVERY = 5  # steps between live updates (evaluations always update)
WISE_FT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the points of the lens's R@1-and-retention curve
WISE_FT_KEPT = 8  # curves kept (per run and analysis): moving the slider redraws the lens, not the curve
METRICS_LINE_BYTES = 4096  # an evaluation's line in metrics.jsonl, with room to spare (about 0.8 KB)


def _loss_keys(records: list[dict]) -> list[str]:
    return [k for k in records[-1] if k.endswith("_loss")] if records else []


def _view(
    records: list[dict], runs: list[dict], status: str, checkpoint: str | None = None, probe: dict | None = None
) -> tuple[Any, ...]:
    losses = training_curves(records, _loss_keys(records), "Loss terms")
    retrieval = training_curves(records, RETRIEVAL_KEYS, "R@1: held-out split and probe set (retention)")
    alignment = training_curves(records, ALIGNMENT_KEYS, "SaCo inconsistency and SPARC pointing game (held-out)")
    simla = training_curves(
        records, SHARE_KEYS, "SIMLA: masked-token accuracy (image vs noise) and concept precision@3 (training batch)"
    )
    names = [run["name"] for run in runs]
    probe = probe or {}
    probe_plots = [probe[key] if key in probe else gr.skip() for key in PROBE_KEYS]
    return (
        losses, retrieval, alignment, simla, *probe_plots, status, records, checkpoint, runs,
        gr.update(choices=names, value=names[-2:] if names else []),
    )  # fmt: skip


def train(
    start: str, data: str, trainable: str, steps: float, batch_size: float, lr: float, eval_every: float,
    seed: float, saco_distance: str, model_spec: str | None, runs: list[dict] | None, analysis: EncodedPairs | None,
    space: SessionSpace, request: gr.Request, **weights: float,
):  # fmt: skip
    """Continual pre-training with any mix of losses, streamed: figures and records every few steps, the checkpoint at the end (the `train` API).

    Every parameter after model_spec is a loss weight named after its loss, 0 to 2 (0 leaves the loss
    out): clip and siglip (contrastive), saco (SaCo affinity consistency), sparc (SPARC's word-patch
    alignment), psl and xmm (SIMLA's pseudo-labels and masked-token objective), word_region (vlviz's own
    cross-image word-patch contrast, not a paper's; its memory grows with batch size squared). A held-out split is
    always kept for evaluation. A tool call returns when the run ends (stop_training ends it early);
    its checkpoint is then a model for every tool, as 'session run N'.

    Args:
        start: 'offline scenes model', 'the model chosen above' (model_spec) or 'a fresh model (from scratch)'.
        data: 'scenes', 'photos' or 'uploaded pairs' (the pairs last analyzed).
        trainable: what trains: 'all', 'last_blocks' or 'projections'.
        steps: optimiser steps, 1 to 2,000.
        batch_size: pairs per batch, 2 to 256.
        lr: the peak learning rate, in (0, 1].
        eval_every: steps between evaluations on the held-out split.
        seed: the seed of data order and initialisation (an integer).
        saco_distance: SaCo's distance: 'l1' (mean |A_I − A_T|), 'l2' or 'kl'.
        model_spec: the model 'the model chosen above' starts from (as in analyze).

    Returns:
        [0] the loss terms over the steps, plotly figure JSON
        [1] R@1 on the held-out split and on a fixed probe set (retention), plotly JSON
        [2] SaCo inconsistency and the SPARC pointing game on the held-out split, plotly JSON
        [3] SIMLA's masked-token accuracy and concept precision@3, plotly JSON
        [4] the probe's grounding of one word, plotly JSON
        [5] the probe's inconsistency, plotly JSON
        [6] the probe's embedding space, plotly JSON
        [7] the status line (the run's name and step, or how it ended and its 'session run N' name)
        [8] the records: one per streamed step, with step, total_loss, each *_loss and, at evaluations, image_to_caption_r1 (an identical caption counts as a hit), text_to_image_r1 (shares in [0, 1]), mean_abs_inconsistency and the pointing-game shares
        [9] the checkpoint file (safetensors) with its URL, or None before the end
        [10] this session's run names (for the browser)
    """
    runs = list(runs or [])
    losses = {name: float(weights[name]) for name in LOSSES if weights.get(name) and weights[name] > 0}
    SESSIONS.bind(space, request)
    try:
        if not (0 < steps <= MAX_STEPS and 0 < batch_size <= MAX_BATCH_SIZE):
            raise ValueError(f"The app trains at most {MAX_STEPS} steps with batches of at most {MAX_BATCH_SIZE}.")
        options = {"saco": {"distance": saco_distance}} if "saco" in losses else {}
        config = TrainConfig(
            steps=int(steps), batch_size=int(batch_size), lr=float(lr), eval_every=int(eval_every),
            seed=int(seed), losses=losses, loss_options=options, trainable=trainable,
        )  # fmt: skip
        start_spec = STARTS[start] or (model_spec or OFFLINE_SPEC).strip()
        start_path = space.checkpoint(start_spec)  # a checkpoint of this session, else a spec the policy allows
        if start_path is None and start_spec != FRESH:
            space.policy.check(start_spec)
        source = analyzed(analysis, "the run trains on the pairs last analyzed.").pairs if data == DATA[2] else data
    except (ValueError, InputError, ModelUnavailableError) as error:
        raise refusal(error) from error
    with space.training() as number:  # one run at a time per session, numbered by it (the run list may be stale)
        name = f"run {number}: " + " + ".join(f"{k}×{v:g}" for k, v in losses.items())
        try:
            run = prepare_run(str(start_path or start_spec), source, config, space.run_folder(number))
            removed = space.make_room(_run_bytes(run))
        except (ValueError, InputError, ModelUnavailableError) as error:
            raise refusal(error) from error
        for notice in [*run.notices, *([removed] if removed else [])]:
            warn(notice)
        for old in runs:  # runs removed to make room keep their curves, not their checkpoints
            if old.get("spec") in space.evicted:
                old["checkpoint"] = None
        entry = {
            "name": name, "records": [], "checkpoint": None, "data": run.data, "spec": f"{CHECKPOINT_PREFIX}{number}",
            "start": str(start_path or start_spec), "start_name": start_spec,  # what loads, what it is called
        }  # fmt: skip
        runs.append(entry)
        preparing = f"**{name}**: preparing on `{run.context.device}`…" + (f"\n\n> {removed}" if removed else "")
        yield _view([], runs, preparing)
        yield from _stream(run, entry, runs, space)


def _run_bytes(run: Run) -> int:
    """About what a run writes: its fp32 weights, its losses' heads, and a metrics line per evaluation."""
    tensors = [*run.model.state_dict().values()]
    tensors += [value for loss in (run.losses or {}).values() for value in loss.state_dict().values()]
    evaluations = run.config.steps // run.config.eval_every + 2
    return sum(t.numel() * t.element_size() for t in tensors) + evaluations * METRICS_LINE_BYTES


def _stream(run: Run, entry: dict, runs: list[dict], space: SessionSpace) -> Iterator[tuple[Any, ...]]:
    """Train `run`, streaming `_view`s every few steps; the run's checkpoint joins the session at the end."""
    name, steps = entry["name"], run.config.steps
    space.stop_flags[name] = run.stop
    try:
        for record in run.records():
            entry["records"].append(record)
            evaluated = is_evaluation(record)
            if record["step"] % STREAM_EVERY == 0 or evaluated:
                loss = f", loss {record['total_loss']:.3f}" if "total_loss" in record else ""
                status = f"**{name}**: step {record['step']} / {steps}{loss}"
                probe = probe_figures(**vars(run.probe_measurement(record["step"]))) if evaluated else None
                yield _view(entry["records"], runs, status, probe=probe)
    except NonFiniteLossError as error:
        warn(str(error))
        yield _view(entry["records"], runs, f"**{name}** stopped: {error} No checkpoint was saved.")
        return
    except ValueError as error:  # e.g. weights that turned non-finite are never saved
        raise refusal(error) from error
    finally:
        space.stop_flags.pop(name, None)
        if space.closed:  # the tab closed while this run trained: its files go too
            space.close()
    if space.closed:
        return
    entry["checkpoint"] = str(run.checkpoint)
    space.checkpoints[entry["spec"]] = run.checkpoint.parent
    done = entry["records"][-1]["step"]
    verb = "stopped" if run.stop.is_set() else "finished"
    status = f"**{name}** {verb} after {done} steps. Download the checkpoint below, or load it as `{entry['spec']}`."
    yield _view(entry["records"], runs, status, str(run.checkpoint))


def stop_training(space: SessionSpace) -> str:
    """Ask this session's runs (and no one else's) to stop after their current step; they keep curves and checkpoint (the `stop_training` API).

    Returns:
        what happened: 'Stopping after the current step…' or 'No run is training in this session.'
    """
    flags = list(space.stop_flags.values())
    for flag in flags:
        flag.set()
    return "Stopping after the current step…" if flags else "No run is training in this session."


def use_checkpoint(runs: list[dict] | None) -> Any:
    """Make the last finished run's checkpoint the model of the other tabs (by its session name, not its path)."""
    done = [run for run in runs or [] if run["checkpoint"]]
    if not done:
        raise refusal("No checkpoint yet: train (or stop) a run first.")
    inform(f"The other tabs now use {done[-1]['name']} (`{done[-1]['spec']}`).")
    return gr.update(value=done[-1]["spec"])


def compare_models(
    runs: list[dict] | None, chosen: list[str], analysis: EncodedPairs | None, space: SessionSpace
) -> list:
    """A run's start model beside its trained checkpoint on the pairs last analyzed: affinity, inconsistency and grounding (the `compare_models` API).

    Args:
        chosen: names of this session's runs, as train's status gives them ('run 1: clip×1 + saco×0.5'); the last finished of them is compared (empty: the last finished run).

    Returns:
        [0] the image-text cosine heatmap of the start model, plotly figure JSON (the heatmap's z holds the matrix)
        [1] the same for the trained model
        [2] the |A_I − A_T| heatmap of the start model, plotly JSON
        [3] the same for the trained model
        [4] pair 1's word maps (SPARC weights) by the start model, plotly JSON (None for towers without patch tokens)
        [5] the same for the trained model
    """
    with space.exclusive("analysis"):  # it encodes the pairs twice
        _, start, trained = _run_models(runs, chosen)
        pairs = analyzed(analysis, "the comparison shows both models on the pairs last analyzed.").pairs
        encodings = [encode_pair_set(model, pairs).encoding for model in (start, trained)]
        images = tuple(model.input_image(pairs.images[0]) for model in (start, trained))
        views = side_by_side(*encodings, pairs, images)
        return [figure for view in VIEWS for figure in views[view]]


def _run_models(runs: list[dict] | None, chosen: list[str]) -> tuple[dict, VLModel, VLModel]:
    """The last finished chosen run (or the last finished run), its start model and its trained model."""
    done = [run for run in runs or [] if run["checkpoint"] and (not chosen or run["name"] in chosen)]
    if not done:
        raise refusal("No finished run to compare: train (or stop) a run first.")
    run = done[-1]
    if run["start"] == FRESH:
        raise refusal(f"{run['name']} started from random weights: there is no start model to show.")
    try:
        start = load_model(run["start"], name=run["start_name"])
        trained = load_model(str(Path(run["checkpoint"]).parent), name=run["spec"])
    except (ValueError, ModelUnavailableError) as error:
        raise refusal(error) from error
    return run, start, trained


_WISE_FT_CURVES: OrderedDict[tuple[str, int], list[dict[str, float]]] = OrderedDict()
_WISE_FT_LOCK = threading.Lock()  # sessions' lens calls run in several worker threads


def _wise_ft_curve(
    run: dict, start: VLModel, trained: VLModel, serial: int, pairs: PairSet, reference_name: str
) -> list[dict[str, float]]:
    """`wise_ft_path` of a run on the analysis `serial`, computed once (the last `WISE_FT_KEPT` are kept)."""
    key = (run["checkpoint"], serial)
    with _WISE_FT_LOCK:
        kept = _WISE_FT_CURVES.get(key)
    if kept is not None:
        return kept
    reference = pairs_from_uploads(*sample_files(reference_name))
    curve = wise_ft_path(start, trained, pairs, reference, WISE_FT_ALPHAS)  # outside the lock: seconds of work
    with _WISE_FT_LOCK:
        _WISE_FT_CURVES[key] = curve
        while len(_WISE_FT_CURVES) > WISE_FT_KEPT:
            _WISE_FT_CURVES.popitem(last=False)
    return curve


def lens(
    runs: list[dict] | None, chosen: list[str], alpha: float, analysis: EncodedPairs | None, space: SessionSpace
) -> list:
    """Before/after lens of a run on the pairs last analyzed: its start model against its weights mixed at
    `alpha` (WiSE-FT; 1 = the trained model), and R@1 and retention along alpha (the `lens` API).

    Args:
        chosen: names of this session's runs ('run 1: clip×1 + saco×0.5'); the last finished of them is used.
        alpha: WiSE-FT's mix, 0 (the start model) to 1 (the trained model).

    Returns:
        [0] every pair's movement from the start to the mixed model in one PCA frame, plotly JSON
        [1] after − before of the image-text cosines, plotly heatmap JSON (z: the matrix)
        [2] after − before of SaCo's |A_I − A_T|, plotly heatmap JSON
        [3] after − before of pair 1's SPARC word maps, plotly JSON (None without patch tokens)
        [4] the pairs whose ranks changed most: ranks both ways, own cosine and inconsistency, before → after
        [5] R@1 on the analysed pairs and on a reference set, and retention, along alpha: plotly JSON
        [6] a summary: R@1 both ways, mean own cosine and inconsistency, before and after; what the reference is
    """
    with space.exclusive("analysis"):  # two encodings and a WiSE-FT curve
        run, start, trained = _run_models(runs, chosen)
        pairs = analyzed(analysis, "the lens shows both models on the pairs last analyzed.").pairs
        try:
            mixed = interpolated_vlmodel(start, trained, alpha) if 0 < alpha < 1 else (start, trained)[int(alpha)]
            view = lens_view(
                start.encode_pairs(pairs.images, pairs.captions), mixed.encode_pairs(pairs.images, pairs.captions),
                pairs.names, pairs.captions, labels=("start", f"α={alpha:g}"),
            )  # fmt: skip
            reference_name = "scenes" if run["start_name"] == OFFLINE_SPEC else "photos"
            path = _wise_ft_curve(run, start, trained, analysis.serial, pairs, reference_name)
        except (ValueError, InputError) as error:
            raise refusal(error) from error
        curve = wise_ft_figure(path, f"the bundled {reference_name}")
        summary = view.summary
        text = (
            f"**{run['name']}**, start → α={alpha:g}: image→text R@1 {summary['image_to_text_r1_before']:.2f} → "
            f"{summary['image_to_text_r1_after']:.2f}, text→image {summary['text_to_image_r1_before']:.2f} → "
            f"{summary['text_to_image_r1_after']:.2f}; mean inconsistency "
            f"{summary['mean_inconsistency_before']:.3f} → {summary['mean_inconsistency_after']:.3f}. Retention is "
            f"R@1 on the bundled {reference_name} (what the start model knew) relative to the start model's."
            + "".join(f"\n\n> {note}" for note in view.notes)
        )
        return [view.movement, view.affinity_difference, view.inconsistency_difference, view.grounding_difference,
                view.moved_most, curve, text]  # fmt: skip


def compare(runs: list[dict] | None, chosen: list[str], key: str) -> Any:
    chosen_runs = [run for run in runs or [] if run["name"] in (chosen or [])]
    return compare_runs(chosen_runs, key)


def build_train_tab(model_spec: gr.Dropdown, analysis: gr.State, space: gr.State) -> None:
    """Create the tab: settings on the left, live curves on the right, compare below."""
    runs = gr.State([])
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            start = gr.Radio(list(STARTS), value=next(iter(STARTS)), label="Start from")
            data = gr.Radio(
                DATA, value=DATA[0], label="Train on", info="a held-out split is always kept for evaluation"
            )
            gr.Markdown("**Losses** (weight 0 = off)")
            weights = [
                gr.Slider(0, 2, value=DEFAULT_WEIGHTS.get(name, 0.0), step=0.05, label=name, elem_id=f"weight-{name}")
                for name in LOSSES
            ]
            saco_distance = gr.Dropdown(list(SACO_DISTANCES), value=SACO_DISTANCES[0], label="SaCo distance")
            trainable = gr.Radio(list(TRAINABLE), value="all", label="What trains")
            steps = gr.Slider(1, MAX_STEPS, value=120, step=1, label="Steps", elem_id="train-steps")
            batch_size = gr.Slider(2, MAX_BATCH_SIZE, value=64, step=1, label="Batch size")
            lr = gr.Number(value=1e-4, label="Peak learning rate")
            eval_every = gr.Slider(1, 200, value=10, step=1, label="Evaluate every (steps)", elem_id="train-eval-every")
            seed = gr.Number(value=0, precision=0, label="Seed")
            with gr.Row():
                train_button = gr.Button("Train", variant="primary", elem_id="train")
                stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="train-status")
            loss_plot = gr.Plot(label="Loss terms", elem_id="loss-plot")
            metric_plot = gr.Plot(label="Retrieval", elem_id="metric-plot")
            alignment_plot = gr.Plot(label="Alignment", elem_id="alignment-plot")
            simla_plot = gr.Plot(label="SIMLA objectives (when xmm or psl train)", elem_id="simla-plot")
            gr.Markdown("**A fixed held-out probe batch**, redrawn at every evaluation")
            with gr.Row():
                probe_grounding = gr.Plot(label="Grounding of one word", elem_id="probe-grounding-plot")
                probe_inconsistency = gr.Plot(label="Inconsistency", elem_id="probe-inconsistency-plot")
            probe_embedding = gr.Plot(label="Embedding space", elem_id="probe-embedding-plot")
            with gr.Row():
                checkpoint = gr.File(label="Checkpoint", interactive=False, elem_id="train-checkpoint")
                use_button = gr.Button("Use this model in the other tabs")
            with gr.Accordion("Compare runs of this session", open=False):
                with gr.Row():
                    chosen = gr.CheckboxGroup([], label="Runs")
                    open_choices(chosen)  # each session's own runs
                    compare_key = gr.Dropdown(COMPARE_KEYS, value="image_to_caption_r1", label="Figure")
                compare_plot = gr.Plot(label="Runs compared")
                compare_button = gr.Button(
                    "Start model vs trained model on the current pairs", elem_id="compare-models"
                )
                side_plots = []
                for view in VIEWS:
                    with gr.Row():
                        side_plots += [gr.Plot(label=f"{view}: start"), gr.Plot(label=f"{view}: trained")]
            with gr.Accordion("Before/after lens and WiSE-FT", open=False):
                gr.Markdown(
                    "What a run changed on the current pairs: each pair's movement in one PCA frame, difference "
                    "heatmaps, the pairs that moved most. The slider mixes the start and trained weights "
                    "(WiSE-FT, Wortsman et al. 2022): θ = (1 − α) θ_start + α θ_trained."
                )
                with gr.Row():
                    alpha = gr.Slider(0, 1, value=1, step=0.05, label="α (0: start model, 1: trained)",
                                      elem_id="lens-alpha")  # fmt: skip
                    lens_button = gr.Button("Show the lens", elem_id="lens-button")
                lens_summary = gr.Markdown(elem_id="lens-summary")
                lens_plots = [gr.Plot(label="Movement", elem_id="lens-movement")]
                with gr.Row():
                    lens_plots += [gr.Plot(label="Δ image-text cosine", elem_id="lens-affinity"),
                                   gr.Plot(label="Δ inconsistency", elem_id="lens-inconsistency")]  # fmt: skip
                lens_plots.append(gr.Plot(label="Δ word maps of pair 1", elem_id="lens-grounding"))
                moved = gr.Dataframe(label="The pairs that moved most", interactive=False, wrap=True,
                                     elem_id="lens-moved")  # fmt: skip
                wise_ft_plot = gr.Plot(label="R@1 and retention along α", elem_id="lens-wise-ft")
            with gr.Accordion("Records (JSON)", open=False):
                records = gr.JSON()

    settings = [
        start,
        data,
        trainable,
        steps,
        batch_size,
        lr,
        eval_every,
        seed,
        saco_distance,
        model_spec,
        runs,
        analysis,
        space,
    ]
    probe_plots = [probe_grounding, probe_inconsistency, probe_embedding]
    outputs = [
        loss_plot,
        metric_plot,
        alignment_plot,
        simla_plot,
        *probe_plots,
        status,
        records,
        checkpoint,
        runs,
        chosen,
    ]
    train_button.click(
        train, settings, outputs, inputs_kwargs=dict(zip(LOSSES, weights, strict=True)), api_name="train",
        concurrency_id="train", concurrency_limit=MAX_TRAININGS, show_progress="minimal",
    )  # fmt: skip
    stop_button.click(stop_training, space, status, api_name="stop_training", concurrency_limit=None)
    use_button.click(use_checkpoint, runs, model_spec, api_visibility="private")
    compare_button.click(compare_models, [runs, chosen, analysis, space], side_plots, api_name="compare_models")
    lens_outputs = [*lens_plots, moved, wise_ft_plot, lens_summary]
    lens_inputs = [runs, chosen, alpha, analysis, space]
    lens_button.click(lens, lens_inputs, lens_outputs, api_name="lens", **ANALYSIS_EVENT)
    alpha.release(lens, lens_inputs, lens_outputs, api_visibility="private", **ANALYSIS_EVENT)
    for trigger in (chosen.change, compare_key.change):
        trigger(compare, [runs, chosen, compare_key], compare_plot, api_visibility="private")
