"""Model specs, loading from each source, devices, the process cache and the offline fallback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vlviz.models.loading as models
from vlviz.models.loading import (
    OFFLINE_SPEC,
    ModelUnavailableError,
    default_precision,
    load_model,
    load_model_or_offline,
    parse_spec,
    resolve_device,
)


def test_parse_spec_forms(tiny_vit_dir: Path, tiny_arch_name: str) -> None:
    assert parse_spec(OFFLINE_SPEC).model_name.startswith("local-dir:")
    assert parse_spec("hf-hub:org/name") == models.ModelSource("hf-hub:org/name", "hf-hub:org/name", None, True)
    folder = parse_spec(str(tiny_vit_dir))
    assert folder.model_name == f"local-dir:{tiny_vit_dir.resolve()}" and not folder.needs_hub
    weights = parse_spec(str(tiny_vit_dir / "open_clip_model.safetensors"))
    assert weights.model_name == folder.model_name
    assert parse_spec(f"{tiny_arch_name}:random") == models.ModelSource(
        f"{tiny_arch_name}:random", tiny_arch_name, None, False
    )
    tagged = parse_spec("ViT-B-32:laion2b_s34b_b79k")
    assert (tagged.model_name, tagged.pretrained, tagged.needs_hub) == ("ViT-B-32", "laion2b_s34b_b79k", True)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "Empty model spec"),
        ("NoSuchNet-9", "Unknown model 'NoSuchNet-9'"),
        ("ViT-B-32:no_such_tag", "Unknown pretrained tag 'no_such_tag' for ViT-B-32"),
    ],
)
def test_parse_spec_errors_name_the_bad_value(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_folder_without_config_and_lonely_weights_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no open_clip_config\.json"):
        parse_spec(str(tmp_path))
    lonely = tmp_path / "weights.safetensors"
    lonely.write_bytes(b"")
    with pytest.raises(ValueError, match="ARCHITECTURE:"):
        parse_spec(str(lonely))


def test_load_each_local_form_gives_the_same_weights(tiny_vit_dir: Path, tiny_arch_name: str) -> None:
    weights = tiny_vit_dir / "open_clip_model.safetensors"
    from_folder = load_model(str(tiny_vit_dir), device="cpu")
    from_file = load_model(str(weights), device="cpu")
    from_name_and_file = load_model(f"{tiny_arch_name}:{weights}", device="cpu")
    random_init = load_model(f"{tiny_arch_name}:random", device="cpu")
    reference = from_folder.model.state_dict()
    for other in (from_file, from_name_and_file):
        assert all(torch.equal(reference[k], v) for k, v in other.model.state_dict().items())
    assert not torch.equal(reference["visual.proj"], random_init.model.state_dict()["visual.proj"])


def test_models_are_cached_per_spec_and_device(tiny_vit_dir: Path) -> None:
    first = load_model(str(tiny_vit_dir), device="cpu")
    assert load_model(str(tiny_vit_dir), device=torch.device("cpu")) is first


def test_offline_model_loads_on_cpu_in_full_precision() -> None:
    model = load_model(OFFLINE_SPEC, device="cpu")
    assert model.device.type == "cpu" and model.dtype == torch.float32
    assert model.grid_size == (8, 8)


def test_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit device wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device() == torch.device("mps")


def test_precision_is_half_on_gpus_and_full_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_precision(torch.device("cpu")) == "fp32"
    assert default_precision(torch.device("mps")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert default_precision(torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert default_precision(torch.device("cuda")) == "fp16"


def test_unreachable_hub_fails_fast_with_the_model_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=0: False)
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=r"Cannot load ViT-B-32:laion2b_s34b_b79k: .*not reachable"):
        load_model("ViT-B-32:laion2b_s34b_b79k", device="cpu")
    assert time.monotonic() - start < 5


def test_hub_probe_honours_hf_hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False


def test_probe_gives_up_within_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://10.255.255.1:9")  # never answers; nothing is sent
    start = time.monotonic()
    models.hub_reachable(timeout=0.5)
    assert time.monotonic() - start < 2


def test_hf_hub_offline_download_fails_with_a_clear_error() -> None:
    """With HF_HUB_OFFLINE=1 the hub client looks only in its cache (env read at import: new process)."""
    code = (
        "import vlviz\n"
        "try:\n"
        "    vlviz.load_model('hf-hub:timm/ViT-B-16-SigLIP', device='cpu')\n"
        "except vlviz.ModelUnavailableError as e:\n"
        "    print('UNAVAILABLE', e)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-vlviz-test-cache", "PATH": "/usr/bin:/bin"}
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "UNAVAILABLE Cannot load hf-hub:timm/ViT-B-16-SigLIP" in out.stdout, out.stderr[-2000:]
    assert time.monotonic() - start < 60


def test_fallback_to_offline_model_with_a_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=0: False)
    model, notice = load_model_or_offline("ViT-B-32:laion2b_s34b_b79k", device="cpu")
    assert model.spec == OFFLINE_SPEC
    assert "ViT-B-32:laion2b_s34b_b79k" in notice and "offline model" in notice and "not photographs" in notice


def test_a_model_that_loads_gives_no_fallback_notice(tiny_vit_dir: Path) -> None:
    model, notice = load_model_or_offline(str(tiny_vit_dir), device="cpu")
    assert model.spec == str(tiny_vit_dir) and notice is None


def test_loaded_models_know_their_architecture_config(tiny_vit_dir: Path, tiny_arch_name: str) -> None:
    from tests.conftest import TINY_VIT_CFG

    assert load_model(str(tiny_vit_dir), device="cpu").model_cfg == TINY_VIT_CFG
    assert load_model(f"{tiny_arch_name}:random", device="cpu").model_cfg == TINY_VIT_CFG
