"""Scenes v2: determinism, ground truth that matches what was pasted, split hygiene, every family renders."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from attnviz.data import (
    FAMILIES,
    HELDOUT_FAMILIES,
    TRAIN_FAMILIES,
    DatasetMissing,
    SceneConfig,
    SceneGenerator,
    boxes_of,
    centre_in_box,
    load_split,
)
from attnviz.data.scenes import jpeg_like, luma


@pytest.fixture(scope="module")
def train_gen() -> SceneGenerator:
    return SceneGenerator("train")


@pytest.fixture(scope="module")
def seg_gen() -> SceneGenerator:
    return SceneGenerator("test", SceneConfig(size=96, items=(1, 6), families=tuple(FAMILIES)))


def test_deterministic_by_seed(train_gen: SceneGenerator, seg_gen: SceneGenerator) -> None:
    for gen in (train_gen, seg_gen):
        a, b, c = gen.generate(12, seed=3), gen.generate(12, seed=3), gen.generate(12, seed=4)
        assert torch.equal(a.images, b.images) and torch.equal(a.label_map, b.label_map) and torch.equal(a.item_boxes, b.item_boxes)
        assert not torch.equal(a.images, c.images)
    # a fresh generator with the same config gives the same scenes
    again = SceneGenerator("train").generate(12, seed=3)
    assert torch.equal(again.images, train_gen.generate(12, seed=3).images)


def test_label_map_instances_and_boxes_agree(seg_gen: SceneGenerator) -> None:
    s = seg_gen.generate(48, seed=11)
    n, k, size = s.instance_masks.shape[:3]
    assert s.images.shape == (48, 3, 96, 96) and float(s.images.min()) >= 0 and float(s.images.max()) <= 1
    counts = (s.item_labels >= 0).sum(1)
    assert int(counts.min()) >= 1 and int(counts.max()) <= 6 and len(set(counts.tolist())) > 2
    for i in range(n):
        present = s.item_labels[i][s.item_labels[i] >= 0].tolist()
        assert len(present) == len(set(present))  # distinct classes per scene
        # instances are disjoint and together they are exactly the non-background pixels
        assert int(s.instance_masks[i].sum(0).max()) <= 1
        assert torch.equal(s.instance_masks[i].any(0), s.label_map[i] > 0)
        for j in range(k):
            m = s.instance_masks[i, j]
            if s.item_labels[i, j] < 0:
                assert not m.any()
                continue
            assert bool((s.label_map[i][m] == s.item_labels[i, j] + 1).all())
            if m.any():
                ys, xs = torch.nonzero(m, as_tuple=True)
                assert s.item_boxes[i, j].tolist() == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    assert torch.equal(s.labels, s.item_labels[:, 0]) and torch.equal(s.masks, s.instance_masks[:, 0])


def test_label_map_marks_the_pixels_that_were_painted() -> None:
    """On flat backgrounds without clutter or photometric noise, labelled pixels are where the item is."""
    gen = SceneGenerator("test", SceneConfig(size=64, items=(1, 3), families=("flat",), photometric=False, renderings=(1.0, 0, 0, 0)))
    s = gen.generate(64, seed=5, clutter=False)
    inside_diff, outside_diff = [], []
    for i in range(64):
        img = s.images[i]
        bg = s.label_map[i] == 0
        ref = img[:, bg].median(1).values[:, None, None]
        diff = (img - ref).abs().amax(0)  # (S, S)
        near = torch.nn.functional.max_pool2d((~bg).float()[None, None], 5, 1, 2)[0, 0] > 0  # item plus a 2 px rim (alpha edge)
        inside_diff.append(float((diff[~bg] > 0.1).float().mean()))
        outside_diff.append(float((diff[~near] > 0.15).float().mean()))
    assert np.mean(inside_diff) > 0.95  # the labelled pixels were painted
    assert np.mean(outside_diff) < 0.01  # and nothing else was


def test_items_stand_out_by_brightness_or_hue() -> None:
    gen = SceneGenerator("test", SceneConfig(size=64, families=("flat",), photometric=False, renderings=(1.0, 0, 0, 0), hue_contrast=0.5))
    s = gen.generate(200, seed=8, clutter=False)
    by_hue = 0
    for i in range(200):
        m = -torch.nn.functional.max_pool2d(-s.masks[i].float()[None, None], 3, 1, 1)[0, 0] > 0  # interior: no edge blending
        if int(m.sum()) < 10:
            continue
        item, bg = s.images[i][:, m].mean(1), s.images[i][:, ~m].mean(1)
        dl, dist = abs(float(luma(item) - luma(bg))), float((item - bg).norm())
        assert dl >= 0.15 or dist >= 0.25, (i, dl, dist)
        by_hue += dl < 0.15
    assert by_hue >= 40  # a good share differs in hue, not in brightness


def test_item_scale_and_centre_baseline(train_gen: SceneGenerator) -> None:
    s = train_gen.generate(400, seed=1, clutter=False)
    side = torch.maximum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1]).float() / 64
    assert float(side.quantile(0.05)) >= 0.08 and float(side.quantile(0.95)) <= 0.65
    assert float(side.quantile(0.95)) - float(side.quantile(0.05)) > 0.2  # a real range of scales
    assert float(centre_in_box(s.boxes, 64).float().mean()) < 0.35


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_renders(family: str) -> None:
    gen = SceneGenerator("test", SceneConfig(size=64, families=(family,), photometric=False))
    s = gen.generate(6, seed=2, clutter=False)
    assert s.family_names() == [family] * 6
    bg = s.images * (s.label_map == 0)[:, None]
    assert torch.isfinite(s.images).all() and float(s.images.min()) >= 0 and float(s.images.max()) <= 1
    assert float(bg.flatten(1).std(1).min()) > 0.01  # not blank
    assert not torch.equal(s.images[0], s.images[1])


def test_families_split_and_heldout_config() -> None:
    assert set(TRAIN_FAMILIES).isdisjoint(HELDOUT_FAMILIES) and set(TRAIN_FAMILIES) | set(HELDOUT_FAMILIES) == set(FAMILIES)
    s = SceneGenerator("test", SceneConfig(families=HELDOUT_FAMILIES)).generate(30, seed=0)
    assert set(s.family_names()) <= set(HELDOUT_FAMILIES)
    with pytest.raises(ValueError, match="unknown background families"):
        SceneConfig(families=("marble",))


def test_train_and_test_items_come_from_their_own_split() -> None:
    test_gen = SceneGenerator("test", SceneConfig(items=(1, 4)))
    images, labels = load_split("test")
    s = test_gen.generate(32, seed=0)
    used = s.item_index[s.item_index >= 0]
    assert int(used.max()) < 10000 and s.split == "test"
    np.testing.assert_array_equal(labels[used.numpy()], s.item_labels[s.item_index >= 0].numpy())
    train_images, _ = load_split("train")
    train_hashes = {hashlib.sha1(x.tobytes()).digest() for x in train_images}
    assert not any(hashlib.sha1(images[i].tobytes()).digest() in train_hashes for i in used.tolist())


def test_boxes_of_empty_and_full() -> None:
    m = torch.zeros(2, 8, 8, dtype=torch.bool)
    m[1, 2:5, 3:7] = True
    assert boxes_of(m).tolist() == [[0, 0, 0, 0], [3, 2, 7, 5]]


def test_jpeg_like_is_lossy_but_close() -> None:
    img = torch.rand(2, 3, 16, 16)
    low, high = jpeg_like(img, torch.tensor([10.0, 10.0])), jpeg_like(img, torch.tensor([95.0, 95.0]))
    assert float((high - img).abs().mean()) < float((low - img).abs().mean())
    smooth = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16).contiguous()
    assert float((jpeg_like(smooth, torch.tensor([90.0])) - smooth).abs().max()) < 0.05


def test_missing_dataset_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("ATTNVIZ_FASHION_MNIST", str(tmp_path))
    load_split.cache_clear()
    try:
        with pytest.raises(DatasetMissing, match="apt-get install dataset-fashion-mnist"):
            load_split("train")
    finally:
        load_split.cache_clear()
