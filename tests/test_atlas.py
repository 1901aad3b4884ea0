"""The attention atlas: every statistic against a brute-force computation with ``attnviz.capture``, models with known
answers, local = Ray on the same images, an interrupted run resumed = an uninterrupted one, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from attnviz import capture
from attnviz.atlas import AtlasError, AtlasOptions, run_atlas, scan_folder, scene_source
from attnviz.atlas.data import seed_of
from attnviz.maps import js_divergence
from attnviz.maps.stats import query_pairs
from attnviz.models.inputs import card_of, preprocess
from attnviz.modules.non_local import NonLocal2d
from attnviz.modules.se import SqueezeExcite

CLASSES = ["ant", "bee", "cow"]
SIZE = 32  # input side; the model's feature grid is 8 × 8 = 64 cells, all of them queries


def small_model(known: bool = False, seed: int = 0) -> nn.Sequential:
    """conv (stride 4) → SE → Non-Local → classifier. ``known``: zero θ and φ (uniform rows) and SE gates sigmoid(bias)."""
    torch.manual_seed(seed)
    se, nl = SqueezeExcite(8, rd_channels=4), NonLocal2d(8)
    m = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), se, nl, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    with torch.no_grad():
        nl.theta.weight.mul_(8.0)  # peaked rows: query dependence well above rounding
    if known:
        with torch.no_grad():
            for conv in (nl.theta, nl.phi[0]):
                conv.weight.zero_()
                conv.bias.zero_()
            se.fc2.weight.zero_()
            se.fc2.bias.copy_(torch.tensor([-6.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.5, 6.0]))
    m.card = {"input_size": [SIZE, SIZE], "class_names": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3}  # type: ignore[assignment]
    return m.eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """64 images in three class folders (a bright square on noise, sizes vary) and their label maps (class + 1 on the square)."""
    root = tmp_path_factory.mktemp("atlas")
    data, masks = root / "data", root / "masks"
    rng = np.random.default_rng(0)
    masks.mkdir()
    for i in range(64):
        c = i % 3
        h, w = int(rng.integers(28, 48)), int(rng.integers(28, 48))
        img = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
        lab = np.zeros((h, w), np.uint8)
        y0, x0, s = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2)), int(rng.integers(8, 14))
        img[y0 : y0 + s, x0 : x0 + s, c] = 230
        lab[y0 : y0 + s, x0 : x0 + s] = c + 1
        (data / CLASSES[c]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(data / CLASSES[c] / f"img{i:03d}.png")
        Image.fromarray(lab, mode="L").save(masks / f"img{i:03d}.png")
    return data, masks


def tables(out: Path) -> dict[str, pd.DataFrame]:
    return {t: pd.read_parquet(out / f"{t}.parquet") for t in ("per_image", "gates", "attention")}


def assert_same_tables(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame], rtol: float = 1e-6) -> None:
    for name in a:
        x, y = a[name], b[name]
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
        num = [c for c in x.columns if pd.api.types.is_numeric_dtype(x[c])]
        other = [c for c in x.columns if c not in num]
        assert x[other].astype(str).equals(y[other].astype(str)), name
        xv, yv = x[num].to_numpy(float), y[num].to_numpy(float)
        scale = np.nanmax(np.abs(xv), axis=0, initial=1e-12)
        diff = np.where(np.isnan(xv) & np.isnan(yv), 0, np.abs(xv - yv))
        assert (diff <= rtol * scale + 1e-12).all(), f"{name}: largest difference {np.nanmax(diff)}"


def stat(att: pd.DataFrame, layer: str, statistic: str, head: int = -1) -> pd.Series:
    return att[(att["layer"] == layer) & (att["statistic"] == statistic) & (att["head"] == head)].iloc[0]


# ---------------------------------------------------------------------------------------------- known answers
def test_known_answers(folder: tuple[Path, Path], tmp_path: Path) -> None:
    data, masks = folder
    info = run_atlas(small_model(known=True), scan_folder(data, masks), tmp_path, AtlasOptions(batch_size=8, workers=0))
    t = tables(tmp_path)
    att, gates = t["attention"], t["gates"]
    assert info["counts"]["images"] == 64 and info["classes"] == CLASSES
    # SE: every gate is sigmoid(bias), in every class; saturated exactly where the bias is ≥ |2.944| (sigmoid ≤ 0.05 or ≥ 0.95)
    bias = torch.tensor([-6.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.5, 6.0])
    for cls in ["(all)", *CLASSES]:
        g = gates[(gates["layer"] == "1") & (gates["class"] == cls)].sort_values("channel")
        np.testing.assert_allclose(g["mean"], torch.sigmoid(bias).numpy(), rtol=1e-6)
        assert (g["std"] < 1e-6).all()
        np.testing.assert_array_equal(g["saturated_share"], [1, 0, 0, 0, 0, 0, 1, 1])
    assert stat(att, "1", "saturated_share").value == pytest.approx(3 / 8)
    # Non-Local with zero θ, φ: uniform rows over the 8 × 8 keys
    ys, xs = np.meshgrid((np.arange(8) + 0.5) * 4, (np.arange(8) + 0.5) * 4, indexing="ij")
    cells = np.stack([ys.ravel(), xs.ravel()], 1)
    dist = np.mean([[math.dist(q, k) for k in cells] for q in cells])
    assert stat(att, "2", "distance_px").value == pytest.approx(dist, rel=1e-6)
    assert stat(att, "2", "entropy").value == pytest.approx(math.log(64), rel=1e-6)
    assert stat(att, "2", "entropy_norm").value == pytest.approx(1.0, rel=1e-6)
    assert stat(att, "2", "query_js").value == pytest.approx(0.0, abs=1e-7)
    assert stat(att, "2", "same_class_mass_ratio").value == pytest.approx(1.0, rel=1e-5)
    assert stat(att, "2", "same_class_baseline").value == pytest.approx(1.0, rel=1e-5)


# ---------------------------------------------------------------------------------------------- brute force
def brute_force(model: nn.Module, data: Path, masks: Path) -> dict[str, dict[str, list[float]]]:
    """Per image, one captured forward of that image alone; rows from the record's own ``row``, statistics by loops."""
    out: dict[str, dict[str, list[float]]] = {"gate": {}, "nl": {}}
    card = card_of(model)
    for path in sorted(data.rglob("*.png")):
        cls = path.parent.name
        rgb = np.asarray(Image.open(path).convert("RGB"))
        lab = torch.from_numpy(np.asarray(Image.open(masks / path.name), dtype=np.int64))
        lab = torch.nn.functional.interpolate(lab[None, None].float(), size=(SIZE, SIZE), mode="nearest")[0, 0].long()
        with torch.no_grad(), capture(model) as cap:
            model(preprocess(rgb, card, torch.device("cpu")))
        out["gate"].setdefault(cls, []).append(cap.records["1"].weights[0].numpy())
        rec = cap.records["2"]
        rows = np.stack([[rec.row(y, x).numpy().ravel() for y in range(8) for x in range(8)]])[0]  # (64, 64)
        centres = [((y + 0.5) * 4, (x + 0.5) * 4) for y in range(8) for x in range(8)]
        d = np.array([[math.dist(q, k) for k in centres] for q in centres])
        out["nl"].setdefault("distance_px", []).append(float((rows * d).sum(1).mean()))
        out["nl"].setdefault("entropy", []).append(float(-(rows * np.log(rows)).sum(1).mean()))
        pairs = query_pairs(64, torch.Generator().manual_seed(seed_of(str(path), "2", 0)))
        r = torch.from_numpy(rows).double()
        out["nl"].setdefault("query_js", []).append(float(js_divergence(r[pairs[:, 0]], r[pairs[:, 1]]).mean()))
        klab = np.array([int(lab[int(cy), int(cx)]) for cy, cx in centres])
        ratios = [rows[q][klab == klab[q]].sum() / (klab == klab[q]).mean() for q in range(64) if klab[q] > 0]
        if ratios:
            out["nl"].setdefault("same_class_mass_ratio", []).append(float(np.mean(ratios)))
    return out


def test_statistics_equal_a_brute_force_computation(folder: tuple[Path, Path], tmp_path: Path) -> None:
    data, masks = folder
    model = small_model(seed=3)
    run_atlas(model, scan_folder(data, masks), tmp_path, AtlasOptions(batch_size=5, workers=0))
    t, ref = tables(tmp_path), brute_force(model, data, masks)
    gates, att = t["gates"], t["attention"]
    for cls, gs in ref["gate"].items():
        g = gates[(gates["layer"] == "1") & (gates["class"] == cls)].sort_values("channel")
        np.testing.assert_allclose(g["mean"], np.mean(gs, 0), rtol=1e-5)
        np.testing.assert_allclose(g["std"], np.std(gs, 0), rtol=1e-3, atol=1e-6)
        assert (g["count"] == len(gs)).all()
    for name, values in ref["nl"].items():
        s = stat(att, "2", name)
        assert s["value"] == pytest.approx(np.mean(values), rel=1e-5), name
        assert s["count"] == len(values), name
    allg = np.concatenate([np.stack(v) for v in ref["gate"].values()])
    total = allg.var(0)
    between = sum(len(v) * (np.mean(v, 0) - allg.mean(0)) ** 2 for v in ref["gate"].values()) / len(allg)
    assert stat(att, "1", "class_selectivity").value == pytest.approx(float(np.mean(between / total)), rel=1e-4)


def test_transformer_distance_and_dino_jaccard_equal_their_references(folder: tuple[Path, Path], tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from attnviz.maps import cls_maps, dino_mask, mean_attention_distance

    data, masks = folder
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=3).eval()
    vit.card = {"input_size": [64, 64], "class_names": CLASSES}
    run_atlas(vit, scan_folder(data, masks), tmp_path, AtlasOptions(batch_size=16, workers=0))
    att = tables(tmp_path)["attention"]
    dist, jac, prefix = [], [], []
    for path in sorted(data.rglob("*.png")):
        with torch.no_grad(), capture(vit) as cap:
            vit(preprocess(np.asarray(Image.open(path).convert("RGB")), card_of(vit), torch.device("cpu")))
        rec = cap.records["blocks.11.attn"]
        dist.append(mean_attention_distance(rec, (16.0, 16.0)).numpy())
        prefix.append([float(np.mean([float(rec.prefix_mass(y, x, head=h).sum()) for y in range(4) for x in range(4)])) for h in range(3)])
        lab = np.asarray(Image.open(masks / path.name), dtype=np.int64)
        truth = torch.nn.functional.interpolate(torch.from_numpy(lab)[None, None].float(), size=(64, 64), mode="nearest")[0, 0] > 0
        m = dino_mask(cls_maps(rec)).repeat_interleave(16, 1).repeat_interleave(16, 2)  # (heads, 64, 64)
        jac.append([float((mh & truth).sum() / (mh | truth).sum()) for mh in m])
    for h in range(3):
        assert stat(att, "blocks.11.attn", "distance_px", h).value == pytest.approx(np.mean([d[h] for d in dist]), rel=1e-5)
        assert stat(att, "blocks.11.attn", "mask_jaccard", h).value == pytest.approx(np.mean([j[h] for j in jac]), rel=1e-5)
        assert stat(att, "blocks.11.attn", "prefix_mass", h).value == pytest.approx(np.mean([p[h] for p in prefix]), rel=1e-5)


def seg_model(seed: int = 0) -> nn.Sequential:
    """conv (stride 4) → CBAM (a spatial mask) → CCNet (two loops) → 4-class dense logits (background + the three classes)."""
    from attnviz.modules.cbam import CBAM
    from attnviz.modules.ccnet import RecurrentCrissCross

    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), CBAM(16, rd_ratio=0.25), RecurrentCrissCross(16, rd_ratio=0.25), nn.Conv2d(16, 4, 1))
    with torch.no_grad():
        m[2].cca.gamma.fill_(1.0)
        m[2].cca.query.weight.mul_(6.0)  # peaked rows
    m.card = {"input_size": [SIZE, SIZE], "class_names": ["background", *CLASSES], "mean": [0.5] * 3, "std": [0.25] * 3}  # type: ignore[assignment]
    return m.eval()


def test_reach_pointing_iou_and_confusion_equal_a_brute_force_computation(folder: tuple[Path, Path], tmp_path: Path) -> None:
    """The rest of the statistics, each from per-image captures and loops: CCNet's two-hop reach (distance, entropy ÷ its
    maximum, same peak, same-class mass and its uniform-loops baseline), spatial-mask pointing, per-class IoU and mIoU; and
    the classifier's confusion matrix."""
    from attnviz.maps import criss_cross_reach, uniform_reach

    data, masks = folder
    model = seg_model()
    info = run_atlas(model, scan_folder(data, masks), tmp_path, AtlasOptions(batch_size=6, workers=0))
    att = tables(tmp_path)["attention"]
    layer = "2.cca"
    ref: dict[str, list[float]] = {}
    inter, union = np.zeros(4), np.zeros(4)
    centres = np.array([((y + 0.5) * 4, (x + 0.5) * 4) for y in range(8) for x in range(8)])
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    for path in sorted(data.rglob("*.png")):
        lab = torch.from_numpy(np.asarray(Image.open(masks / path.name), dtype=np.int64))
        lab = torch.nn.functional.interpolate(lab[None, None].float(), size=(SIZE, SIZE), mode="nearest")[0, 0].long()
        with torch.no_grad(), capture(model) as cap:
            logits = model(preprocess(np.asarray(Image.open(path).convert("RGB")), card_of(model), torch.device("cpu")))
        loops = [r for k, r in cap.records.items() if k.startswith(layer)]
        rows = np.stack([criss_cross_reach(loops[0], loops[1], y, x).numpy().ravel() for y in range(8) for x in range(8)]).astype(np.float64)
        base = np.stack([uniform_reach((8, 8), y, x).numpy().ravel() for y in range(8) for x in range(8)]).astype(np.float64)
        ent = -(rows * np.log(np.clip(rows, 1e-30, None))).sum(1)
        ref.setdefault("distance_px", []).append(float((rows * d).sum(1).mean()))
        ref.setdefault("entropy_norm", []).append(float((ent / np.log(np.maximum((rows > 0).sum(1), 2))).mean()))
        pairs = query_pairs(64, torch.Generator().manual_seed(seed_of(str(path), layer, 0))).numpy()
        ref.setdefault("same_peak", []).append(float((rows[pairs[:, 0]].argmax(1) == rows[pairs[:, 1]].argmax(1)).mean()))
        klab = np.array([int(lab[int(cy), int(cx)]) for cy, cx in centres])
        on = [q for q in range(64) if klab[q] > 0]
        if on:
            same = [klab == klab[q] for q in on]
            ref.setdefault("same_class_mass_ratio", []).append(float(np.mean([rows[q][s].sum() / s.mean() for q, s in zip(on, same)])))
            ref.setdefault("same_class_baseline", []).append(float(np.mean([base[q][s].sum() / s.mean() for q, s in zip(on, same)])))
        mask = next(r for r in cap.records.values() if r.kind == "spatial").mask
        up = torch.nn.functional.interpolate(mask[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
        ref.setdefault("pointing", []).append(float(lab.flatten()[up.argmax()] > 0))
        flat = up.flatten().double()
        order = flat.argsort(descending=True)
        before = flat[order].cumsum(0) - flat[order]  # the mass of the larger weights: keep a position while it is under 60 %
        region = torch.zeros_like(flat, dtype=torch.bool)
        region[order[before / flat.sum() < 0.6]] = True
        objects = (lab > 0).flatten()
        ref.setdefault("mask_jaccard", []).append(float((region & objects).sum() / (region | objects).sum()))
        pred = torch.nn.functional.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0].argmax(0)
        for c in range(4):
            inter[c] += int(((pred == c) & (lab == c)).sum())
            union[c] += int(((pred == c) | (lab == c)).sum())
    for name, values in ref.items():
        lay = next(k for k in att["layer"].unique() if k.endswith("spatial")) if name in ("pointing", "mask_jaccard") else layer
        assert stat(att, lay, name).value == pytest.approx(np.mean(values), rel=1e-5), name
    iou = {n: inter[c] / union[c] for c, n in enumerate(["background", *CLASSES]) if union[c] > 0}
    assert info["metrics"]["per_class_iou"] == pytest.approx(iou, rel=1e-5)
    assert info["metrics"]["miou"] == pytest.approx(np.mean(list(iou.values())), rel=1e-6)
    # a classifier's accuracy and confusion (folder classes are the model's class names)
    clf = small_model(seed=4)
    info = run_atlas(clf, scan_folder(data, masks), tmp_path / "clf", AtlasOptions(batch_size=7, workers=0))
    conf = np.zeros((3, 3), dtype=int)
    for path in sorted(data.rglob("*.png")):
        with torch.no_grad():
            p = int(clf(preprocess(np.asarray(Image.open(path).convert("RGB")), card_of(clf), torch.device("cpu"))).argmax())
        conf[CLASSES.index(path.parent.name), p] += 1
    assert info["metrics"]["confusion"] == conf.tolist()
    assert info["metrics"]["accuracy"] == pytest.approx(np.trace(conf) / 64)


# ---------------------------------------------------------------------------------------------- engines, resume
def test_local_and_ray_give_identical_aggregates(folder: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    data, masks = folder
    model = small_model(seed=1)
    run_atlas(model, scan_folder(data, masks), tmp_path / "local", AtlasOptions(batch_size=8, workers=2))
    info = run_atlas(model, scan_folder(data, masks), tmp_path / "ray", AtlasOptions(engine="ray", batch_size=8, workers=2))
    assert info["counts"]["images"] == 64 and info["engine"] == "ray" and "ray" in info["versions"]
    assert_same_tables(tables(tmp_path / "local"), tables(tmp_path / "ray"))


def test_an_interrupted_run_resumed_equals_an_uninterrupted_one(folder: tuple[Path, Path], tmp_path: Path) -> None:
    data, masks = folder
    model = small_model(seed=2)
    run_atlas(model, scan_folder(data, masks), tmp_path / "whole", AtlasOptions(batch_size=8, workers=0))

    def stop(done: int, total: int) -> None:
        if done >= 24:
            raise KeyboardInterrupt  # killed after three of eight shards

    with pytest.raises(KeyboardInterrupt):
        run_atlas(model, scan_folder(data, masks), tmp_path / "cut", AtlasOptions(batch_size=8, workers=0), progress=stop)
    assert len(list((tmp_path / "cut" / "shards").glob("*.done.json"))) == 3
    with pytest.raises(AtlasError, match="--resume"):
        run_atlas(model, scan_folder(data, masks), tmp_path / "cut", AtlasOptions(batch_size=8, workers=0))
    with pytest.raises(AtlasError, match="batch_size"):
        run_atlas(model, scan_folder(data, masks), tmp_path / "cut", AtlasOptions(batch_size=4, workers=0, resume=True))
    seen: list[int] = []
    run_atlas(model, scan_folder(data, masks), tmp_path / "cut", AtlasOptions(batch_size=8, workers=0, resume=True),
              progress=lambda d, t: seen.append(t))
    assert seen[-1] == 40  # only the five unfinished shards ran
    assert_same_tables(tables(tmp_path / "whole"), tables(tmp_path / "cut"), rtol=0)


# ---------------------------------------------------------------------------------------------- outputs, bad input
def test_outputs_are_documented_and_load_with_pandas(folder: tuple[Path, Path], tmp_path: Path) -> None:
    data, masks = folder
    info = run_atlas(small_model(), scan_folder(data, masks), tmp_path, AtlasOptions(batch_size=16, workers=0, model_name="small"))
    t = tables(tmp_path)
    assert {"path", "label", "prediction", "confidence", "correct"} <= set(t["per_image"].columns)
    assert {"layer", "class", "channel", "count", "mean", "std"} <= set(t["gates"].columns)
    assert {"layer", "head", "statistic", "value", "count"} <= set(t["attention"].columns)
    on_disk = json.loads((tmp_path / "atlas.json").read_text())
    assert on_disk["model"] == "small" and on_disk["counts"]["images"] == 64 and "torch" in on_disk["versions"]
    assert 0 <= on_disk["metrics"]["accuracy"] <= 1 and np.asarray(on_disk["metrics"]["confusion"]).sum() == 64
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img") >= 4 and "Query dependence" in page and "excitation" in page
    assert info["metrics"] == on_disk["metrics"]


def test_bad_input_is_skipped_or_named(folder: tuple[Path, Path], tmp_path: Path) -> None:
    data, masks = folder
    odd = tmp_path / "odd"
    (odd / "ant").mkdir(parents=True)
    for p in list((data / "ant").glob("*.png"))[:3]:
        (odd / "ant" / p.name).write_bytes(p.read_bytes())
    (odd / "ant" / "readme.txt").write_text("not an image")
    (odd / "ant" / "cut.png").write_bytes((data / "ant" / "img000.png").read_bytes()[:60])
    info = run_atlas(small_model(), scan_folder(odd), tmp_path / "o1", AtlasOptions(batch_size=2, workers=0))
    assert info["counts"]["images"] == 3
    reasons = {Path(s["path"]).name: s["reason"] for s in info["skipped"]}
    assert set(reasons) == {"readme.txt", "cut.png"} and all(reasons.values())
    wrong = tmp_path / "wrong_masks"
    wrong.mkdir()
    for p in (odd / "ant").glob("img*.png"):
        Image.fromarray(np.zeros((5, 7), np.uint8), mode="L").save(wrong / p.name)
    with pytest.raises(AtlasError, match=r"img\d+\.png.*7×5"):
        run_atlas(small_model(), scan_folder(odd, wrong), tmp_path / "o2", AtlasOptions(batch_size=2, workers=0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AtlasError, match="empty"):
        scan_folder(tmp_path / "empty")
    with pytest.raises(AtlasError, match="no such folder"):
        scan_folder(tmp_path / "missing")
    with pytest.raises(AtlasError, match="engine"):
        run_atlas(small_model(), scan_folder(odd), tmp_path / "o3", AtlasOptions(engine="spark"))


def test_cli_runs_an_atlas_over_generated_scenes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attnviz.cli import main

    assert main(["atlas", "--model", "ccnet_resnet", "--scenes", "24", "--families", "flat", "checks", "--out", str(tmp_path),
                 "--batch-size", "12", "--workers", "0"]) == 0
    assert "24 images" in capsys.readouterr().out
    att = pd.read_parquet(tmp_path / "attention.parquet")
    layer = att[att["statistic"] == "same_class_baseline"]["layer"].iloc[0]
    base = stat(att, layer, "same_class_baseline").value
    assert 1.2 < base < 10  # the two-hop reach of uniform criss-cross loops already favours the query's object
    with pytest.raises(SystemExit, match="not both"):
        main(["atlas", "--model", "ccnet_resnet", "--scenes", "4", "--data", str(tmp_path), "--out", str(tmp_path / "x")])


def test_scene_source_rejects_unknown_families() -> None:
    with pytest.raises(AtlasError, match="unknown scene families"):
        scene_source(4, ["moon"])


def test_an_atlas_opens_from_its_folder_or_zip(folder: tuple[Path, Path], tmp_path: Path) -> None:
    import zipfile

    from attnviz.atlas.view import class_figure, layer_figure, layer_table, open_atlas, summary

    data, masks = folder
    run_atlas(small_model(), scan_folder(data, masks), tmp_path / "a", AtlasOptions(batch_size=16, workers=0, model_name="small"))
    zipped = tmp_path / "a.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for p in (tmp_path / "a").iterdir():
            if p.is_file():
                z.write(p, f"a/{p.name}")
        z.writestr("../../escape.txt", "never written outside")
    at = open_atlas(zipped, tmp_path / "unpacked")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()
    assert at.classes == CLASSES and at.layers[:1] == ["2"]
    assert "small" in summary(at) and "Query dependence" in summary(at)
    class_figure(at, "bee")
    layer_figure(at, "2")
    layer_figure(at, "1")
    assert set(layer_table(at, "2")["statistic"]) >= {"distance_px", "query_js", "entropy"}
    with pytest.raises(AtlasError, match="class 'wasp'"):
        class_figure(at, "wasp")
    (tmp_path / "notzip.zip").write_text("hello")
    with pytest.raises(AtlasError, match="not a zip"):
        open_atlas(tmp_path / "notzip.zip", tmp_path / "u2")
    with pytest.raises(AtlasError, match="not a finished atlas"):
        open_atlas(tmp_path / "u2")


def test_evaluate_is_an_atlas_run_whose_atlas_can_be_kept(tmp_path: Path) -> None:
    """``attnviz evaluate`` runs each family as an atlas (its scorer on top); keeping the atlas changes no evaluation figure."""
    import attnviz
    from attnviz.evaluate import evaluate

    model = attnviz.load_pretrained("nonlocal_resnet")
    plain = evaluate(model, per_family=8, seed=0, gradcam=False)
    kept = evaluate(model, per_family=8, seed=0, gradcam=False, atlas_dir=tmp_path)
    assert kept == plain
    att = pd.read_parquet(tmp_path / "checks" / "attention.parquet")
    assert stat(att, "context", "query_js")["count"] == 8
    per_image = pd.read_parquet(tmp_path / "checks" / "per_image.parquet")
    assert len(per_image) == 8 and "evaluate:affinity_query_js" in per_image.columns
    assert (tmp_path / "flat-clean" / "report.html").is_file()
    with pytest.raises(AtlasError, match="empty --atlas folder"):
        evaluate(model, per_family=8, seed=0, gradcam=False, atlas_dir=tmp_path)
