"""Zoo architectures, the registry, and the shipped checkpoints against their cards."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

import attnviz
from attnviz.models import SEG_ZOO, ZOO, WeightsUnavailable, available, build, build_imagenet, build_seg, registry

EXPECTED_KINDS = {
    "plain_resnet": set(), "se_resnet": {"channel"}, "eca_resnet": {"channel"}, "cbam_resnet": {"channel", "spatial"},
    "scse_resnet": {"channel", "spatial"}, "gc_resnet": {"spatial"}, "sk_resnet": {"branch"},
    "nonlocal_resnet": {"affinity"}, "ccnet_resnet": {"criss_cross"}, "danet_resnet": {"affinity", "channel_affinity"},
    "stn_resnet": {"grid"}, "vit_tiny": {"tokens"},
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_small_and_captured(name: str) -> None:
    m = build(name).eval()
    assert sum(p.numel() for p in m.parameters()) <= 2_000_000
    with torch.no_grad(), attnviz.capture(m) as cap:
        out = m(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    assert {r.kind for r in cap.records.values()} == EXPECTED_KINDS[name]
    if name == "ccnet_resnet":
        recs = list(cap.records.values())
        assert len(recs) == 2 and recs[0].hw == (16, 16)  # R = 2 loops on a 16×16 map


SEG_KINDS = {
    "fcn_seg": {}, "nonlocal_seg": {"affinity": 1}, "ccnet_seg": {"criss_cross": 2}, "danet_seg": {"affinity": 1, "channel_affinity": 1},
    "gc_seg": {"spatial": 1}, "ocr_seg": {"regions": 1},
}


@pytest.mark.parametrize("name", sorted(SEG_ZOO))
def test_segmentation_zoo_outputs_and_maps(name: str) -> None:
    m = build_seg(name).eval()
    assert sum(p.numel() for p in m.parameters()) <= 2_000_000
    with torch.no_grad(), attnviz.capture(m) as cap:
        out = m(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 11, 128, 128)  # logits at the input size, 11 classes (0 = background)
    counts: dict[str, int] = {}
    for r in cap.records.values():
        counts[r.kind] = counts.get(r.kind, 0) + 1
    assert counts == SEG_KINDS[name]
    for r in cap.records.values():  # output stride 8: maps of at least 16×16
        if r.kind == "channel_affinity":
            continue
        hw = getattr(r, "query_hw", None) or getattr(r, "hw", None) or tuple(r.mask.shape[-2:])
        assert min(hw) >= 16, (r.name, hw)


def test_registry_lists_everything_and_imagenet_is_offline_safe() -> None:
    t = time.perf_counter()
    infos = {i.name: i for i in available()}
    assert time.perf_counter() - t < 30  # a listing, never a download or a hang
    for name in list(ZOO) + list(SEG_ZOO) + list(registry.TIMM_MODELS) + list(registry.TORCHVISION_MODELS):
        assert name in infos
    assert all(infos[n].task == "segmentation" for n in SEG_ZOO) and all(infos[n].task == "classification" for n in ZOO)
    assert {n for n in registry.TIMM_MODELS if infos[n].task == "features"} == set(registry.BACKBONES)  # DINO, DINOv2: no classes
    for name in registry.TIMM_MODELS + registry.TORCHVISION_MODELS:
        info = infos[name]
        if not info.available:
            assert "weights" in info.reason and "\n" not in info.reason
            with pytest.raises(WeightsUnavailable, match=name):
                attnviz.load_pretrained(name)


IMAGENET_KINDS = {
    "seresnet50": {"channel": 16}, "ecaresnet50t": {"channel": 16}, "gcresnet50t": {"spatial": 16},
    "skresnet18": {"branch": 8}, "botnet26t_256": {"affinity": 3}, "efficientnet_b0": {"channel": 16},
    "mobilenet_v3_large": {"channel": 8}, "regnet_y_400mf": {"channel": 16},
    "deit_small_patch16_224.fb_in1k": {"tokens": 12},
    "swin_tiny_patch4_window7_224.ms_in1k": {"window": 10, "affinity": 2},  # the last stage's one 7×7 window is the whole grid
    "vit_small_patch16_224.dino": {"tokens": 12}, "vit_small_patch14_reg4_dinov2.lvd142m": {"tokens": 12},
}


@pytest.mark.parametrize("name", sorted(IMAGENET_KINDS))
def test_imagenet_architectures_random_init_are_captured(name: str) -> None:
    m = build_imagenet(name).eval()
    side = {"botnet26t_256": 256, "deit_small_patch16_224.fb_in1k": 224, "swin_tiny_patch4_window7_224.ms_in1k": 224,
            "vit_small_patch16_224.dino": 224, "vit_small_patch14_reg4_dinov2.lvd142m": 518}.get(name, 128)
    with torch.no_grad(), attnviz.capture(m) as cap:
        m(torch.randn(1, 3, side, side))
    counts: dict[str, int] = {}
    for r in cap.records.values():
        counts[r.kind] = counts.get(r.kind, 0) + 1
    assert counts == IMAGENET_KINDS[name]


def test_imagenet_weights_from_a_user_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    m = build_imagenet("regnet_y_400mf")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    loaded = attnviz.load_pretrained("regnet_y_400mf", weights=path)
    assert len(loaded.card["class_names"]) == 1000 and not loaded.training


SHIPPED = sorted(p.stem for p in registry.PRETRAINED_DIR.glob("*.safetensors"))


def test_checksum_mismatch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not SHIPPED:
        pytest.skip("no shipped checkpoint")
    name = SHIPPED[0]
    for ext in (".safetensors", ".json"):
        shutil.copy(registry.PRETRAINED_DIR / f"{name}{ext}", tmp_path / f"{name}{ext}")
    card = json.loads((tmp_path / f"{name}.json").read_text())
    card["sha256"] = "0" * 64
    (tmp_path / f"{name}.json").write_text(json.dumps(card))
    monkeypatch.setattr(registry, "PRETRAINED_DIR", tmp_path)
    with pytest.raises(registry.ChecksumMismatch):
        attnviz.load_pretrained(name)


def within(measured: float, card: float, abs_tol: float, rel_tol: float) -> bool:
    return abs(measured - card) <= max(abs_tol, rel_tol * abs(card))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_matches_its_card(name: str) -> None:
    from attnviz.evaluate import CHECK_PER_FAMILY, evaluate

    model = attnviz.load_pretrained(name)  # verifies the sha256
    card = model.card
    assert card["task"] in ("classification", "segmentation") and card["class_names"]
    ref = card["evaluation_check"]  # the same seeded scenes (the first of each family), measured when the card was written
    assert ref["per_family_scenes"] == CHECK_PER_FAMILY and card["evaluation"]["per_family_scenes"] > CHECK_PER_FAMILY
    assert set(card["data"]["heldout_families"]) and not set(card["data"]["heldout_families"]) & set(card["data"]["train_families"])
    res = evaluate(model, per_family=CHECK_PER_FAMILY, seed=ref["seed"])
    main = "accuracy" if card["task"] == "classification" else "miou"
    for group in ("in_family", "heldout", "photos"):
        assert abs(res[group][main] - ref[group][main]) <= 0.03, (group, res[group][main], ref[group][main])
        for key, value in ref[group].items():
            if isinstance(value, float) and key not in (main, "centre_baseline_pointing", "n"):
                assert within(res[group][key], value, 0.05, 0.10), (group, key, res[group][key], value)
        for layer, scores in (ref[group].get("layers") or {}).items():  # per-layer map scores (segmentation heads, SK)
            for key, value in scores.items():
                got = res[group]["layers"][layer][key]
                assert (got != got and value != value) or within(got, value, 0.05, 0.10), (group, layer, key, got, value)
    if name == "sk_resnet":  # one size correlation per SK layer
        layers = res["heldout"]["layers"]
        assert len(layers) == 3 and all(-1 <= d["sk_size_spearman"] <= 1 for d in layers.values())


def test_zoo_vit_class_token_beats_its_random_twin() -> None:
    """``evaluate --random-weights``: the same architecture at random initialisation, on the same scenes. The trained ViT's
    class-token mask overlaps the items far more than the random twin's (the card's claim, re-measured on a few scenes)."""
    import argparse

    from attnviz.evaluate import _random_weights, evaluate

    if "vit_tiny" not in SHIPPED:
        pytest.skip("vit_tiny is not shipped in this checkout")
    model = attnviz.load_pretrained("vit_tiny")
    rand = _random_weights(model, argparse.Namespace(model="vit_tiny", seed=0, per_family=8))
    assert rand["init"].startswith("torch.manual_seed(0)") and set(rand) >= {"in_family", "heldout", "photos"}
    trained = evaluate(model, per_family=8, seed=0, gradcam=False)
    for group in ("in_family", "heldout"):
        assert trained[group]["cls_jaccard"] > 2 * rand[group]["cls_jaccard"], (group, trained[group], rand[group])
        assert trained[group]["cls_pointing"] > rand[group]["cls_pointing"]
        assert rand[group]["accuracy"] < 0.3  # an untrained net is at chance (10 classes)
