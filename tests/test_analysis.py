"""The analysis layer: task inference, cached analyses, click views, segmentation, bad input, concurrency."""

from __future__ import annotations

import json
import os
import threading
import time
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from attnviz.analysis import (
    Catalog,
    Engine,
    Entry,
    Style,
    UserError,
    attributions,
    cleanup,
    click,
    export_bundle,
    gates,
    interpret_output,
    modules,
    segmentation,
    spatial,
)
from attnviz.analysis.images import load_image
from attnviz.analysis.outputs import OutputError, logits_at, resized_labels
from attnviz.models import build_seg
from attnviz.modules import CBAM, NonLocal2d, RecurrentCrissCross


class Tiny(nn.Module):
    """A researcher's model: CBAM, then Non-Local, then CCNet; no registration anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.cbam = CBAM(16, rd_ratio=0.25)
        self.nl = NonLocal2d(16)
        self.cc = RecurrentCrissCross(16, recurrence=2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
        with torch.no_grad():  # non-zero γ / W so the blocks do something
            self.nl.w[1].weight.fill_(0.5)
            self.cc.cca.gamma.fill_(0.5)
        self.card = {"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "class_names": ["a", "b", "c", "d"]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cc(self.nl(self.cbam(self.stem(x)))))


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
        self.card = {"input_size": [32, 32]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DictSeg(nn.Module):
    """torchvision-style segmentation output: {"out": (B, K, h, w), "aux": ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, 4, 1)
        self.nl = NonLocal2d(8)
        self.cls = nn.Conv2d(8, 3, 1)
        self.card = {"input_size": [40, 48], "class_names": ["bg", "x", "y"]}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.nl(self.body(x))
        out = F.interpolate(self.cls(f), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": out, "aux": out * 0}


class LambdaNet(nn.Module):
    """A classifier whose only attention-like op is a lambda layer (seen, not drawn)."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers.lambda_layer import LambdaLayer

        self.body = nn.Conv2d(3, 16, 3, 4, 1)
        self.lam = LambdaLayer(16, 16, num_heads=4, dim_head=4, r=3)
        self.fc = nn.Linear(16, 3)
        self.card = {"input_size": [40, 48], "class_names": ["a", "b", "c"]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.lam(self.body(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def engine() -> Engine:
    tiny, plain, dseg = Tiny().eval(), Plain().eval(), DictSeg().eval()
    seg = build_seg("ocr_seg").eval()
    seg.card = {"input_size": [64, 64], "class_names": ["background"] + [f"c{i}" for i in range(10)], "palette": np.arange(33).reshape(11, 3).tolist()}
    cc = build_seg("ccnet_seg").eval()
    with torch.no_grad():
        cc.decode_head.cca.gamma.fill_(1.0)
    cc.card = {"input_size": [64, 64], "class_names": ["background"] + [f"c{i}" for i in range(10)]}
    cat = Catalog([Entry("tiny", True, loader=lambda: tiny), Entry("plain", True, loader=lambda: plain), Entry("dseg", True, loader=lambda: dseg),
                   Entry("lambda", True, loader=lambda: LambdaNet().eval()),
                   Entry("ocr", True, loader=lambda: seg), Entry("ccseg", True, loader=lambda: cc),
                   Entry("tuple", True, loader=lambda: dseg, postprocess=lambda o: (o["out"], o["aux"])),
                   Entry("gone", False, "weights not in the local cache; run X")], torch.device("cpu"))
    return Engine(cat, max_entries=8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    rgb = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    out = {}
    Image.fromarray(rgb).save(out.setdefault("rgb", d / "rgb.png"))
    Image.fromarray((rng.random((60, 80)) * 65535).astype(np.uint16)).save(out.setdefault("16bit", d / "16bit.png"))
    Image.fromarray((rng.random((60, 80, 4)) * 255).astype(np.uint8)).save(out.setdefault("rgba", d / "rgba.png"))
    Image.fromarray(rgb[..., 0]).save(out.setdefault("grey", d / "grey.png"))
    Image.fromarray(rgb).convert("P").save(out.setdefault("palette", d / "palette.png"))
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(out.setdefault("exif", d / "exif.jpg"), exif=exif)
    Image.fromarray(np.zeros((3000, 2400, 3), np.uint8)).save(out.setdefault("huge", d / "huge.png"))
    out["text_as_png"] = d / "text.png"
    out["text_as_png"].write_text("not an image either")
    data = out["exif"].read_bytes()
    out["corrupt"] = d / "corrupt.jpg"
    out["corrupt"].write_bytes(data[: len(data) // 2])
    out["empty"] = d / "empty.png"
    out["empty"].write_bytes(b"")
    return out


# ---------------------------------------------------------------------------------------- outputs
def test_interpret_output_shapes_and_containers() -> None:
    cls, seg = torch.randn(2, 5), torch.randn(2, 5, 7, 9)
    assert interpret_output(cls).task == "classification" and interpret_output(seg).task == "segmentation"
    assert interpret_output({"out": seg, "aux": seg}).logits is seg
    assert interpret_output((seg, cls)).logits is seg and interpret_output([cls]).logits is cls
    hf = namedtuple("Out", "logits loss")(seg, None)
    assert interpret_output(hf).logits is seg
    assert interpret_output({"weird": 1, "x": cls}, postprocess=lambda o: o["x"]).logits is cls
    with pytest.raises(OutputError, match=r"shape \(2, 5, 7\)"):
        interpret_output(torch.randn(2, 5, 7))
    with pytest.raises(OutputError, match="post-processing"):
        interpret_output({"a": cls, "b": cls})
    with pytest.raises(OutputError, match="not logits"):
        interpret_output("nope")


def test_logits_at_and_labels_match_interpolate() -> None:
    lg = torch.randn(6, 11, 13)
    for hw in ((11, 13), (37, 50), (5, 7)):
        full = F.interpolate(lg[None], size=hw, mode="bilinear", align_corners=False)[0]
        ys, xs = torch.randint(0, hw[0], (40,)), torch.randint(0, hw[1], (40,))
        torch.testing.assert_close(logits_at(lg, hw, ys, xs), full[:, ys, xs].T, atol=1e-5, rtol=1e-5)
        assert torch.equal(resized_labels(lg, hw, rows_per_chunk=4), full.argmax(0))


# ---------------------------------------------------------------------------------------- classification
def test_click_uses_the_cached_forward(engine: Engine, images: dict[str, Path]) -> None:
    model = engine.catalog.get("tiny")
    calls = []
    h = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        a = engine.analyze(images["rgb"], "tiny")
        assert len(calls) == 1 and a.task == "classification" and a.hw == (60, 80)
        assert click.click_choices(a) == ["nl", "cc.cca"]
        for view in ("loop1", "loop2", "reach"):
            rgb, info, m = click.attention_at(a, 10, 50, "cc.cca", view)
            assert rgb.shape[0] >= a.hw[0] and abs(m.sum() - 1) < 1e-4 and info["text"]
        rgb, info, m = click.attention_at(a, 70, 5, "nl")
        assert info["feature_cell"] == [int(5 * m.shape[0] / a.hw[0]), int(70 * m.shape[1] / a.hw[1])]
        assert info["x"] == 70 and info["y"] == 5  # image pixels, even though the image is drawn enlarged
        again = engine.analyze(images["rgb"], "tiny")
        assert again is a and len(calls) == 1  # same upload, same model: no new forward
    finally:
        h.remove()


def test_click_view_has_marks_colour_bar_and_readable_answer(engine: Engine, images: dict[str, Path]) -> None:
    a = engine.analyze(images["rgb"], "tiny")
    rgb, info, m = click.attention_at(a, 40, 30, "nl")
    k = a.display_scale
    assert k > 1 and rgb.shape[0] == a.hw[0] * k and rgb.shape[1] > 2 * a.hw[1] * k  # original | overlay | colour bar
    assert {"peak", "min", "max", "top5pct_share", "meaning"} <= set(info)
    assert "cell" in info["text"] and "top 5%" in info["text"] and "sums to 1" in info["text"]
    thr, info2, _ = click.attention_at(a, 40, 30, "nl", style=Style(threshold=0.5))
    assert thr.shape[0] > rgb.shape[0]  # the threshold is stated on the image (caption strip)
    tiles = click.click_grid(a, 40, 30)
    assert [c.split(" · ")[:2] for _, c in tiles] == [["nl", "row"], ["cc.cca", "loop1"], ["cc.cca", "loop2"], ["cc.cca", "reach"]]
    qd = click.query_dependence(a, "cc.cca")
    assert 0 <= qd["mean_js"] <= np.log(2) + 1e-6 and 0 <= qd["same_peak_share"] <= 1 and qd["verdict"]


def test_click_arguments_are_validated_by_name(engine: Engine, images: dict[str, Path]) -> None:
    a = engine.analyze(images["rgb"], "tiny")
    with pytest.raises(UserError, match="outside the 80×60 image"):
        click.attention_at(a, 83, 1, "nl")
    with pytest.raises(UserError, match="x and y must be numbers"):
        click.attention_at(a, "abc", 1, "nl")
    with pytest.raises(UserError, match="finite"):
        click.attention_at(a, float("nan"), 1, "nl")
    with pytest.raises(UserError, match="layer must be one of: nl, cc.cca"):
        click.attention_at(a, 1, 1, "cbam.spatial")
    with pytest.raises(UserError, match="view must be one of loop1, loop2, reach"):
        click.attention_at(a, 1, 1, "cc.cca", "row")
    with pytest.raises(UserError, match="single head"):
        click.attention_at(a, 1, 1, "cc.cca", "reach", head=3)
    with pytest.raises(UserError, match="alpha"):
        click.attention_at(a, 1, 1, style=Style(alpha=2))
    with pytest.raises(UserError, match="model must be the name"):
        engine.analyze(images["rgb"], None)  # type: ignore[arg-type]


def test_views_summaries_ablation_compare_export(engine: Engine, images: dict[str, Path], tmp_path: Path) -> None:
    a = engine.analyze(images["rgb"], "tiny")
    assert len(spatial.spatial_gallery(a, Style(shared=True))) == 1
    assert gates.gates_heatmap(a) is not None and gates.gate_bars(a, "cbam.channel") is not None
    table = modules.modules_table(a)
    assert {row[0] for row in table} >= {"cbam.channel", "cbam.spatial", "nl", "cc.cca", "cc.cca#2"}
    fig, info = modules.ablate(engine, a, "nl")
    assert info["max_abs_logit_change"] > 0
    for method in ("Grad-CAM", "IntegratedGradients", "Occlusion"):
        nat, att, scores = attributions.compare(engine, a, method, "cbam.spatial")
        assert nat.shape == att.shape and -1 <= scores["spearman"] <= 1 and 0 <= scores["top10%_iou"] <= 1
    path = export_bundle(a, click=(12, 30), layer="cc.cca", folder=tmp_path)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = json.loads(z.read("metadata.json"))
        npz = np.load(z.open("maps.npz"))
        assert npz["cbam.spatial/mask"].shape == (16, 16)  # feature resolution (32² input, stride 2), not image size
    assert any(n.startswith("overlays/click_cc.cca") for n in names) and "overlays/image.png" in names
    assert meta["click"]["x"] == 12 and meta["image_size"] == [80, 60] and meta["layers"]["nl"] == "affinity"
    s = modules.summary(a)
    assert s["task"] == "classification" and s["device"] == "cpu" and s["forward_ms"] > 0 and s["model_input_size"] == [32, 32]


def test_model_without_attention_still_predicts(engine: Engine, images: dict[str, Path]) -> None:
    a = engine.analyze(images["rgb"], "plain")
    assert len(a.top(5)) == 3 and not a.records
    assert any("no attention map attnviz can draw" in n for n in a.notes) and not modules.summary(a)["seen_not_drawn"]
    with pytest.raises(UserError, match="nothing to show"):
        click.attention_at(a, 1, 1)
    with pytest.raises(UserError, match="not available here.*run X"):
        engine.analyze(images["rgb"], "gone")


def test_seen_not_drawn_reaches_notes_modules_table_and_summary(engine: Engine, images: dict[str, Path]) -> None:
    a = engine.analyze(images["rgb"], "lambda")
    assert not a.records
    assert any("1 attention-like ops seen, not drawn" in n for n in a.notes)
    rows = modules.modules_table(a)
    assert [r[1] for r in rows] == ["seen, not drawn"] and rows[0][0] == "lam" and "lambda layer" in rows[0][-1]
    assert modules.summary(a)["seen_not_drawn"][0]["module"] == "lam"


# ---------------------------------------------------------------------------------------- segmentation
def test_segmentation_outputs_of_every_shape(engine: Engine, images: dict[str, Path]) -> None:
    for name in ("dseg", "tuple", "ocr"):
        a = engine.analyze(images["rgb"], name)
        assert a.task == "segmentation" and a.labels().shape == a.hw
        legend = a.legend()
        assert abs(sum(float(r["area"]) for r in legend) - 1) < 1e-6 and all(str(r["colour"]).startswith("#") for r in legend)
        img, rows = segmentation.segmentation_view(a, 0.4)
        assert img.shape[:2] == (a.hw[0] * a.display_scale, a.hw[1] * a.display_scale) and rows == legend


def test_segmentation_click_has_class_top3_and_same_class_mass(engine: Engine, images: dict[str, Path]) -> None:
    a = engine.analyze(images["rgb"], "ccseg")
    rgb, info, m = click.attention_at(a, 30, 20)
    assert info["view"] == "reach" and info["class"] == a.label(int(a.labels()[20, 30]))
    assert len(info["top3"]) == 3 and abs(sum(t["p"] for t in info["top3"])) <= 1 + 1e-6
    # same-class mass recomputed by hand from the map and the predicted labels
    up = F.interpolate(torch.from_numpy(m)[None, None], size=a.hw, mode="bilinear", align_corners=False)[0, 0].clamp_min(0)
    same = torch.from_numpy(a.labels() == a.labels()[20, 30])
    expected = float((up * same).sum() / up.sum() / same.float().mean())
    assert info["same_class_mass_ratio"] == pytest.approx(expected, rel=1e-3)
    assert "same_class_mass_ratio_uniform_geometry" in info and "only the excess" in info["text"]
    cam, cinfo = segmentation.segment_gradcam(engine, a, 30, 20)
    assert cam.shape[0] == rgb.shape[0] and cinfo["class"] == info["class"]
    assert cinfo["mass_on_segment"] is None or (0 <= cinfo["mass_on_segment"] <= 1 and cinfo["mass_ratio"] >= 0)
    fig, ab = modules.ablate(engine, a, "decode_head.cca")
    assert 0 <= ab["pixels_changing_class"] <= 1


def test_mass_on_a_region_matches_a_brute_force_sum() -> None:
    """The Grad-CAM share shown beside a segment: the map resized bilinearly (as drawn), its mass inside the region."""
    from attnviz.analysis.views.segmentation import mass_on

    g = torch.Generator().manual_seed(0)
    m = torch.rand(7, 9, generator=g)
    region = torch.zeros(40, 50, dtype=torch.bool)
    region[5:25, 10:30] = True
    up = F.interpolate(m[None, None], size=(40, 50), mode="bilinear", align_corners=False)[0, 0]
    assert mass_on(m.numpy(), region.numpy()) == pytest.approx(float(up[region].sum() / up.sum()), rel=1e-4)
    assert mass_on(np.zeros((7, 9)), region.numpy()) is None


def test_ocr_click_shows_region_distribution(engine: Engine, images: dict[str, Path]) -> None:
    a = engine.analyze(images["rgb"], "ocr")
    _, info, m = click.attention_at(a, 30, 20)
    assert info["view"] == "regions" and abs(m.sum() - 1) < 1e-4
    assert len(info["regions"]) == 5 and abs(sum(r["weight"] for r in info["regions"])) <= 1 + 1e-6
    assert info["regions"][0]["region"] in a.class_names


def test_segmentation_export_has_label_png(engine: Engine, images: dict[str, Path], tmp_path: Path) -> None:
    a = engine.analyze(images["rgb"], "ocr")
    path = export_bundle(a, click=(10, 10), folder=tmp_path)
    with zipfile.ZipFile(path) as z:
        labels = np.asarray(Image.open(z.open("segmentation.png")))
        npz = np.load(z.open("maps.npz"))
        meta = json.loads(z.read("metadata.json"))
    assert np.array_equal(labels, a.labels()) and npz["segmentation/logits"].shape == tuple(a.logits.shape)
    assert meta["segmentation"]["class_names"][0] == "background" and meta["click"]["class"]


# ---------------------------------------------------------------------------------------- input handling
@pytest.mark.parametrize("kind,note", [("16bit", "rescaled"), ("rgba", "flattened"), ("grey", "greyscale"),
                                       ("palette", "palette"), ("exif", "EXIF"), ("huge", "downscaled")])
def test_odd_images_are_converted_with_a_note(engine: Engine, images: dict[str, Path], kind: str, note: str) -> None:
    a = engine.analyze(images[kind], "tiny")
    assert a.image.dtype == np.uint8 and a.image.shape[2] == 3
    assert any(note in n for n in a.notes), a.notes
    if kind == "exif":
        assert a.hw == (80, 60)  # portrait after rotation


@pytest.mark.parametrize("kind,message", [("text_as_png", "not an image"), ("corrupt", "corrupt or truncated"), ("empty", "empty")])
def test_bad_files_give_clear_errors(engine: Engine, images: dict[str, Path], kind: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        engine.analyze(images[kind], "tiny")


def test_wrong_array_shape_is_refused(engine: Engine) -> None:
    with pytest.raises(UserError, match="shape"):
        engine.analyze(np.zeros((4, 5, 6, 7)), "tiny")


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_decode_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """A 16-bit 8900×8900 PNG compresses to a few hundred KB but decodes to 150+ MB (5 GB in float)."""
    import zlib

    w = h = 8900
    raw = b"".join(b"\x00" + bytes(2 * w) for _ in range(h))  # filter byte + zero row, 16-bit grey
    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, 0, 0, 0, 0])) \
        + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    p = tmp_path / "bomb.png"
    p.write_bytes(png)
    assert p.stat().st_size < 1_000_000
    before = _rss_mb()
    with pytest.raises(Exception, match="over the 100 MB limit"):
        load_image(p, budget=100 * 2**20)
    assert _rss_mb() - before < 50  # refused from the header: nothing was decoded
    # within the budget it decodes once, is reduced early, and never makes a full-size float copy
    t0 = _rss_mb()
    img = load_image(p, budget=200 * 2**20)
    assert img.rgb.shape == (1024, 1024, 3) and any("downscaled" in n for n in img.notes)
    assert _rss_mb() - t0 < 400


def test_cache_key_is_the_upload_bytes(engine: Engine, tmp_path: Path) -> None:
    rgb = (np.random.default_rng(1).random((40, 50, 3)) * 255).astype(np.uint8)
    a_path, b_path = tmp_path / "a.png", tmp_path / "b.bmp"
    Image.fromarray(rgb).save(a_path)
    Image.fromarray(rgb).save(b_path)  # same pixels, different file
    a, b = engine.analyze(a_path, "tiny"), engine.analyze(b_path, "tiny")
    assert a is not b and a.key != b.key and a.source_mode == b.source_mode == "RGB"
    assert engine.analyze(a_path, "tiny") is a


def test_image_is_decoded_once_per_upload(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnviz.analysis import session as engine_mod

    p = tmp_path / "once.png"
    Image.fromarray(np.full((30, 30, 3), 7, np.uint8)).save(p)
    calls = []
    real = engine_mod.load_image
    monkeypatch.setattr(engine_mod, "load_image", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    engine.analyze(p, "tiny")
    engine.analyze(p, "plain")
    engine.analyze(p, "ocr")
    assert len(calls) == 1


def test_cache_is_bounded(engine: Engine) -> None:
    for i in range(12):
        engine.analyze(np.full((20, 20, 3), i * 20, np.uint8), "plain")
    assert engine.cached() <= engine.max_entries


def test_concurrent_exports_are_unique_and_complete(engine: Engine, images: dict[str, Path], tmp_path: Path) -> None:
    a = engine.analyze(images["rgb"], "tiny")
    paths: list[Path] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            paths.append(export_bundle(a, click=(i % 80, 10), layer="nl", folder=tmp_path))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 24
    for p in sorted(paths, key=lambda p: json.loads(zipfile.ZipFile(p).read("metadata.json"))["click"]["x"]):
        with zipfile.ZipFile(p) as z:
            assert z.testzip() is None
    assert not list(tmp_path.glob("*.part"))  # no temporary file left behind


def test_work_folder_cleanup_ttl_and_cap(tmp_path: Path) -> None:
    now = time.time()
    for i in range(10):
        f = tmp_path / f"f{i}.zip"
        f.write_bytes(b"x" * 1000)
        os.utime(f, (now - 100 * i, now - 100 * i))
    (tmp_path / ".stale.part").write_bytes(b"")
    os.utime(tmp_path / ".stale.part", (now - 600, now - 600))
    res = cleanup(tmp_path, ttl_s=450, cap_bytes=3000, now=now)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["f0.zip", "f1.zip", "f2.zip"] and res["bytes"] == 3000  # f5…f9 too old, f3, f4 over the cap, the .part gone


def test_cleanup_removes_servers_empty_staging_files_and_folders(tmp_path: Path) -> None:
    """Gradio's upload route leaves a zero-byte temp file per upload and a folder per cached file: both go."""
    from attnviz.analysis.workdirs import keep_clean

    now = time.time()
    old, fresh = tmp_path / "tmpabc123", tmp_path / "tmpfresh"
    old.write_bytes(b"")
    fresh.write_bytes(b"")
    os.utime(old, (now - 120, now - 120))
    (tmp_path / "d41d8cd9" / "sub").mkdir(parents=True)
    os.utime(tmp_path / "d41d8cd9" / "sub", (now - 120, now - 120))
    kept = tmp_path / "e3b0c442"
    kept.mkdir()
    (kept / "result.png").write_bytes(b"png")
    cleanup(tmp_path, now=now)
    assert not old.exists() and fresh.exists()  # a fresh empty file may be a write in progress
    assert not (tmp_path / "d41d8cd9" / "sub").exists() and (kept / "result.png").exists()
    keep_clean(tmp_path, every_s=3600)  # cleans at once and registers the folder for the periodic thread
    assert fresh.exists() and (kept / "result.png").exists()
