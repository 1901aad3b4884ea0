"""Video pipeline: playable H.264 output, one colour scale per clip, odd sizes, gif, bad clips, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attnviz.modules import CBAM, NonLocal2d, SpatialTransformer
from attnviz.video import VideoCancelled, VideoError, analyze_video, iter_frames, probe, write_video

ROOT = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stn = SpatialTransformer(3, bounded=True)
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.cbam = CBAM(8, rd_ratio=0.5)
        self.nl = NonLocal2d(8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
        self.card = {"input_size": [32, 32], "class_names": ["a", "b", "c"]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.nl(self.cbam(self.stem(self.stn(x)))))


class Constant(nn.Module):
    """A spatial gate that is the same constant in every frame."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.gate = nn.Conv2d(4, 1, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, 0.3)
        self.fc = nn.Linear(4, 2)
        self.card = {"input_size": [16, 16]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        f = f * torch.sigmoid(self.gate(f))  # found by generic discovery as a spatial mask
        return self.fc(f.mean((2, 3)))


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    return write_video(path, frames, fps)


def moving(n: int, h: int, w: int) -> list[np.ndarray]:
    out = []
    for t in range(n):
        f = np.full((h, w, 3), 40, np.uint8)
        x = int(t / max(1, n - 1) * (w - 12))
        f[h // 3 : h // 3 + 12, x : x + 12] = (250, 220, 30)
        out.append(f)
    return out


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def decode_info(path: Path) -> tuple[str, str, int, int, int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return s.codec_context.name, s.codec_context.pix_fmt, n, s.codec_context.width, s.codec_context.height


@pytest.mark.parametrize("kind", ["spatial", "channel", "grid", "query"])
def test_output_is_playable_h264_with_every_frame(net: nn.Module, tmp_path: Path, kind: str) -> None:
    clip = write_clip(tmp_path / "in.mp4", moving(12, 48, 64))
    res = analyze_video(clip, net, kind=kind, query=(10, 20) if kind == "query" else None, out=tmp_path / f"{kind}.mp4", batch_size=5)
    codec, pix, n, w, h = decode_info(res.video)
    assert (codec, pix, n, h) == ("h264", "yuv420p", 12, 48) and w % 2 == 0
    assert w == 64 if kind == "grid" else w > 64 + 60  # heat maps carry a burned-in colour bar on the right
    data = res.video.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: playable while downloading
    npz = np.load(res.npz)
    assert npz["maps"].shape[0] == 12 and len(res.rows) == 12 and res.csv.read_text().count("\n") == 13
    assert res.fps == pytest.approx(10)


def test_odd_size_gif_stride_and_cap(net: nn.Module, tmp_path: Path) -> None:
    gif = tmp_path / "odd.gif"  # 71×51: odd sides, which H.264 cannot store as is
    imgs = [Image.fromarray(np.pad(f, ((0, 1), (0, 1), (0, 0)))) for f in moving(9, 50, 70)]
    imgs[0].save(gif, save_all=True, append_images=imgs[1:], duration=100, loop=0)
    res = analyze_video(gif, net, kind="spatial", out=tmp_path / "gif.mp4", stride=2)
    codec, pix, n, w, h = decode_info(res.video)
    assert (codec, pix, n) == ("h264", "yuv420p", 5) and h == 50 and w % 2 == 0 and w > 70  # 71×51 → even, plus the colour bar
    assert any("stride 2" in x for x in res.notes)
    clip = write_clip(tmp_path / "long.mp4", moving(9, 32, 32))
    with pytest.raises(VideoError, match="cap"):
        analyze_video(clip, net, kind="spatial", out=tmp_path / "cap.mp4", max_frames=3)


def test_one_colour_scale_for_the_clip(tmp_path: Path) -> None:
    model = Constant().eval()
    frames = [np.full((32, 32, 3), v, np.uint8) for v in (10, 120, 240, 60)]
    clip = write_clip(tmp_path / "flat.mp4", frames)
    res = analyze_video(clip, model, kind="spatial", out=tmp_path / "flat_out.mp4", vrange=(0.0, 1.0), alpha=1.0)
    with av.open(str(res.video)) as c:
        out = [f.to_ndarray(format="rgb24").astype(float) for f in c.decode(video=0)]
    means = [o.mean((0, 1)) for o in out]
    for m in means[1:]:  # constant map + fixed scale + full opacity → the same colour in every frame
        np.testing.assert_allclose(m, means[0], atol=3)
    # clip-wide scale: a map that is constant over time is rendered identically in all frames too
    res2 = analyze_video(clip, model, kind="spatial", out=tmp_path / "flat2.mp4", alpha=1.0)
    assert res2.vrange is not None
    with av.open(str(res2.video)) as c:
        out2 = [f.to_ndarray(format="rgb24").astype(float).mean((0, 1)) for f in c.decode(video=0)]
    for m in out2[1:]:
        np.testing.assert_allclose(m, out2[0], atol=3)


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"this is text, not a video", "not a video"), ("truncated", "decod|not a video|no video stream")])
def test_bad_clips(net: nn.Module, tmp_path: Path, content: object, message: str) -> None:
    p = tmp_path / "bad.mp4"
    if content == "truncated":
        good = write_clip(tmp_path / "good.mp4", moving(10, 32, 32)).read_bytes()
        p.write_bytes(good[:300])
    else:
        p.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(VideoError, match=message):
        analyze_video(p, net, kind="spatial", out=tmp_path / "x.mp4")


def test_errors_for_missing_layer_and_kind(net: nn.Module, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", moving(3, 32, 32))
    with pytest.raises(VideoError, match="kind must be one of"):
        analyze_video(clip, net, kind="nope", out=tmp_path / "a.mp4")
    with pytest.raises(VideoError, match="layer must be one of.*cbam.spatial"):
        analyze_video(clip, net, kind="spatial", layer="nl", out=tmp_path / "a.mp4")
    with pytest.raises(VideoError, match="segmentation model"):
        analyze_video(clip, net, kind="segmentation", out=tmp_path / "a.mp4")
    with pytest.raises(VideoError, match="stride must be"):
        analyze_video(clip, net, stride=0, out=tmp_path / "a.mp4")
    with pytest.raises(VideoError, match="give the path of the .mp4"):  # a folder as `out`: said so (it used to fail in the clean-up)
        analyze_video(clip, net, out=tmp_path)
    with pytest.raises(VideoError, match=r"must name an \.mp4 file"):  # checked before a frame is decoded
        analyze_video(clip, net, out=tmp_path / "clip_without_suffix")
    assert tmp_path.is_dir() and clip.exists()
    assert probe(clip)[1:] == (3, 32, 32)
    assert len(list(iter_frames(clip))) == 3


def test_cli_writes_video_npz_csv(tmp_path: Path) -> None:
    clip = ROOT / "examples" / "clip_moving_item.mp4"
    if not (ROOT / "pretrained" / "cbam_resnet.safetensors").exists():
        pytest.skip("no shipped cbam_resnet")
    out = tmp_path / "o.mp4"
    r = subprocess.run([sys.executable, "-m", "attnviz", "video", str(clip), "--model", "cbam_resnet", "--kind", "spatial",
                        "--stride", "3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.exists() and out.with_suffix(".npz").exists() and out.with_suffix(".csv").exists()
    bad = subprocess.run([sys.executable, "-m", "attnviz", "video", str(clip), "--model", "cbam_resnet", "--max-frames", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "cap" in bad.stderr and "Traceback" not in bad.stderr


def test_default_kind_is_one_the_model_has(net: nn.Module, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", moving(4, 32, 32))
    res = analyze_video(clip, net, out=tmp_path / "auto.mp4")
    assert res.kind == "query" and res.layer == "nl"  # the first kind this model has


def test_segmentation_video_has_labels_and_the_query_map(tmp_path: Path) -> None:
    from attnviz.models import build_seg

    model = build_seg("ccnet_seg").eval()
    model.card = {"input_size": [64, 64], "class_names": ["background"] + [f"c{i}" for i in range(10)]}
    clip = write_clip(tmp_path / "in.mp4", moving(5, 48, 64))
    res = analyze_video(clip, model, kind="segmentation", query=(20, 20), out=tmp_path / "seg.mp4")
    codec, pix, n, w, h = decode_info(res.video)
    assert (codec, n, h) == ("h264", 5, 48) and w > 2 * 64  # segmentation | attention with its colour bar
    npz = np.load(res.npz)
    assert npz["labels"].shape == (5, 48, 64) and npz["maps"].shape == (5, 8, 8) and res.task == "segmentation"
    assert "query_class" in res.rows[0]


def test_cancel_stops_between_frames_and_deletes_partial_output(net: nn.Module, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", moving(30, 32, 32))
    seen: list[int] = []

    def stop() -> bool:
        seen.append(1)
        return len(seen) > 6

    out = tmp_path / "cancelled.mp4"
    with pytest.raises(VideoCancelled):
        analyze_video(clip, net, kind="spatial", out=out, batch_size=4, should_stop=stop)
    assert not out.exists() and not out.with_suffix(".npz").exists() and not out.with_suffix(".csv").exists()
    assert len(seen) == 7  # polled frame by frame, stopped at the first True


def test_truncated_clip_says_how_many_frames_were_read(net: nn.Module, tmp_path: Path) -> None:
    good = write_clip(tmp_path / "good.mp4", moving(60, 64, 64)).read_bytes()  # +faststart: the index comes first
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good[: int(len(good) * 0.7)])  # the tail of the frame data is missing
    res = analyze_video(cut, net, kind="spatial", out=tmp_path / "cut_out.mp4")
    assert 0 < res.frames < 60
    assert any("truncated" in n and f"{res.frames} of about 60" in n for n in res.notes), res.notes


def test_transformer_clip_class_token_and_rollout_per_frame(tmp_path: Path) -> None:
    """A ViT's video kinds: ``cls`` (the class token's attention in one layer, heads averaged: DINO's videos) and ``rollout``
    (its rollout through every layer, Abnar & Zuidema: 0.5·A + 0.5·I, rows renormalised). Each frame's map equals the one
    the test computes from timm's explicit-path softmax of the same decoded frames."""
    import copy

    import timm.models.vision_transformer as vt

    from attnviz.models.inputs import card_of, preprocess

    torch.manual_seed(0)
    model = vt.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=3).eval()
    with torch.no_grad():  # timm's initialisation gives near-uniform rows: sharper ones tell placements apart
        for blk in model.blocks:
            blk.attn.qkv.weight.normal_(0.0, 0.5)
    model.card = {"input_size": [32, 32], "class_names": ["a", "b", "c"]}
    clip = write_clip(tmp_path / "in.mp4", moving(6, 48, 64))
    cls = analyze_video(clip, model, kind="cls", layer="blocks.1.attn", out=tmp_path / "cls.mp4", batch_size=4)
    roll = analyze_video(clip, model, kind="rollout", out=tmp_path / "rollout.mp4", batch_size=4)
    assert (cls.kind, cls.layer, roll.kind, roll.layer) == ("cls", "blocks.1.attn", "rollout", "blocks.2.attn")
    assert decode_info(cls.video)[2] == decode_info(roll.video)[2] == 6 and "patch_share" in cls.rows[0]
    oracle = copy.deepcopy(model)
    kept: list[torch.Tensor] = []
    for blk in oracle.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_pre_hook(lambda m, a: kept.append(a[0].detach().clone()))
    x = preprocess([f for _, _, f in iter_frames(clip)], card_of(model), torch.device("cpu"))
    with torch.no_grad():
        oracle(x)
    a = [k.mean(1) for k in kept]  # per layer (B, N, N), heads averaged
    eye = torch.eye(a[0].shape[-1])
    r = eye.expand_as(a[0])
    for layer in a:
        s = 0.5 * layer + 0.5 * eye
        r = (s / s.sum(-1, keepdim=True)) @ r
    ref_cls, ref_roll = a[1][:, 0, 1:].reshape(-1, 4, 4), r[:, 0, 1:].reshape(-1, 4, 4)
    assert float(ref_cls.std()) > 1e-3  # maps that differ from patch to patch
    torch.testing.assert_close(torch.from_numpy(np.load(cls.npz)["maps"]), ref_cls, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.from_numpy(np.load(roll.npz)["maps"]), ref_roll, atol=1e-5, rtol=0)
    assert cls.rows[2]["patch_share"] == pytest.approx(float(ref_cls[2].sum()), abs=1e-4)
    one = analyze_video(clip, model, kind="cls", layer="blocks.1.attn", head=1, out=tmp_path / "head1.mp4", batch_size=4)
    torch.testing.assert_close(torch.from_numpy(np.load(one.npz)["maps"]), kept[1][:, 1, 0, 1:].reshape(-1, 4, 4), atol=1e-5, rtol=0)
    with pytest.raises(VideoError, match="head 2 does not exist.*2 heads"):
        analyze_video(clip, model, kind="cls", head=2, out=tmp_path / "bad.mp4")
    with pytest.raises(VideoError, match="no separate heads"):
        analyze_video(clip, model, kind="rollout", head=0, out=tmp_path / "bad.mp4")
