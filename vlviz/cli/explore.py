"""`python -m vlviz explore FOLDER [FOLDER ...] [--model SPEC] [--port PORT]`: the app, with embedding folders open
in its Dataset tab.

Each folder is opened here first (`vlviz.embedding.dataset.open_dataset`), building what it lacks (the search
index, the map: minutes at a million pairs) with a progress bar, so a bad folder ends with its message before any
server starts and the page opens at once. The folders given are the only ones a visitor can open, besides those
the owner lists in `VLVIZ_DATASETS` (`vlviz.ui.dataset_tab.DatasetCatalog`); on a public server
(`vlviz.models.policy`) the same holds, and visitors pick them by name, never by path.

This module starts the Gradio app, so it sits above the UI (tests/test_layers.py); `vlviz.cli.main` hands the
process over to it (`python -m vlviz.cli.explore`) rather than importing it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DEFAULT_PORT = 7860


def parser() -> argparse.ArgumentParser:
    """The explore command's arguments."""
    parser = argparse.ArgumentParser(prog="python -m vlviz explore", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="embedding folders `python -m vlviz embed` wrote")
    parser.add_argument(
        "--model", default=None, help="the model box's start model (default: the first folder's own model)"
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", DEFAULT_PORT)),
        help="the port to serve on (default: GRADIO_SERVER_PORT, else 7860); the address is GRADIO_SERVER_NAME's",
    )  # fmt: skip
    return parser


def open_folders(folders: Sequence[str]) -> list[str]:
    """Open each folder, building what it lacks; returns the model spec of each.

    Raises:
        InputError: A folder cannot be opened (what is wrong and what to do).
    """
    from tqdm import tqdm

    from vlviz.embedding.dataset import open_dataset

    specs = []
    for folder in folders:
        bars: dict[str, tqdm] = {}

        def progress(stage: str, done: int, total: int, bars: dict[str, tqdm] = bars) -> None:
            bar = bars.setdefault(stage, tqdm(total=total, desc=stage, unit="pair", file=sys.stderr))
            bar.update(done - bar.n)

        specs.append(open_dataset(folder, progress=progress).model_spec)
        for bar in bars.values():
            bar.close()
    return specs


def main(argv: Sequence[str] | None = None) -> int:
    """Open the folders, then serve the app on them until interrupted; a bad folder ends with its message (2)."""
    from vlviz.data.inputs import InputError

    args = parser().parse_args(argv)
    try:
        specs = open_folders(args.folders)
    except (InputError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from vlviz.ui import build_app, launch_kwargs

    demo = build_app(args.model or specs[0], initial_sample=None, datasets=args.folders)
    demo.launch(server_port=args.port, **launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
