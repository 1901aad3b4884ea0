"""Scene generator: determinism, ground truth consistency, split hygiene, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnviz.data import DatasetMissing, SceneGenerator, centre_in_box, load_split


@pytest.fixture(scope="module")
def train_gen() -> SceneGenerator:
    return SceneGenerator("train")


def test_deterministic_by_seed(train_gen: SceneGenerator) -> None:
    a, b, c = train_gen.generate(16, seed=3), train_gen.generate(16, seed=3), train_gen.generate(16, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_box_and_mask_match_the_pasted_item(train_gen: SceneGenerator) -> None:
    s = train_gen.generate(64, seed=11)
    assert s.images.shape == (64, 3, 64, 64) and s.images.min() >= 0 and s.images.max() <= 1
    for i in range(64):
        m = s.masks[i]
        x0, y0, x1, y1 = s.boxes[i].tolist()
        assert m.any()
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == (x0, y0, x1, y1)  # tight box
        side = max(x1 - x0, y1 - y0)
        assert 0.1 * 64 <= side <= 0.65 * 64  # 20-45% sprite, rotated, item fills most of its square
    # the item differs from its surroundings: mean colour inside the mask vs the ring around the box
    diff = []
    for i in range(64):
        inside = s.images[i][:, s.masks[i]].mean(1)
        x0, y0, x1, y1 = s.boxes[i].tolist()
        ring = torch.zeros(64, 64, dtype=torch.bool)
        ring[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3] = True
        ring[y0:y1, x0:x1] = False
        if ring.any():
            diff.append(float((inside - s.images[i][:, ring].mean(1)).abs().max()))
    assert np.median(diff) > 0.2


def test_clean_scenes_have_no_clutter(train_gen: SceneGenerator) -> None:
    a = train_gen.generate(8, seed=5, clutter=False)
    b = train_gen.generate(8, seed=5, clutter=True)
    assert not torch.equal(a.images, b.images)


def test_centre_baseline_is_low(train_gen: SceneGenerator) -> None:
    s = train_gen.generate(500, seed=1)
    rate = float(centre_in_box(s.boxes, 64).float().mean())
    assert rate < 0.35  # items of 20-45% of the side: the centre alone rarely points at the object


def test_train_and_test_items_come_from_their_own_split() -> None:
    test_gen = SceneGenerator("test")
    images, labels = load_split("test")
    assert test_gen.items.shape[0] == 10000 == images.shape[0]
    s = test_gen.generate(32, seed=0)
    assert int(s.item_index.max()) < 10000 and s.split == "test"
    torch.testing.assert_close(test_gen.items[s.item_index[:4], 0] * 255, torch.from_numpy(images[s.item_index[:4].numpy()]).float())
    assert torch.equal(s.labels, torch.from_numpy(labels[s.item_index.numpy()].astype(np.int64)))
    train_images, _ = load_split("train")
    assert train_images.shape[0] == 60000


def test_missing_dataset_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("ATTNVIZ_FASHION_MNIST", str(tmp_path))
    load_split.cache_clear()
    try:
        with pytest.raises(DatasetMissing, match="apt-get install dataset-fashion-mnist"):
            load_split("train")
    finally:
        load_split.cache_clear()
