"""Command line: `python -m vlviz COMMAND ...`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch


def _build_offline_model(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vlviz.train import OFFLINE_MODEL_TRAIN_CONFIG, build_offline_model

    torch.set_num_threads(args.threads or torch.get_num_threads())
    config = replace(
        OFFLINE_MODEL_TRAIN_CONFIG, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    for record in build_offline_model(args.out, config):
        if "image_to_text_r1" in record or record["step"] % args.log_every == 0:
            print(json.dumps(record), flush=True)
    print(f"saved to {args.out}", file=sys.stderr)
    return 0


def _eval_offline_model(args: argparse.Namespace) -> int:
    from vlviz.data.sources import SceneSource, preprocess_stats
    from vlviz.models import load_model
    from vlviz.train import evaluate

    model = load_model(args.model)
    source = SceneSource(model.model.visual.image_size[0], *preprocess_stats(model.model), held_out=args.n)
    figures = evaluate(model.model, model.tokenizer, source.held_out)
    print(json.dumps({"model": args.model, "held_out_scenes": args.n, **figures}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlviz", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build-offline-model", help="train the offline vlviz-scenes model from scratch")
    build.add_argument("--out", default="assets/models/vlviz-scenes")
    build.add_argument("--steps", type=int, default=3000)
    build.add_argument("--batch-size", type=int, default=128)
    build.add_argument("--lr", type=float, default=5e-4)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    build.add_argument("--log-every", type=int, default=50)
    build.set_defaults(run=_build_offline_model)

    evaluate = commands.add_parser("eval-scenes", help="retrieval R@1 of a model on held-out scenes")
    evaluate.add_argument("--model", default="vlviz-scenes")
    evaluate.add_argument("--n", type=int, default=1000)
    evaluate.set_defaults(run=_eval_offline_model)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
