"""The web app: engine behaviour, bad input, and every endpoint through gradio_client on a live server."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image
from torch import nn

from attnviz.modules import CBAM, NonLocal2d, RecurrentCrissCross
from attnviz.ui.engine import Catalog, Engine, Entry, Style, UserError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def engine() -> Engine:
    tiny, plain = Tiny().eval(), Plain().eval()
    plain.card = {"input_size": [32, 32]}  # type: ignore[assignment]
    cat = Catalog([Entry("tiny", True, loader=lambda: tiny), Entry("plain", True, loader=lambda: plain),
                   Entry("gone", False, "weights not in the local cache; run X")], torch.device("cpu"))
    return Engine(cat, max_entries=4)


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
    (d / "notes.txt").write_text("not an image")
    out["text_as_png"] = d / "text.png"
    out["text_as_png"].write_text("not an image either")
    data = out["exif"].read_bytes()
    out["corrupt"] = d / "corrupt.jpg"
    out["corrupt"].write_bytes(data[: len(data) // 2])
    out["empty"] = d / "empty.png"
    out["empty"].write_bytes(b"")
    return out


# ---------------------------------------------------------------------------------------- engine
def test_click_uses_the_cached_forward(engine: Engine, images: dict[str, Path]) -> None:
    model = engine.catalog.get("tiny")
    calls = []
    h = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        a = engine.analyze(images["rgb"], "tiny")
        assert len(calls) == 1
        layers = engine.click_choices(a)
        assert layers == ["nl", "cc.cca"]
        for view in ("loop1", "loop2", "reach"):
            rgb, info, m = engine.attention_at(a, 10, 50, "cc.cca", view)
            assert rgb.shape == (*a.hw, 3) and abs(m.sum() - 1) < 1e-4
        rgb, info, m = engine.attention_at(a, 70, 5, "nl")
        assert info["feature_cell"] == [int(5 * m.shape[0] / a.hw[0]), int(70 * m.shape[1] / a.hw[1])]
        again = engine.analyze(images["rgb"], "tiny")
        assert again is a and len(calls) == 1  # same image, same model: no new forward
    finally:
        h.remove()


def test_click_row_changes_with_the_pixel(engine: Engine, images: dict[str, Path]) -> None:
    a = engine.analyze(images["rgb"], "tiny")
    _, _, m1 = engine.attention_at(a, 5, 5, "cc.cca", "loop1")
    _, _, m2 = engine.attention_at(a, a.hw[1] - 5, a.hw[0] - 5, "cc.cca", "loop1")
    assert not np.allclose(m1, m2)
    with pytest.raises(UserError, match="outside"):
        engine.attention_at(a, a.hw[1] + 3, 1, "nl")
    with pytest.raises(UserError, match="not a clickable layer"):
        engine.attention_at(a, 1, 1, "cbam.spatial")


def test_views_summaries_ablation_compare_export(engine: Engine, images: dict[str, Path], tmp_path: Path) -> None:
    a = engine.analyze(images["rgb"], "tiny")
    assert len(engine.spatial_gallery(a, Style(shared=True))) == 1
    assert engine.gates_heatmap(a) is not None and engine.gate_bars(a, "cbam.channel") is not None
    table = engine.modules_table(a)
    assert {row[0] for row in table} >= {"cbam.channel", "cbam.spatial", "nl", "cc.cca", "cc.cca#2"}
    fig, info = engine.ablate(a, "nl")
    assert info["max_abs_logit_change"] > 0
    for method in ("Grad-CAM", "IntegratedGradients", "Occlusion"):
        nat, att, scores = engine.compare(a, method, "cbam.spatial")
        assert nat.shape == att.shape == (*a.hw, 3) and -1 <= scores["spearman"] <= 1 and 0 <= scores["top10%_iou"] <= 1
    path = engine.export(a, click=(12, 30), layer="cc.cca", folder=tmp_path)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = json.loads(z.read("metadata.json"))
        npz = np.load(z.open("maps.npz"))
        assert "cc.cca/contribution" not in npz.files or npz["cc.cca/contribution"].shape == ()
        assert npz["cbam.spatial/mask"].shape == (16, 16)  # feature resolution (32² input, stride 2), not image size
    assert any(n.startswith("overlays/click_cc.cca") for n in names) and "overlays/image.png" in names
    assert meta["click"]["x"] == 12 and meta["image_size"] == [400, 300] and meta["source_size"] == [80, 60] and meta["layers"]["nl"] == "affinity"


def test_model_without_attention_still_predicts(engine: Engine, images: dict[str, Path]) -> None:
    a = engine.analyze(images["rgb"], "plain")
    assert len(a.top(5)) == 3 and not a.records
    assert any("no attention modules" in n for n in a.notes)
    with pytest.raises(UserError, match="nothing to show"):
        engine.attention_at(a, 1, 1)
    with pytest.raises(UserError, match="not available here.*run X"):
        engine.analyze(images["rgb"], "gone")


@pytest.mark.parametrize("kind,note", [("16bit", "rescaled"), ("rgba", "flattened"), ("grey", "greyscale"),
                                       ("palette", "palette"), ("exif", "EXIF"), ("huge", "downscaled")])
def test_odd_images_are_converted_with_a_note(engine: Engine, images: dict[str, Path], kind: str, note: str) -> None:
    a = engine.analyze(images[kind], "tiny")
    assert a.image.dtype == np.uint8 and a.image.shape[2] == 3
    assert any(note in n for n in a.notes), a.notes
    if kind == "exif":
        assert a.hw == (80 * 5, 60 * 5) or a.hw[0] > a.hw[1]  # portrait after rotation (enlarged when small)


@pytest.mark.parametrize("kind,message", [("text_as_png", "not an image"), ("corrupt", "corrupt or truncated"), ("empty", "empty")])
def test_bad_files_give_clear_errors(engine: Engine, images: dict[str, Path], kind: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        engine.analyze(images[kind], "tiny")


def test_cache_is_bounded(engine: Engine) -> None:
    for i in range(10):
        engine.analyze(np.full((20, 20, 3), i * 20, np.uint8), "plain")
    assert engine.cached() <= engine.max_entries


def test_wrong_array_shape_is_refused(engine: Engine) -> None:
    with pytest.raises(UserError, match="shape"):
        engine.analyze(np.zeros((4, 5, 6, 7)), "tiny")


# ---------------------------------------------------------------------------------------- live server
@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    from gradio_client import Client

    from attnviz.ui import build_demo

    demo = build_demo(models={"tiny": Tiny().eval()}, include_registry=True)
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False), demo
    finally:
        demo.close()


def test_client_analyze_click_export(client, images: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import handle_file

    c, demo = client
    img = handle_file(str(images["rgb"]))
    label, summary = c.predict(img, "tiny", api_name="/analyze")
    assert summary["layers"]["nl"] == "affinity" and summary["click_layers"]["cc.cca"]["views"] == ["loop1", "loop2", "reach"]
    assert len(label["confidences"]) == 4
    overlay, info = c.predict(img, 40, 20, "cc.cca", api_name="/attention_at")  # the default model is the user's
    assert Path(overlay).suffix == ".png" and info["x"] == 40 and info["view"] == "reach"
    shown = np.asarray(Image.open(overlay))
    assert shown.shape[:2] == tuple(reversed(summary["image_size"]))
    zpath = c.predict(img, "tiny", 40, 20, "cc.cca", api_name="/export")
    with zipfile.ZipFile(zpath) as z:
        assert {"maps.npz", "metadata.json"} <= set(z.namelist())
    for name in ("/spatial_masks", "/channel_gates", "/modules", "/stn", "/other_maps"):
        c.predict(img, "tiny", api_name=name)
    _, abl = c.predict(img, "tiny", "nl", api_name="/ablate")
    assert abl["layer"] == "nl"
    _, _, scores = c.predict(img, "tiny", "Grad-CAM", "cbam.spatial", api_name="/compare")
    assert "spearman" in scores


@pytest.mark.parametrize("kind,message", [("text_as_png", "not an image"), ("corrupt", "corrupt"), ("empty", "empty")])
def test_client_bad_input_is_a_message(client, images: dict[str, Path], kind: str, message: str) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c, _ = client
    with pytest.raises(AppError, match=message) as err:
        c.predict(handle_file(str(images[kind])), "tiny", api_name="/analyze")
    assert "Traceback" not in str(err.value)


def test_client_odd_images_and_unavailable_model(client, images: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c, demo = client
    for kind in ("16bit", "rgba", "grey", "palette", "exif", "huge"):
        _, summary = c.predict(handle_file(str(images[kind])), "tiny", api_name="/analyze")
        assert summary["notes"], kind
    missing = [n for n, e in demo.engine.catalog.entries.items() if not e.available]
    if missing:
        with pytest.raises(AppError, match="not available here"):
            c.predict(handle_file(str(images["rgb"])), missing[0], api_name="/analyze")


def test_client_zoo_example(client) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import handle_file

    c, demo = client
    if not demo.engine.catalog.entries["ccnet_resnet"].available:
        pytest.skip("no shipped ccnet_resnet checkpoint")
    scene = next(EXAMPLES.glob("scene_*.png"))
    label, summary = c.predict(handle_file(str(scene)), "ccnet_resnet", api_name="/analyze")
    assert label["label"] and summary["kinds"] == {"criss_cross": 2}


def test_client_video(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import av
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c, _ = client
    clip = handle_file(str(EXAMPLES / "clip_moving_item.mp4"))
    video, over, conf, npz, csv, info = c.predict(clip, "tiny", "spatial", None, None, None, 3, 300, api_name="/analyze_video")
    path = video["video"] if isinstance(video, dict) else video
    with av.open(path) as cont:
        s = cont.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in cont.decode(s)) == info["frames"] == 15
    assert Path(npz).suffix == ".npz" and Path(csv).suffix == ".csv"
    bad = {"empty.mp4": b"", "text.mp4": b"plain text", "cut.mp4": (EXAMPLES / "clip_moving_item.mp4").read_bytes()[:400]}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AppError, match="empty|not a video|decod|no video stream") as err:
            c.predict(handle_file(str(tmp_path / name)), "tiny", "spatial", api_name="/analyze_video")
        assert "Traceback" not in str(err.value)
    with pytest.raises(AppError, match="cap"):
        c.predict(clip, "tiny", "spatial", None, None, None, 1, 10, api_name="/analyze_video")


def test_serve_loads_a_user_model_safely(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from attnviz.cli import load_user_model

    model = Tiny()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "labels.txt").write_text("w\nx\ny\nz\n")
    m = load_user_model("test_app:Tiny", str(tmp_path / "w.safetensors"), str(tmp_path / "labels.txt"), 48)
    assert m.card["class_names"] == ["w", "x", "y", "z"] and m.card["input_size"] == [48, 48] and not m.training
    torch.save({"evil": object()}, tmp_path / "pickle.pt")  # arbitrary objects are never unpickled
    with pytest.raises(SystemExit, match="tensor-only"):
        load_user_model("test_app:Tiny", str(tmp_path / "pickle.pt"))
    with pytest.raises(SystemExit, match="package.module:factory"):
        load_user_model("no_colon_here")
