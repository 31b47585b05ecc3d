"""Shared fixtures: a tiny random-init open_clip model on disk, and the app launched on a free port."""

from __future__ import annotations

import csv
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP

from vlviz.models.checkpoints import save_checkpoint

# A ViT and a ResNet small enough to build in milliseconds; weights do not matter for these tests.
TINY_VIT_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
TINY_RESNET_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


# SigLIP-style: a separate text tower (CustomTextCLIP), last-token pooling, a learned logit bias.
TINY_SIGLIP_CFG = {
    "embed_dim": 16,
    "custom_text": True,
    "init_logit_bias": -10,
    "vision_cfg": TINY_VIT_CFG["vision_cfg"],
    "text_cfg": {**TINY_VIT_CFG["text_cfg"], "pool_type": "last", "no_causal_mask": True},
}


def _write_model(folder: Path, cfg: dict, seed: int) -> Path:
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in cfg.items() if k != "custom_text"}
    model = CustomTextCLIP(**kwargs) if cfg.get("custom_text") else CLIP(**kwargs)
    save_checkpoint(model, cfg, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_model(tmp_path_factory.mktemp("tiny-vit"), TINY_VIT_CFG, seed=0)


@pytest.fixture(scope="session")
def tiny_resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_model(tmp_path_factory.mktemp("tiny-resnet"), TINY_RESNET_CFG, seed=0)


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_model(tmp_path_factory.mktemp("tiny-siglip"), TINY_SIGLIP_CFG, seed=0)


@pytest.fixture(scope="session")
def tiny_arch_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Register the tiny ViT as a built-in open_clip architecture name, for NAME:... specs."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / "vlviz-test-tiny.json").write_text(json.dumps(TINY_VIT_CFG))
    open_clip.add_model_config(folder)
    return "vlviz-test-tiny"


SCENES_DIR = Path(__file__).resolve().parents[1] / "assets" / "samples" / "scenes"
SCENE_CAPTIONS = {row["file"]: row["caption"] for row in csv.DictReader((SCENES_DIR / "captions.csv").open())}


def analyzed_client(app_url: str, files: list[Path], model: str | None = None):
    """A gradio_client session that has analyzed these bundled scenes with their own captions (by `model`,
    default the offline one)."""
    from gradio_client import Client, handle_file

    from vlviz.models.loading import OFFLINE_SPEC

    client = Client(app_url, verbose=False)
    captions = "\n".join(SCENE_CAPTIONS[f.name] for f in files)
    client.predict(
        [handle_file(str(f)) for f in files],
        captions,
        model or OFFLINE_SPEC,
        "cosine similarity",
        api_name="/analyze",
    )
    return client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url() -> Iterator[str]:
    """The real app on the offline model, launched in this process on a free local port."""
    from vlviz.models.loading import OFFLINE_SPEC
    from vlviz.ui import build_app, launch_kwargs

    demo = build_app(OFFLINE_SPEC)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Chromium driven by Playwright: Debian's when `chromium` is on PATH, else Playwright's own build.

    The README's test command installs one first when none launches (`python -m tests.browser_setup`).
    """
    from playwright.sync_api import Error, sync_playwright

    from tests.browser import CHROMIUM_ARGS
    from tests.browser_setup import launch_chromium

    with sync_playwright() as playwright:
        try:
            browser = launch_chromium(playwright, CHROMIUM_ARGS)
        except Error as error:
            pytest.fail(
                f"No Chromium launches for the browser tests ({str(error).strip().splitlines()[0]}). "
                "`python -m tests.browser_setup` installs one (Debian's `chromium` as root with apt, "
                "else Playwright's own)."
            )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url: str) -> Iterator[object]:
    """A fresh page on the app, once the bundled scenes analyzed on load are drawn."""
    from tests.browser import N_SAMPLE_PAIRS, open_page, wait_for_heatmap

    page = open_page(browser, app_url)
    wait_for_heatmap(page, "image-text-plot", rows=N_SAMPLE_PAIRS)
    yield page
    page.context.close()
