"""Command line: `python -m vlviz COMMAND ...`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import torch

LOSS_OPTIONS_EXAMPLE = '{"psl": {"alpha": 0.2}, "xmm": {"layers": 1}}'


def _build_offline_model(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vlviz.training.evaluation import is_evaluation
    from vlviz.training.grounded_model import GROUNDED_MODEL_TRAIN_CONFIG, build_grounded_model
    from vlviz.training.offline_model import OFFLINE_MODEL_TRAIN_CONFIG, build_offline_model

    torch.set_num_threads(args.threads or torch.get_num_threads())
    recipe = GROUNDED_MODEL_TRAIN_CONFIG if args.grounded else OFFLINE_MODEL_TRAIN_CONFIG
    given = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    config = replace(recipe, **{name: value for name, value in given.items() if value is not None})
    out = args.out or f"assets/models/{'vlviz-scenes-grounded' if args.grounded else 'vlviz-scenes'}"
    for record in (build_grounded_model if args.grounded else build_offline_model)(out, config):
        if is_evaluation(record) or record["step"] % args.log_every == 0:
            print(json.dumps(record), flush=True)
    print(f"saved to {out}", file=sys.stderr)
    return 0


def _eval_offline_model(args: argparse.Namespace) -> int:
    from vlviz.data.sources import SceneSource
    from vlviz.models.loading import load_model
    from vlviz.models.towers import input_side, preprocess_stats
    from vlviz.training.evaluation import evaluate

    model = load_model(args.model)
    side, stats = input_side(model.model), preprocess_stats(model.model)
    source = SceneSource(side, *stats, held_out=args.n, captions=args.captions)
    figures = evaluate(model.model, model.tokenizer, source.held_out)
    print(json.dumps({"model": args.model, "held_out_scenes": args.n, "captions": args.captions, **figures}))
    return 0


def _train(args: argparse.Namespace) -> int:
    """Train; bad settings and a run whose loss turns non-finite end with their message, not a traceback."""
    from vlviz.data.inputs import InputError
    from vlviz.models.loading import ModelUnavailableError

    try:
        return _train_run(args)
    except (InputError, ValueError, ModelUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _train_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vlviz.models.loading import resolve_device
    from vlviz.training.config import TrainConfig
    from vlviz.training.distributed import init_distributed
    from vlviz.training.evaluation import is_evaluation
    from vlviz.training.runs import parse_loss_weights, prepare_run

    try:
        options = json.loads(args.loss_options)
    except json.JSONDecodeError:
        options = None
    if not isinstance(options, dict):
        raise ValueError(f"--loss-options must be a JSON object, e.g. {LOSS_OPTIONS_EXAMPLE}, not {args.loss_options}")
    if args.saco_distance:
        options.setdefault("saco", {})["distance"] = args.saco_distance
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every, seed=args.seed,
        losses=parse_loss_weights(args.loss) if args.loss else None, loss_options=options, trainable=args.trainable,
        last_blocks=args.last_blocks, image_token_blocks=args.image_token_blocks,
        text_token_blocks=args.text_token_blocks,
    )  # fmt: skip
    context = init_distributed(resolve_device(args.device))
    run = prepare_run(args.model, args.data, config, args.out, context=context, captions=args.captions)
    if context.is_main:
        for notice in run.notices:
            print(f"notice: {notice}", file=sys.stderr)
    bar = tqdm(total=config.steps, disable=not context.is_main, unit="step")
    for record in run.records():
        if record["step"] > 0:  # step 0 is the start model's evaluation
            bar.update(1)
            bar.set_postfix(loss=f"{record['total_loss']:.3f}")
        if is_evaluation(record) and context.is_main:
            tqdm.write(json.dumps({k: round(v, 4) for k, v in record.items()}))
    bar.close()
    if context.is_main:
        print(f"metrics: {run.out_dir / 'metrics.jsonl'}\ncheckpoint: {run.checkpoint}", file=sys.stderr)
    return 0


def _eval_annotation_grounding(args: argparse.Namespace) -> int:
    """The grounding score on annotated images (--coco, or --masks with --labels), per map kind and category, beside
    the untrained model's; bad annotations end with their message, not a traceback."""
    from vlviz.data.inputs import InputError
    from vlviz.grounding.annotations import QUERY_TEMPLATE, annotation_grounding
    from vlviz.grounding.maps import MIN_COVER, UNTRAINED_SEED
    from vlviz.models.loading import ModelUnavailableError, load_model

    annotations = args.coco or args.labels or os.path.join(args.masks, "labels.csv")
    try:
        if not args.images:
            raise ValueError("--images DIR is needed with --coco and --masks: the folder of the annotated images.")
        model = load_model(args.model)
        result = annotation_grounding(
            model, annotations, args.images, args.kind, masks=args.masks, caption_table=args.caption_table,
            template=args.template or QUERY_TEMPLATE, min_cover=MIN_COVER if args.min_cover is None else args.min_cover,
            max_images=args.max_images,
        )  # fmt: skip
    except (InputError, ValueError, ModelUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for notice in result["notices"]:
        print(f"notice: {notice}", file=sys.stderr)
    print(json.dumps({"model": args.model, "annotations": annotations, **result, "untrained_seed": UNTRAINED_SEED}))
    print(
        f"{result['images']} images, {result['objects']} objects ({result['not_named']} not named in their caption, "
        f"{result['outside_crop']} outside the model's crop)",
        file=sys.stderr,
    )
    print(
        f"{'map':<12} {'category':<16} {'model':<10} {'pointing':>8} {'mass':>6} {'uniform chance':>14} "
        f"{'object acc.':>11} {'object chance':>13}  on an object",
        file=sys.stderr,
    )
    for kind, figures in result["scores"].items():
        rows = {"(all)": figures["all"], **figures["categories"]}
        baseline = {"(all)": result["untrained"][kind]["all"], **result["untrained"][kind]["categories"]}
        for category, s in rows.items():
            for label, t in (("evaluated", s), ("untrained", baseline[category])):
                print(
                    f"{kind:<12} {category[:16]:<16} {label:<10} {t['pointing_game']:>8.3f} {t['mass_in_mask']:>6.3f} "
                    f"{t['chance']:>14.3f} {t['object_accuracy']:>11.3f} {t['object_chance']:>13.3f} "
                    f"{t['on_object']:>6} of {t['words']}",
                    file=sys.stderr,
                )
    return 0


def _eval_grounding(args: argparse.Namespace) -> int:
    """The model's grounding score and the untrained model's, as one JSON line on stdout and a table on stderr."""
    if args.coco or args.masks:
        return _eval_annotation_grounding(args)
    from vlviz.data.scenes import generate_scenes
    from vlviz.data.sources import HELD_OUT_SEED
    from vlviz.grounding.maps import MIN_COVER, UNTRAINED_SEED, score_scenes, untrained_model
    from vlviz.models.loading import load_model
    from vlviz.models.towers import input_side

    model = load_model(args.model)
    if model.patches_unavailable:
        print(f"No grounding maps for {args.model}: {model.patches_unavailable}.", file=sys.stderr)
        return 2
    scenes = generate_scenes(args.n, seed=HELD_OUT_SEED, image_size=input_side(model.model), captions=args.captions)
    min_cover = MIN_COVER if args.min_cover is None else args.min_cover
    scores = score_scenes(model, scenes, kinds=args.kind, min_cover=min_cover)
    untrained = score_scenes(untrained_model(model), scenes, kinds=args.kind, min_cover=min_cover)
    print(json.dumps({
        "model": args.model, "held_out_scenes": args.n, "captions": args.captions, "min_cover": min_cover,
        "scores": scores,
        "untrained_seed": UNTRAINED_SEED, "untrained": untrained,
    }))  # fmt: skip
    _print_grounding_table(scores, untrained)
    return 0


def _print_grounding_table(
    scores: dict[str, dict[str, dict[str, float]]], untrained: dict[str, dict[str, dict[str, float]]]
) -> None:
    """Each map kind and word class: the model against the untrained model, uniform chance and object chance."""
    header = (
        f"{'map':<12} {'word':<7} {'model':<10} {'pointing':>8} {'mass':>6} {'uniform chance':>14} "
        f"{'object acc.':>11} {'object chance':>13}  on an object"
    )
    print(header, file=sys.stderr)
    for kind, classes in scores.items():
        for name, figures in classes.items():
            for label, s in (("evaluated", figures), ("untrained", untrained[kind][name])):
                print(
                    f"{kind:<12} {name:<7} {label:<10} {s['pointing_game']:>8.3f} {s['mass_in_mask']:>6.3f} "
                    f"{s['chance']:>14.3f} {s['object_accuracy']:>11.3f} {s['object_chance']:>13.3f} "
                    f"{s['on_object']:>6} of {s['words']}",
                    file=sys.stderr,
                )
        for label, s in (("evaluated", classes["colour"]), ("untrained", untrained[kind]["colour"])):
            by_order = " / ".join(f"{v:.2f}" for key, v in s.items() if key.startswith("pointing_named_"))
            blank = (
                f"; peaks on a blank scene's top patch {s['blank_peak_share']:.2f}" if "blank_peak_share" in s else ""
            )
            print(f"{kind:<12} colour  {label:<10} pointing by naming order (1st / 2nd / 3rd): {by_order}{blank}",
                  file=sys.stderr)  # fmt: skip


def _report(args: argparse.Namespace) -> int:
    from vlviz.cli.report import REPORT_MAX_PAIRS, write_embeddings_report, write_report
    from vlviz.data.inputs import InputError
    from vlviz.models.loading import OFFLINE_SPEC, ModelUnavailableError

    views = {"top_k": args.top_k, "method": args.method, "seed": args.seed, "temperature": args.temperature}
    source_options = {"image_column": args.image_column, "caption_column": args.caption_column,
                      "images_dir": args.images, "all_captions": args.all_captions}  # fmt: skip
    try:
        if args.embeddings:
            pairs_only = ("model", "device", "max_pairs", "image_column", "caption_column", "images", "all_captions")
            unused = [f"--{name.replace('_', '-')}" for name in pairs_only if getattr(args, name)]
            if unused:
                raise ValueError(
                    f"--embeddings reads precomputed embeddings (their model is in the folder's index): "
                    f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply."
                )
            path = write_embeddings_report(args.embeddings, args.out, sample=args.sample or REPORT_MAX_PAIRS, **views)
        elif args.sample:
            raise ValueError("--sample applies to --embeddings folders; --pairs are reported whole (see --max-pairs).")
        else:
            path = write_report(
                args.pairs, args.model or OFFLINE_SPEC, args.out, device=args.device,
                **({"max_pairs": args.max_pairs} if args.max_pairs else {}), source_options=source_options, **views,
            )  # fmt: skip
    except (InputError, ValueError, ModelUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _embed(args: argparse.Namespace) -> int:
    """Embed a source into a shard folder (under torchrun, this rank's share); bad input ends with its message."""
    import torch.distributed as dist

    from vlviz.data.inputs import InputError
    from vlviz.models.loading import ModelUnavailableError

    try:
        return _embed_run(args)
    except (InputError, ValueError, ModelUnavailableError, OSError, dist.DistError) as error:
        message = str(error)
        if isinstance(error, dist.DistError):
            message = "another rank stopped (its message says why)"
        elif isinstance(error, OSError):
            message = f"cannot write to {args.out} ({error.strerror or error})"
        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
        print(f"error: {rank}{message}", file=sys.stderr)
        return 2


def _embed_run(args: argparse.Namespace) -> int:
    import time

    import torch.distributed as dist
    from tqdm import tqdm

    from vlviz.data.formats import stream_pairs
    from vlviz.embedding.dataset import prepare_dataset
    from vlviz.embedding.store import EmbedSettings, embed_to_folder, read_index
    from vlviz.models.loading import load_model, resolve_device
    from vlviz.training.distributed import init_distributed

    settings = EmbedSettings(
        shard_size=args.shard_size, file_format=args.format, dtype=args.dtype, patches=args.patches,
        batch_size=args.batch_size, thumbnails=args.thumbnails,
    )  # fmt: skip
    options = {"image_column": args.image_column, "caption_column": args.caption_column, "all_captions": args.all_captions,
               "images_dir": os.path.abspath(args.images) if args.images else None}  # fmt: skip
    stream = stream_pairs(args.data, **options)
    context = init_distributed(resolve_device(args.device))
    model = load_model(args.model, context.device)
    start = time.perf_counter()
    with tqdm(desc="pairs read", unit="pair", disable=not context.is_main) as bar:
        summary = embed_to_folder(
            model, stream, args.out, settings, context.rank, context.world_size, bar.update, source_options=options
        )
    built: list[str] = []
    if context.is_main and read_index(args.out)["complete"]:  # the search index, columns (and layout) beside it
        bars: dict[str, tqdm] = {}

        def progress(stage: str, done: int, total: int) -> None:
            bar = bars.setdefault(stage, tqdm(desc=stage, total=total, unit="pair"))
            bar.update(done - bar.n)

        built = prepare_dataset(args.out, layout=args.layout, progress=progress)
        for bar in bars.values():
            bar.close()
    if context.is_main:
        for notice in stream.notices:
            print(f"notice: {notice}", file=sys.stderr)
        for left_out in summary.left_out[:5]:
            print(f"left out: pair {left_out['position']} ({left_out['name']}): {left_out['reason']}", file=sys.stderr)
        if summary.left_out_count > 5:
            print(
                f"left out: {summary.left_out_count - 5} more pairs (index.json lists the first 100)", file=sys.stderr
            )
        print(json.dumps({
            "out": args.out, "model": args.model, "pairs": summary.pairs, "left_out": summary.left_out_count,
            "shards": summary.shards,
            "world_size": context.world_size, "rank_0_wrote": summary.written, "rank_0_found_done": summary.skipped,
            "built": built, "seconds": round(time.perf_counter() - start, 1),
        }))  # fmt: skip
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _explore(args: argparse.Namespace) -> int:
    """Hand the process over to the explore command (`vlviz.cli.explore`), which starts the app: the command line
    never imports the UI."""
    os.execv(sys.executable, [sys.executable, "-m", "vlviz.cli.explore", *args.argv])  # replaces this process


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    """The format options of `vlviz.data.formats.read_pairs` and `stream_pairs`, shared by embed and report."""
    parser.add_argument("--image-column", default=None, help="parquet: the image column (default: auto-detected)")
    parser.add_argument(
        "--caption-column", default=None, help="parquet, imagefolder: the caption column; webdataset: the .json field"
    )
    parser.add_argument(
        "--images", default=None, help="COCO: the images folder (default: the JSON's); parquet: where paths start"
    )
    parser.add_argument("--all-captions", action="store_true", help="COCO: every caption a pair (default: the first)")


def main(argv: Sequence[str] | None = None) -> int:
    from vlviz.data.formats import SOURCES_HELP
    from vlviz.data.scenes import CAPTION_STYLES
    from vlviz.embedding.store import (
        DEFAULT_BATCH,
        DEFAULT_SHARD_SIZE,
        DEFAULT_THUMBNAIL_SIDE,
        DTYPES,
        FILE_FORMATS,
        MAX_THUMBNAIL_SIDE,
    )
    from vlviz.metrics.consistency import DEFAULT_TEMPERATURE

    captions = {
        "choices": list(CAPTION_STYLES),
        "default": "template",
        "help": "caption style of the scenes (default: template, the shipped model's; varied: word position alone "
        "does not identify words; the others change one factor of the template each)",
    }

    parser = argparse.ArgumentParser(prog="python -m vlviz", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build-offline-model",
        help="train the offline vlviz-scenes model from scratch, or (--grounded) vlviz-scenes-grounded from it",
    )
    build.add_argument("--grounded", action="store_true", help="the grounded model's recipe (its maps read early)")
    build.add_argument("--out", default=None, help="default: assets/models/<the model's name>")
    build.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    build.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    build.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    build.add_argument("--seed", type=int, default=None, help="default: the recipe's (0)")
    build.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    build.add_argument("--log-every", type=int, default=50)
    build.set_defaults(run=_build_offline_model)

    evaluate = commands.add_parser("eval-scenes", help="retrieval R@1 of a model on held-out scenes")
    evaluate.add_argument("--model", default="vlviz-scenes")
    evaluate.add_argument("--n", type=int, default=1000)
    evaluate.add_argument("--captions", **captions)
    evaluate.set_defaults(run=_eval_offline_model)

    fit = commands.add_parser("train", help="continual pre-training with any mix of losses (torchrun for DDP)")
    fit.add_argument("--model", default="vlviz-scenes", help="model spec to start from, or 'fresh'")
    fit.add_argument("--captions", **captions)
    fit.add_argument("--data", default="scenes", help="scenes, photos, or any source report --pairs reads")
    fit.add_argument(
        "--loss",
        default=None,
        help="weighted losses, e.g. clip=1,saco=0.5,sparc=1 (default: the start model's own: siglip for a "
        "sigmoid head, else clip)",
    )
    fit.add_argument("--saco-distance", default=None, help="SaCo distance: l1 (default), l2 or kl")
    fit.add_argument("--loss-options", default="{}", help=f"keyword arguments per loss, e.g. {LOSS_OPTIONS_EXAMPLE}")
    fit.add_argument("--steps", type=int, default=300)
    fit.add_argument("--batch-size", type=int, default=64)
    fit.add_argument("--lr", type=float, default=1e-4)
    fit.add_argument("--eval-every", type=int, default=25)
    fit.add_argument("--trainable", default="all", help="all, last_blocks or projections")
    fit.add_argument("--last-blocks", type=int, default=2)
    for tower, tokens in (("image", "patch"), ("text", "caption")):
        fit.add_argument(
            f"--{tower}-token-blocks", type=int, default=None,
            help=f"blocks the {tokens} tokens pass before token losses and maps read them (0: before any block; "
            "default: where the start model reads them, after the last block unless it says otherwise)",
        )  # fmt: skip
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default=None)
    fit.add_argument("--out", default="runs/latest")
    fit.set_defaults(run=_train)

    grounding = commands.add_parser(
        "eval-grounding",
        help="pointing game and mass in mask of colour and shape words on held-out scenes (or of category names on "
        "your annotated images: --coco, --masks), beside the untrained model of the same architecture, uniform "
        "chance and object-level chance",
    )
    grounding.add_argument("--model", default="vlviz-scenes")
    grounding.add_argument("--n", type=int, default=200)
    grounding.add_argument("--captions", **captions)
    grounding.add_argument(
        "--kind",
        action="append",
        help="sparc, no-sparsity, softmax, cosine, occlusion, maskclip, sclip, clearclip, naclip, naclip_pamr (NACLIP "
        "refined by PAMR, 10 iterations, dilations 8 and 16 pixels), legrad or gradeclip (default: the first four, "
        "read off the encodings; the others need a tower pass: occlusion one per patch, legrad and gradeclip a "
        "backward pass per token too)",
    )
    grounding.add_argument("--min-cover", type=float, default=None, help="share of a patch inside an object (0.25)")
    annotated = grounding.add_mutually_exclusive_group()
    annotated.add_argument(
        "--coco", default=None, help="score on your images instead: a COCO instances .json (polygons or RLE)"
    )
    annotated.add_argument(
        "--masks", default=None, help="score on your images instead: a folder of object masks (see --labels)"
    )
    grounding.add_argument(
        "--labels", default=None,
        help="--masks: the labels table, mask,category[,image] CSV or JSON (default: the folder's labels.csv)",
    )  # fmt: skip
    grounding.add_argument("--images", default=None, help="--coco, --masks: the folder of the annotated images")
    grounding.add_argument(
        "--template", default=None, help="--coco, --masks: each object's caption, {} its category (a photo of a {}.)"
    )
    grounding.add_argument(
        "--caption-table", default=None,
        help="--coco, --masks: file,caption CSV or JSON: read each category in its image's own caption instead",
    )  # fmt: skip
    grounding.add_argument("--max-images", type=int, default=None, help="--coco, --masks: score the first N images")
    grounding.set_defaults(run=_eval_grounding)

    embed = commands.add_parser(
        "embed",
        help="embed a pair set into npz/parquet shards with an index (resumable; torchrun splits the shards), then "
        "its search index and pair columns (docs/dataset.md)",
    )
    embed.add_argument("--model", default="vlviz-scenes")
    embed.add_argument("--data", required=True, help=f"any source report --pairs reads ({SOURCES_HELP}) but a zip")
    embed.add_argument("--out", required=True, help="folder for index.json and the shards; a rerun resumes it")
    embed.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="pairs decoded and encoded at once")
    embed.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
        help="pairs per shard (lower it with --patches: a ViT-B/16 stores about 200 KB of patches a pair)",
    )  # fmt: skip
    embed.add_argument("--patches", action="store_true", help="also store projected patch and token features")
    embed.add_argument(
        "--format", default="npz", choices=FILE_FORMATS, help="npz (numpy, default) or parquet (fixed-size lists)"
    )
    embed.add_argument("--dtype", default="float16", choices=DTYPES, help="of the stored features")
    embed.add_argument(
        "--thumbnails", type=int, default=DEFAULT_THUMBNAIL_SIDE,
        help=f"longer side in px of each image's stored JPEG thumbnail (0: none; at most {MAX_THUMBNAIL_SIDE})",
    )  # fmt: skip
    embed.add_argument(
        "--layout", action="store_true",
        help="also fit the 2-D map of every pair now (minutes at a million pairs; else on the folder's first open)",
    )  # fmt: skip
    _add_source_options(embed)
    embed.add_argument("--device", default=None)
    embed.set_defaults(run=_embed)

    report = commands.add_parser(
        "report", help="self-contained HTML report of the Affinity, Consistency and Embedding views"
    )
    given = report.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--embeddings", default=None, help="a folder `embed` wrote: report from its embeddings, without a model"
    )
    given.add_argument(
        "--pairs", help="a folder of images with captions.csv/json or metadata.jsonl/csv, a .zip, a "
        "caption table, a COCO captions .json, a .parquet, or webdataset shards ('shards/{000..009}.tar', quoted)",
    )  # fmt: skip
    _add_source_options(report)
    report.add_argument("--model", default=None, help="model spec (default: vlviz-scenes)")
    report.add_argument("--out", required=True, help="folder for report.html and its CSV/JSON/.npz files")
    report.add_argument("--top-k", type=int, default=10, help="most inconsistent pairs to show")
    report.add_argument("--method", default="umap", choices=["umap", "pca"], help="2-D layout of the embeddings")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="softmax temperature of the KL")
    report.add_argument("--max-pairs", type=int, default=None, help="refuse more pairs (20,000; images stay in memory)")
    report.add_argument(
        "--sample", type=int, default=None,
        help="--embeddings: pairs analysed; a larger folder is sampled, seeded by --seed (default 20,000)",
    )  # fmt: skip
    report.add_argument("--device", default=None)
    report.set_defaults(run=_report)

    explore = commands.add_parser(
        "explore", add_help=False, help="the app with embedding folders open in its Dataset tab (docs/dataset.md)"
    )
    explore.add_argument("argv", nargs=argparse.REMAINDER, help="FOLDER ... [--model SPEC] [--port PORT]")
    explore.set_defaults(run=_explore)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
