"""Two folders of the same pairs linked pair by pair, and the retrieval column they are compared by."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.embedding.test_dataset import embed
from tests.embedding.test_embeddings_store import write_scene_shards
from vlviz.data.inputs import InputError
from vlviz.embedding.dataset import MANIFEST_FILE, open_dataset, prepare_dataset
from vlviz.embedding.linked import LinkedPairs, link_datasets
from vlviz.embedding.store import load_embeddings

N = 20


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, tiny_vit_dir: Path) -> tuple[Path, Path, Path]:
    """The same N scenes embedded by the offline model and by a tiny random ViT; and another source's folder."""
    root = tmp_path_factory.mktemp("linked")
    source = write_scene_shards(root / "data", n=N, per_tar=8)
    embed(source, root / "offline")
    embed(source, root / "tiny", model=str(tiny_vit_dir))
    embed(write_scene_shards(root / "other", n=6, per_tar=8, seed=9), root / "elsewhere")
    return root / "offline", root / "tiny", root / "elsewhere"


def test_caption_rank_share_is_the_retrieval_rank_of_the_own_caption(two_models: tuple[Path, Path, Path]) -> None:
    folder = two_models[0]
    stored = load_embeddings(folder)
    similarity = stored.image_features @ stored.text_features.T  # (N, N); N <= the reference sample: exact
    own = similarity.diagonal()
    rank = (similarity >= own[:, None]).sum(dim=1) - 1  # other captions scoring at least the own one
    share = open_dataset(folder, layout=False).columns["caption_rank_share"]
    np.testing.assert_allclose(share, rank.numpy() / (N - 1), atol=1e-6)
    assert share.min() >= 0 and share.max() <= 1


def test_two_models_of_the_same_pairs_are_linked_pair_by_pair(two_models: tuple[Path, Path, Path]) -> None:
    offline, tiny = (open_dataset(folder, layout=False) for folder in two_models[:2])
    linked = link_datasets(offline, tiny)
    assert len(linked) == N and linked.first.tolist() == linked.second.tolist() == list(range(N))
    expected = tiny.columns["caption_rank_share"] - offline.columns["caption_rank_share"]
    np.testing.assert_allclose(linked.rank_shift, expected)
    np.testing.assert_allclose(linked.cosine_shift, tiny.columns["own_cosine"] - offline.columns["own_cosine"])
    assert linked.rank_shift.mean() > 0  # a random tower retrieves worse than the trained one
    assert linked.in_second(np.array([3, 0])).tolist() == [3, 0]
    with pytest.raises(InputError, match="embed different sources"):
        link_datasets(offline, open_dataset(two_models[2], layout=False))


def test_a_pair_in_one_folder_only_has_no_twin() -> None:
    linked = LinkedPairs(np.array([0, 1, 3]), np.array([0, 2, 3]), np.zeros(3, np.float32), np.zeros(3, np.float32))
    assert linked.in_second(np.array([3, 2, 0, 9])).tolist() == [3, -1, 0, -1]
    assert linked.in_first(np.array([2, 1])).tolist() == [1, -1]


def test_columns_built_before_the_rank_column_are_built_again(two_models: tuple[Path, Path, Path]) -> None:
    folder = two_models[0]
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["built"]["columns"].pop("version")  # as an older vlviz wrote it
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert prepare_dataset(folder, layout=False) == ["columns"]
    assert prepare_dataset(folder, layout=False) == []
