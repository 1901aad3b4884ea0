"""The web app through its HTTP API (gradio_client on a live server): every endpoint, bad input, concurrency."""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port
from PIL import Image
from test_analysis import Tiny

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("app_imgs")
    rng = np.random.default_rng(0)
    out = {}
    Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(out.setdefault("rgb", d / "rgb.png"))
    Image.fromarray((rng.random((60, 80)) * 65535).astype(np.uint16)).save(out.setdefault("16bit", d / "16bit.png"))
    Image.fromarray((rng.random((60, 80, 4)) * 255).astype(np.uint8)).save(out.setdefault("rgba", d / "rgba.png"))
    out["text_as_png"] = d / "text.png"
    out["text_as_png"].write_text("not an image")
    out["empty"] = d / "empty.png"
    out["empty"].write_bytes(b"")
    out["pdf"] = d / "doc.pdf"
    out["pdf"].write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n")
    return out


@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    from gradio_client import Client

    from attnviz.models import build_seg
    from attnviz.ui import build_demo

    seg = build_seg("ccnet_seg").eval()
    with torch.no_grad():
        seg.decode_head.cca.gamma.fill_(1.0)
    seg.card = {"input_size": [64, 64], "class_names": ["background"] + [f"c{i}" for i in range(10)]}
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, depth=2, num_classes=3).eval()
    vit.card = {"input_size": [64, 64], "class_names": ["p", "q", "r"]}
    demo = build_demo(models={"tiny": Tiny().eval(), "segm": seg, "vit": vit}, include_registry=True)
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
    assert summary["task"] == "classification" and summary["image_size"] == [80, 60] and len(label["confidences"]) == 4
    overlay, info = c.predict(img, 40, 20, "cc.cca", api_name="/attention_at")  # the default model is the user's
    assert Path(overlay).suffix == ".png" and info["x"] == 40 and info["view"] == "reach" and "text" in info
    zpath = c.predict(img, "tiny", 40, 20, "cc.cca", api_name="/export")
    with zipfile.ZipFile(zpath) as z:
        assert {"maps.npz", "metadata.json"} <= set(z.namelist())
    for name in ("/spatial_masks", "/channel_gates", "/modules", "/stn", "/other_maps"):
        c.predict(img, "tiny", api_name=name)
    tiles = c.predict(img, 40, 20, "tiny", api_name="/click_grid")
    assert len(tiles) == 4
    qd = c.predict(img, "tiny", "cc.cca", api_name="/query_dependence")
    assert "verdict" in qd
    _, abl = c.predict(img, "tiny", "nl", api_name="/ablate")
    assert abl["layer"] == "nl"
    _, _, scores = c.predict(img, "tiny", "Grad-CAM", "cbam.spatial", api_name="/compare")
    assert "spearman" in scores


def test_client_segmentation(client, images: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import handle_file

    c, _ = client
    img = handle_file(str(images["rgb"]))
    label, summary = c.predict(img, "segm", api_name="/analyze")
    assert summary["task"] == "segmentation" and summary["classes_present"]
    seg_png, legend = c.predict(img, "segm", 0.5, api_name="/segmentation")
    assert Path(seg_png).exists() and {"name", "area", "colour"} <= set(legend[0])
    _, info = c.predict(img, 30, 20, None, None, "mean", "segm", api_name="/attention_at")
    assert info["view"] == "reach" and "same_class_mass_ratio" in info and "same_class_mass_ratio_uniform_geometry" in info
    _, cam = c.predict(img, 30, 20, "segm", api_name="/segment_gradcam")
    assert cam["class"] == info["class"]
    zpath = c.predict(img, "segm", 30, 20, api_name="/export")
    with zipfile.ZipFile(zpath) as z:
        assert "segmentation.png" in z.namelist() and json.loads(z.read("metadata.json"))["segmentation"]["legend"]


@pytest.mark.parametrize("kind,message", [("text_as_png", "not an image"), ("empty", "empty"), ("pdf", "not an image|Invalid file type")])
def test_client_bad_input_is_a_message(client, images: dict[str, Path], kind: str, message: str) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c, _ = client
    with pytest.raises(AppError, match=message) as err:
        c.predict(handle_file(str(images[kind])), "tiny", api_name="/analyze")
    assert "Traceback" not in str(err.value)


@pytest.mark.parametrize("args,message", [
    ((40, "abc"), "x and y must be numbers"),
    (("nan", 3), "finite|x and y must be numbers"),
    ((500, 3), "outside the 80×60 image"),
])
def test_client_arguments_are_named_in_errors(client, images: dict[str, Path], args: tuple, message: str) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c, _ = client
    with pytest.raises(AppError, match=message):
        c.predict(handle_file(str(images["rgb"])), *args, "nl", None, "mean", "tiny", api_name="/attention_at")


def test_client_model_and_head_validation(client, images: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c, demo = client
    img = handle_file(str(images["rgb"]))
    with pytest.raises(AppError, match="model is missing: choose one of"):
        c.predict(img, None, api_name="/analyze")
    with pytest.raises(AppError, match="Unknown model 'nope'"):
        c.predict(img, "nope", api_name="/analyze")
    with pytest.raises(AppError, match="head must be 'mean'.*single head"):
        c.predict(img, 3, 3, "cc.cca", "reach", "5", "tiny", api_name="/attention_at")
    with pytest.raises(AppError, match="threshold"):
        c.predict(img, 3, 3, "nl", None, "mean", "tiny", "inferno", 0.5, "per map", 2.0, api_name="/attention_at")
    for kind in ("16bit", "rgba"):
        _, summary = c.predict(handle_file(str(images[kind])), "tiny", api_name="/analyze")
        assert summary["notes"], kind
    # a model with no weights here and none to fetch (downloadable ones try the network: tested against a local server)
    missing = [n for n, e in demo.engine.catalog.entries.items() if not e.available and not e.downloadable]
    if missing:
        with pytest.raises(AppError, match="not available here"):
            c.predict(img, missing[0], api_name="/analyze")


def test_client_concurrent_exports_are_byte_exact(client, images: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import handle_file

    c, _ = client
    img = handle_file(str(images["rgb"]))
    results: dict[int, dict] = {}

    def one(i: int) -> None:
        z = c.predict(img, "tiny", 10 + i, 5, "nl", api_name="/export")
        with zipfile.ZipFile(z) as zf:
            assert zf.testzip() is None
            results[i] = json.loads(zf.read("metadata.json"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(12))
    assert all(results[i]["click"]["x"] == 10 + i for i in range(12))  # each request got its own bundle


def test_client_video(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import av
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c, _ = client
    clip = handle_file(str(EXAMPLES / "clip_moving_item.mp4"))
    video, over, conf, npz, csv, info, details = c.predict(clip, "tiny", "spatial", None, None, None, 3, 300, api_name="/analyze_video")
    assert details["frames"] == 15 and details["kind"] == "spatial" and details["layer"] and len(details["vrange"]) == 2 and details["fps"] > 0
    path = video["video"] if isinstance(video, dict) else video
    with av.open(path) as cont:
        s = cont.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in cont.decode(s)) == 15
    assert Path(npz).suffix == ".npz" and Path(csv).suffix == ".csv" and "15 frames" in info
    bad = {"empty.mp4": b"", "text.mp4": b"plain text", "cut.mp4": (EXAMPLES / "clip_moving_item.mp4").read_bytes()[:400]}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AppError, match="empty|not a video|decod|no video stream") as err:
            c.predict(handle_file(str(tmp_path / name)), "tiny", "spatial", api_name="/analyze_video")
        assert "Traceback" not in str(err.value)
    with pytest.raises(AppError, match="cap"):
        c.predict(clip, "tiny", "spatial", None, None, None, 1, 10, api_name="/analyze_video")
    with pytest.raises(AppError, match="stride must be"):
        c.predict(clip, "tiny", "spatial", None, None, None, 0, 10, api_name="/analyze_video")
    with pytest.raises(AppError, match="x and y must be numbers"):
        c.predict(clip, "tiny", "query", None, "abc", 3, 1, 10, api_name="/analyze_video")
    frame = c.predict(clip, 2, api_name="/video_frame")
    assert np.asarray(Image.open(frame)).shape == (256, 256, 3)


def raw_call(base: str, name: str, body: str) -> str:
    """POST a raw JSON body (NaN / Infinity literals, as curl or JavaScript clients send them) and return the event stream."""
    import httpx

    r = httpx.post(f"{base}/gradio_api/call/{name}", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    return httpx.get(f"{base}/gradio_api/call/{name}/{r.json()['event_id']}", timeout=120).text


@pytest.mark.parametrize(("name", "args", "message"), [
    ("attention_at", '{img}, NaN, 5, null, null, "mean", "tiny", "inferno", 0.5, "per map", 0', "x and y must be finite"),
    ("attention_at", '{img}, 5, Infinity, null, null, "mean", "tiny", "inferno", 0.5, "per map", 0', "x and y must be finite"),
    ("attention_at", '{img}, 5, 5, null, null, "mean", "tiny", "inferno", NaN, "per map", 0', "alpha must be a number"),
    ("export", '{img}, "tiny", NaN, 3, null, "inferno", 0.5, "per map"', "x and y must be finite"),
    ("analyze_video", '{clip}, "tiny", "spatial", null, null, null, NaN, 300', "stride and max_frames must be whole numbers"),
    ("analyze_video", '{clip}, "tiny", "spatial", null, null, null, 1, Infinity', "stride and max_frames must be whole numbers"),
    ("analyze_video", '{clip}, "tiny", "query", null, NaN, 3, 1, 10', "x and y must be finite"),
    ("video_frame", '{clip}, NaN', "index must be a whole number"),
])
def test_raw_json_nan_and_infinity_get_a_message(client, images: dict[str, Path], name: str, args: str, message: str) -> None:  # type: ignore[no-untyped-def]
    import httpx

    c, _ = client
    base = c.src.rstrip("/")

    def upload(p: Path) -> str:
        with open(p, "rb") as f:
            path = httpx.post(f"{base}/gradio_api/upload", files={"files": (p.name, f)}, timeout=60).json()[0]
        return json.dumps({"path": path, "meta": {"_type": "gradio.FileData"}})

    body = "{\"data\": [" + args.format(img=upload(images["rgb"]), clip=upload(EXAMPLES / "clip_moving_item.mp4")) + "]}"
    out = raw_call(base, name, body)
    assert "event: error" in out and message in out, out


def test_client_transformer_head_grid(client, images: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    c, _ = client
    img = handle_file(str(images["rgb"]))
    grid = c.predict(img, "vit", 30, 20, "cls", "inferno", api_name="/head_grid")
    assert np.asarray(Image.open(grid)).shape[2] == 3
    _, summary = c.predict(img, "vit", api_name="/analyze")
    assert summary["layers"] == {"blocks.0.attn": "tokens", "blocks.1.attn": "tokens"}
    assert summary["click_layers"]["blocks.1.attn"]["views"] == ["row", "cls", "rollout"]
    with pytest.raises(AppError, match="no transformer self-attention"):
        c.predict(img, "tiny", api_name="/head_grid")


def test_serve_loads_a_user_model_safely(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from attnviz.cli import load_user_model

    model = Tiny()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "labels.txt").write_text("w\nx\ny\nz\n")
    m = load_user_model("test_analysis:Tiny", str(tmp_path / "w.safetensors"), str(tmp_path / "labels.txt"), 48)
    assert m.card["class_names"] == ["w", "x", "y", "z"] and m.card["input_size"] == [48, 48] and not m.training
    torch.save({"evil": object()}, tmp_path / "pickle.pt")  # arbitrary objects are never unpickled
    with pytest.raises(SystemExit, match="tensor-only"):
        load_user_model("test_analysis:Tiny", str(tmp_path / "pickle.pt"))
    with pytest.raises(SystemExit, match="package.module:factory"):
        load_user_model("no_colon_here")


def test_client_atlas_over_the_shipped_examples(client) -> None:  # type: ignore[no-untyped-def]
    from gradio_client.exceptions import AppError

    c, _ = client
    text, info = c.predict("se_resnet", "shipped examples", api_name="/atlas")
    assert info["counts"]["images"] == len(list(EXAMPLES.glob("*.png"))) and info["model"] == "se_resnet"
    assert "se_resnet" in text and "images" in text
    with pytest.raises(AppError, match="data must be one of"):
        c.predict("se_resnet", "my disk", api_name="/atlas")
