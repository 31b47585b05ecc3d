"""The bundled sample sets (`assets/samples/`) and the ground truth of its scenes."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

from vlviz.data.keys import content_key
from vlviz.data.scenes import SceneBatch, generate_scenes

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
SAMPLES_DIR = ASSETS_DIR / "samples"
SAMPLE_SETS = {"scenes": SAMPLES_DIR / "scenes", "photos": SAMPLES_DIR / "photos"}
SAMPLE_SCENES = {"n": 24, "seed": 2024}  # how assets/samples/scenes was generated (assets/README.md)


def sample_files(name: str) -> tuple[list[str], str]:
    """A bundled sample set as uploads: its image paths and its captions, one per line."""
    folder = SAMPLE_SETS[name]
    with (folder / "captions.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [str(folder / row["file"]) for row in rows], "\n".join(row["caption"] for row in rows)


@functools.cache
def bundled_scenes() -> tuple[SceneBatch, dict[str, int]]:
    """The bundled sample scenes regenerated with their object masks, and their images' content keys.

    Generated once per process: the Grounding view looks uploaded pairs up here to score them.
    """
    scenes = generate_scenes(SAMPLE_SCENES["n"], seed=SAMPLE_SCENES["seed"])
    return scenes, {content_key(image): i for i, image in enumerate(scenes.pil_images())}
