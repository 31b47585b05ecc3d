"""The Train tab: continual pre-training with any mix of losses, streamed live; stop, compare, reuse.

The session's `vlviz.ui.runner.Runner` owns the runs: it numbers them (one at a time per session), keeps
them within a disk budget, and streams each as `RunUpdate`s, which the tab turns into curves and probe
figures. Each browser session has its own runner, writing under its own server-made folder, so two people
training at once never see, stop or overwrite each other's runs. At most `MAX_TRAININGS` train at once;
the others wait in Gradio's queue, which shows their position.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import gradio as gr

from vlviz.compare.interpolation import interpolated_vlmodel, wise_ft_path
from vlviz.data.inputs import InputError, PairSet, pairs_from_uploads
from vlviz.data.samples import sample_files
from vlviz.losses import LOSSES, loss_keys
from vlviz.losses.saco import SACO_DISTANCES
from vlviz.models.encoding import VLModel, encode_pair_set
from vlviz.models.loading import OFFLINE_SPEC, ModelUnavailableError, load_model
from vlviz.training.config import TRAINABLE, TrainConfig
from vlviz.training.runs import FRESH
from vlviz.ui.agents import open_choices
from vlviz.ui.messages import inform, refusal, warn
from vlviz.ui.runner import Runner, RunnerBusy, RunUpdate, SessionRun
from vlviz.ui.session import ANALYSIS_EVENT, SESSIONS, Session, SessionBusy, SessionStates, Updates
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
WISE_FT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the points of the lens's R@1-and-retention curve
WISE_FT_KEPT = 8  # curves kept (per run and analysis): moving the slider redraws the lens, not the curve


def _loss_keys(records: list[dict]) -> list[str]:
    return [k for k in records[-1] if k.endswith("_loss")] if records else []


def _run_names(runner: Runner) -> Any:
    names = [run.name for run in runner.runs]
    return gr.update(choices=names, value=names[-2:] if names else [])


class TrainTab:
    """The Train tab: its components, and the callbacks that fill them (`Updates`, `vlviz.ui.session`)."""

    def __init__(self) -> None:
        """Create the tab's components (inside its gr.Tab): settings on the left, live curves on the right."""
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                self.start = gr.Radio(list(STARTS), value=next(iter(STARTS)), label="Start from")
                self.data = gr.Radio(
                    DATA, value=DATA[0], label="Train on", info="a held-out split is always kept for evaluation"
                )
                gr.Markdown("**Losses** (weight 0 = off)")
                self.weights = {
                    name: gr.Slider(
                        0, 2, value=DEFAULT_WEIGHTS.get(name, 0.0), step=0.05, label=name, elem_id=f"weight-{name}"
                    )
                    for name in LOSSES
                }
                self.saco_distance = gr.Dropdown(list(SACO_DISTANCES), value=SACO_DISTANCES[0], label="SaCo distance")
                self.trainable = gr.Radio(list(TRAINABLE), value="all", label="What trains")
                self.steps = gr.Slider(1, MAX_STEPS, value=120, step=1, label="Steps", elem_id="train-steps")
                self.batch_size = gr.Slider(2, MAX_BATCH_SIZE, value=64, step=1, label="Batch size")
                self.lr = gr.Number(value=1e-4, label="Peak learning rate")
                self.eval_every = gr.Slider(
                    1, 200, value=10, step=1, label="Evaluate every (steps)", elem_id="train-eval-every"
                )
                self.seed = gr.Number(value=0, precision=0, label="Seed")
                with gr.Row():
                    self.train_button = gr.Button("Train", variant="primary", elem_id="train")
                    self.stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=2):
                self.status = gr.Markdown(elem_id="train-status")
                self.loss_plot = gr.Plot(label="Loss terms", elem_id="loss-plot")
                self.metric_plot = gr.Plot(label="Retrieval", elem_id="metric-plot")
                self.alignment_plot = gr.Plot(label="Alignment", elem_id="alignment-plot")
                self.simla_plot = gr.Plot(label="SIMLA objectives (when xmm or psl train)", elem_id="simla-plot")
                gr.Markdown("**A fixed held-out probe batch**, redrawn at every evaluation")
                with gr.Row():
                    grounding = gr.Plot(label="Grounding of one word", elem_id="probe-grounding-plot")
                    inconsistency = gr.Plot(label="Inconsistency", elem_id="probe-inconsistency-plot")
                embedding = gr.Plot(label="Embedding space", elem_id="probe-embedding-plot")
                self.probe_plots = {"grounding": grounding, "inconsistency": inconsistency, "embedding": embedding}
                with gr.Row():
                    self.checkpoint = gr.File(label="Checkpoint", interactive=False, elem_id="train-checkpoint")
                    self.use_button = gr.Button("Use this model in the other tabs")
                with gr.Accordion("Compare runs of this session", open=False):
                    with gr.Row():
                        self.chosen = gr.CheckboxGroup([], label="Runs")
                        open_choices(self.chosen)  # each session's own runs
                        self.compare_key = gr.Dropdown(COMPARE_KEYS, value="image_to_caption_r1", label="Figure")
                    self.compare_plot = gr.Plot(label="Runs compared")
                    self.compare_button = gr.Button(
                        "Start model vs trained model on the current pairs", elem_id="compare-models"
                    )
                    self.side_plots = []
                    for view in VIEWS:
                        with gr.Row():
                            self.side_plots += [gr.Plot(label=f"{view}: start"), gr.Plot(label=f"{view}: trained")]
                with gr.Accordion("Before/after lens and WiSE-FT", open=False):
                    gr.Markdown(
                        "What a run changed on the current pairs: each pair's movement in one PCA frame, difference "
                        "heatmaps, the pairs that moved most. The slider mixes the start and trained weights "
                        "(WiSE-FT, Wortsman et al. 2022): θ = (1 − α) θ_start + α θ_trained."
                    )
                    with gr.Row():
                        self.alpha = gr.Slider(0, 1, value=1, step=0.05, label="α (0: start model, 1: trained)",
                                               elem_id="lens-alpha")  # fmt: skip
                        self.lens_button = gr.Button("Show the lens", elem_id="lens-button")
                    self.lens_summary = gr.Markdown(elem_id="lens-summary")
                    self.lens_plots = [gr.Plot(label="Movement", elem_id="lens-movement")]
                    with gr.Row():
                        self.lens_plots += [gr.Plot(label="Δ image-text cosine", elem_id="lens-affinity"),
                                            gr.Plot(label="Δ inconsistency", elem_id="lens-inconsistency")]  # fmt: skip
                    self.lens_plots.append(gr.Plot(label="Δ word maps of pair 1", elem_id="lens-grounding"))
                    self.moved = gr.Dataframe(label="The pairs that moved most", interactive=False, wrap=True,
                                              elem_id="lens-moved")  # fmt: skip
                    self.wise_ft_plot = gr.Plot(label="R@1 and retention along α", elem_id="lens-wise-ft")
                with gr.Accordion("Records (JSON)", open=False):
                    self.records = gr.JSON()
        # In the API's order: a new output goes last, so older clients still work.
        self.outputs = [
            self.loss_plot, self.metric_plot, self.alignment_plot, self.simla_plot, *self.probe_plots.values(),
            self.status, self.records, self.checkpoint, self.chosen,
        ]  # fmt: skip

    def train(
        self, start: str, data: str, trainable: str, steps: float, batch_size: float, lr: float, eval_every: float,
        seed: float, saco_distance: str, model_spec: str | None, session: Session, request: gr.Request,
        **weights: float,
    ) -> Iterator[Updates]:  # fmt: skip
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
        losses = {name: float(weights[name]) for name in LOSSES if weights.get(name) and weights[name] > 0}
        SESSIONS.bind(session, request)
        try:
            if not (0 < steps <= MAX_STEPS and 0 < batch_size <= MAX_BATCH_SIZE):
                raise ValueError(f"The app trains at most {MAX_STEPS} steps with batches of at most {MAX_BATCH_SIZE}.")
            options = {"saco": {"distance": saco_distance}} if "saco" in losses else {}
            config = TrainConfig(
                steps=int(steps), batch_size=int(batch_size), lr=float(lr), eval_every=int(eval_every),
                seed=int(seed), losses=losses, loss_options=options, trainable=trainable,
            )  # fmt: skip
            start_name = STARTS[start] or (model_spec or OFFLINE_SPEC).strip()
            start_path = session.checkpoint(start_name)  # a checkpoint of this session, else a spec the policy allows
            if start_path is None and start_name != FRESH:
                session.policy.check(start_name)
            source = session.analyzed("the run trains on the pairs last analyzed.").pairs if data == DATA[2] else data
        except (ValueError, InputError, ModelUnavailableError) as error:
            raise refusal(error) from error
        label = " + ".join(f"{k}×{v:g}" for k, v in losses.items())
        updates = session.runner.train(str(start_path or start_name), start_name, source, config, label)
        try:
            with closing(updates):  # a call that ends early (the client left) ends the run, which saves what it did
                for update in updates:
                    for notice in update.notices:
                        warn(notice)
                    yield self._update(update, session.runner)
        except RunnerBusy as error:
            raise refusal(error, SessionBusy) from error
        except (ValueError, InputError, ModelUnavailableError) as error:
            raise refusal(error) from error

    def _update(self, update: RunUpdate, runner: Runner) -> Updates:
        """A run's update as the tab's curves, probe figures, status, records, checkpoint and run list."""
        records = update.run.records
        updates = {
            self.loss_plot: training_curves(records, _loss_keys(records), "Loss terms"),
            self.metric_plot: training_curves(records, RETRIEVAL_KEYS, "R@1: held-out split and probe set (retention)"),
            self.alignment_plot: training_curves(
                records, ALIGNMENT_KEYS, "SaCo inconsistency and SPARC pointing game (held-out)"
            ),
            self.simla_plot: training_curves(
                records,
                SHARE_KEYS,
                "SIMLA: masked-token accuracy (image vs noise) and concept precision@3 (training batch)",
            ),
            self.status: update.status,
            self.records: records,
            self.checkpoint: str(update.run.checkpoint) if update.run.checkpoint else None,
            self.chosen: _run_names(runner),
        }
        if update.probe is not None:
            figures = probe_figures(**vars(update.probe))
            updates |= {self.probe_plots[key]: figure for key, figure in figures.items()}
        return updates

    def compare_models(self, chosen: list[str], session: Session) -> list:
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
        with session.exclusive("analysis"):  # it encodes the pairs twice
            _, start, trained = _run_models(session.runner, chosen)
            pairs = session.analyzed("the comparison shows both models on the pairs last analyzed.").pairs
            encodings = [encode_pair_set(model, pairs).encoding for model in (start, trained)]
            images = tuple(model.input_image(pairs.images[0]) for model in (start, trained))
            views = side_by_side(*encodings, pairs, images)
            return [figure for view in VIEWS for figure in views[view]]

    def lens(self, chosen: list[str], alpha: float, session: Session) -> list:
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
        with session.exclusive("analysis"):  # two encodings and a WiSE-FT curve
            run, start, trained = _run_models(session.runner, chosen)
            analysis = session.analyzed("the lens shows both models on the pairs last analyzed.")
            pairs = analysis.pairs
            try:
                mixed = interpolated_vlmodel(start, trained, alpha) if 0 < alpha < 1 else (start, trained)[int(alpha)]
                view = lens_view(
                    start.encode_pairs(pairs.images, pairs.captions), mixed.encode_pairs(pairs.images, pairs.captions),
                    pairs.names, pairs.captions, labels=("start", f"α={alpha:g}"),
                )  # fmt: skip
                reference_name = "scenes" if run.start_name == OFFLINE_SPEC else "photos"
                path = _wise_ft_curve(run, start, trained, analysis.serial, pairs, reference_name)
            except (ValueError, InputError) as error:
                raise refusal(error) from error
            curve = wise_ft_figure(path, f"the bundled {reference_name}")
            summary = view.summary
            text = (
                f"**{run.name}**, start → α={alpha:g}: image→text R@1 {summary['image_to_text_r1_before']:.2f} → "
                f"{summary['image_to_text_r1_after']:.2f}, text→image {summary['text_to_image_r1_before']:.2f} → "
                f"{summary['text_to_image_r1_after']:.2f}; mean inconsistency "
                f"{summary['mean_inconsistency_before']:.3f} → {summary['mean_inconsistency_after']:.3f}. Retention is "
                f"R@1 on the bundled {reference_name} (what the start model knew) relative to the start model's."
                + "".join(f"\n\n> {note}" for note in view.notes)
            )
            return [view.movement, view.affinity_difference, view.inconsistency_difference, view.grounding_difference,
                    view.moved_most, curve, text]  # fmt: skip


def stop_training(session: Session) -> str:
    """Ask this session's runs (and no one else's) to stop after their current step; they keep curves and checkpoint (the `stop_training` API).

    Returns:
        what happened: 'Stopping after the current step…' or 'No run is training in this session.'
    """
    return "Stopping after the current step…" if session.runner.stop() else "No run is training in this session."


def use_checkpoint(session: Session) -> Any:
    """Make the last finished run's checkpoint the model of the other tabs (by its session name, not its path)."""
    try:
        run = session.runner.finished()
    except ValueError:
        raise refusal("No checkpoint yet: train (or stop) a run first.") from None
    inform(f"The other tabs now use {run.name} (`{run.spec}`).")
    return gr.update(value=run.spec)


def compare(chosen: list[str], key: str, session: Session) -> Any:
    """The figure `key` of the chosen runs, one line each."""
    runs = [run for run in session.runner.runs if run.name in (chosen or [])]
    return compare_runs([{"name": run.name, "records": run.records} for run in runs], key)


def _run_models(runner: Runner, chosen: list[str]) -> tuple[SessionRun, VLModel, VLModel]:
    """The last finished chosen run (or the last finished run), its start model and its trained model."""
    try:
        run = runner.finished(chosen)
    except ValueError:
        raise refusal("No finished run to compare: train (or stop) a run first.") from None
    if run.start == FRESH:
        raise refusal(f"{run.name} started from random weights: there is no start model to show.")
    try:
        start = load_model(run.start, name=run.start_name)
        trained = load_model(str(run.checkpoint.parent), name=run.spec)
    except (ValueError, ModelUnavailableError) as error:
        raise refusal(error) from error
    return run, start, trained


_WISE_FT_CURVES: OrderedDict[tuple[str, int], list[dict[str, float]]] = OrderedDict()
_WISE_FT_LOCK = threading.Lock()  # sessions' lens calls run in several worker threads


def _wise_ft_curve(
    run: SessionRun, start: VLModel, trained: VLModel, serial: int, pairs: PairSet, reference_name: str
) -> list[dict[str, float]]:
    """`wise_ft_path` of a run on the analysis `serial`, computed once (the last `WISE_FT_KEPT` are kept)."""
    key = (str(run.checkpoint), serial)
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


def build_train_tab(model_spec: gr.Dropdown, states: SessionStates) -> TrainTab:
    """Create the tab and wire it to `TrainTab.train` (streamed), stop, compare and the lens."""
    tab = TrainTab()
    session = states.session
    settings = [
        tab.start, tab.data, tab.trainable, tab.steps, tab.batch_size, tab.lr, tab.eval_every, tab.seed,
        tab.saco_distance, model_spec, session,
    ]  # fmt: skip
    tab.train_button.click(
        tab.train, settings, tab.outputs, inputs_kwargs=tab.weights, api_name="train", concurrency_id="train",
        concurrency_limit=MAX_TRAININGS, show_progress="minimal",
    )  # fmt: skip
    tab.stop_button.click(stop_training, session, tab.status, api_name="stop_training", concurrency_limit=None)
    tab.use_button.click(use_checkpoint, session, model_spec, api_visibility="private")
    tab.compare_button.click(tab.compare_models, [tab.chosen, session], tab.side_plots, api_name="compare_models")
    lens_outputs = [*tab.lens_plots, tab.moved, tab.wise_ft_plot, tab.lens_summary]
    lens_inputs = [tab.chosen, tab.alpha, session]
    tab.lens_button.click(tab.lens, lens_inputs, lens_outputs, api_name="lens", **ANALYSIS_EVENT)
    tab.alpha.release(tab.lens, lens_inputs, lens_outputs, api_visibility="private", **ANALYSIS_EVENT)
    for trigger in (tab.chosen.change, tab.compare_key.change):
        trigger(compare, [tab.chosen, tab.compare_key, session], tab.compare_plot, api_visibility="private")
    return tab
