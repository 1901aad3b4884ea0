"""Published mmsegmentation checkpoints: our definitions give mmsegmentation's own logits, capture reads its heads.

mmsegmentation, mmcv-lite and mmengine are test-only dependencies (pure-Python wheels; ``mmcv._ext`` is a
stand-in from the conftest). Each head is built *there* with random weights (and non-trivial norms and
γ), saved in the published checkpoint layout, loaded through our loader, and must give the same logits.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import randomize_bn
from test_third_party import OpRecorder, close

mmseg = pytest.importorskip("mmseg", reason="pip install mmsegmentation mmcv-lite mmengine (test extra)")

from attnviz.models.mmseg import MMSEG, build_mmseg, convert, load_mmseg, read_checkpoint  # noqa: E402

BN = dict(type="BN", requires_grad=True)
LOGIT_TOL = 1e-5  # relative to max |reference logit|: see assert_same_logits


def mm_config(method: str, depth: int = 50, classes: int = 19) -> dict[str, Any]:
    backbone = dict(type="ResNetV1c", depth=depth, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                    norm_cfg=BN, norm_eval=False, style="pytorch", contract_dilation=True)
    common = dict(in_channels=2048, in_index=3, channels=512, dropout_ratio=0.1, num_classes=classes, norm_cfg=BN, align_corners=False)
    aux = dict(type="FCNHead", in_channels=1024, in_index=2, channels=256, num_convs=1, concat_input=False, dropout_ratio=0.1,
               num_classes=classes, norm_cfg=BN, align_corners=False)
    heads = {
        "nonlocal": dict(type="NLHead", reduction=2, use_scale=True, mode="embedded_gaussian", **common),
        "ccnet": dict(type="CCHead", recurrence=2, **common),
        "danet": dict(type="DAHead", pam_channels=64, **common),
        "gcnet": dict(type="GCHead", ratio=1 / 4.0, pooling_type="att", fusion_types=("channel_add",), **common),
    }
    if method == "ocrnet":
        return dict(type="CascadeEncoderDecoder", num_stages=2, backbone=backbone,
                    decode_head=[aux, dict(type="OCRHead", ocr_channels=256, **{**common, "channels": 512})],
                    train_cfg=dict(), test_cfg=dict(mode="whole"))
    return dict(type="EncoderDecoder", backbone=backbone, decode_head=heads[method], auxiliary_head=aux, train_cfg=dict(), test_cfg=dict(mode="whole"))


def mm_model(method: str, depth: int = 50) -> torch.nn.Module:
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    torch.manual_seed(0)
    m = MODELS.build(copy.deepcopy(mm_config(method, depth))).eval()
    randomize_bn(m)
    with torch.no_grad():  # mmseg starts γ at 0 and the Non-Local output norm at 0: make the attention matter
        for name, p in m.named_parameters():
            if name.endswith("gamma.scale") or "conv_out.bn.weight" in name or "channel_add_conv.3" in name:
                p.copy_(torch.randn_like(p) * 0.5 + 1.0)
    return m


def mm_logits(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    metas = [dict(img_shape=tuple(x.shape[-2:]), ori_shape=tuple(x.shape[-2:]), pad_shape=tuple(x.shape[-2:]))] * x.shape[0]
    with torch.no_grad():
        return m.encode_decode(x, metas)


def assert_same_logits(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Our logits equal mmsegmentation's up to float32 summation order: within 1e-5 × max |ref|.

    Why relative: float32 sums through ResNet-50 and a head come out in a different order on another CPU
    or thread count, and the error scales with the logits (GCNet's reach |136| here). Measured on this
    machine at 1 and 2 threads: at most 5.0e-7 × max |ref| (0 for the other heads); a fresh machine saw
    1.07e-4 absolute on GCNet (7.9e-7 relative). The bound is 1e-5 × max |ref|, 20× above that and far
    below what a wrong definition gives: :func:`test_a_broken_definition_fails_the_logit_check` swaps two
    BatchNorms' statistics or drops γ and must fail it (it moves logits by ≥ 1e-3 × max |ref|).
    """
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=LOGIT_TOL * float(ref.abs().max()))


def save_published(m: torch.nn.Module, path: Path) -> Path:
    torch.save({"meta": {"mmseg_version": "1.2.2", "CLASSES": tuple(f"c{i}" for i in range(19))}, "state_dict": m.state_dict()}, path)
    return path


@pytest.mark.parametrize("method", ["nonlocal", "ccnet", "danet", "gcnet", "ocrnet"])
def test_our_definition_gives_mmsegs_logits(method: str, tmp_path: Path) -> None:
    m = mm_model(method)
    x = torch.randn(2, 3, 64, 96)
    ref = mm_logits(m, x)
    ckpt = save_published(m, tmp_path / f"{method}.pth")
    ours = build_mmseg(method, 50)
    state = convert(read_checkpoint(ckpt))
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith("num_batches_tracked")]
    with torch.no_grad():
        out = ours.eval()(x)
    assert_same_logits(out, ref)


BREAKS = [("nonlocal", "swap_bn"), ("gcnet", "swap_bn"), ("ocrnet", "swap_bn"), ("ccnet", "no_gamma"), ("danet", "no_gamma")]


@pytest.mark.parametrize(("method", "how"), BREAKS)
def test_a_broken_definition_fails_the_logit_check(method: str, how: str, tmp_path: Path) -> None:
    """The relative tolerance still catches a wrong layer: two BatchNorms with swapped statistics, or a γ left at 0."""
    m = mm_model(method)
    x = torch.randn(2, 3, 64, 96)
    ref = mm_logits(m, x)
    ours = build_mmseg(method, 50)
    ours.load_state_dict(convert(read_checkpoint(save_published(m, tmp_path / f"{method}.pth"))), strict=False)
    with torch.no_grad():
        if how == "swap_bn":  # layer4's first block: bn1 and bn2 both have 512 channels
            a, b = ours.backbone.layer4[0].bn1, ours.backbone.layer4[0].bn2
            for k in ("running_mean", "running_var"):
                ta, tb = getattr(a, k).clone(), getattr(b, k).clone()
                getattr(a, k).copy_(tb)
                getattr(b, k).copy_(ta)
        else:
            for name, p in ours.named_parameters():
                if name.endswith("gamma"):
                    p.zero_()
        out = ours.eval()(x)
    moved = float((out - ref).abs().max()) / float(ref.abs().max())
    assert moved > 100 * LOGIT_TOL, moved
    with pytest.raises(AssertionError):
        assert_same_logits(out, ref)


def test_registry_loader_and_depth_101(tmp_path: Path) -> None:
    m = mm_model("ccnet", 101)
    x = torch.randn(1, 3, 64, 64)
    ckpt = save_published(m, tmp_path / "cc101.pth")
    ours = load_mmseg("ccnet_r101_d8_cityscapes", ckpt)
    assert ours.card["class_names"][0] == "road" and ours.card["miou_published"] == MMSEG["ccnet_r101_d8_cityscapes"].miou
    with torch.no_grad():
        assert_same_logits(ours(x), mm_logits(m, x))


def test_checkpoint_with_objects_in_its_metadata_is_read_without_unpickling_them(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self) -> Any:
            return (exec, ("import os; os.environ['ATTNVIZ_PWNED'] = '1'",))

    m = build_mmseg("gcnet", 50)
    path = tmp_path / "evil.pth"
    torch.save({"meta": {"config": Evil()}, "state_dict": {"backbone.stem.0.weight": m.state_dict()["backbone.stem.0.weight"]}}, path,
               pickle_protocol=pickle.DEFAULT_PROTOCOL)
    import os

    state = read_checkpoint(path)
    assert "ATTNVIZ_PWNED" not in os.environ
    assert torch.equal(state["backbone.stem.0.weight"], m.state_dict()["backbone.stem.0.weight"])
    with pytest.raises(KeyError, match="no rule maps"):
        convert({"something.else": torch.zeros(1)})


@pytest.mark.parametrize("method,kind", [("nonlocal", "affinity"), ("ccnet", "criss_cross"), ("danet", "affinity"), ("gcnet", "spatial"),
                                         ("ocrnet", "regions")])
def test_capture_reads_mmsegs_own_heads(method: str, kind: str) -> None:
    """Generic discovery on mmsegmentation's (mmcv's) own modules: found, exact."""
    import attnviz

    m = mm_model(method)
    x = torch.randn(1, 3, 64, 64)
    rec = OpRecorder({"softmax"})
    with torch.no_grad(), rec:
        mm_logits(m, x)
    softmaxes = [t for _, t in rec.out]
    with torch.no_grad(), attnviz.capture(m) as cap:
        mm_logits(m, x)
    found = [r for r in cap.records.values() if r.kind == kind]
    assert found, (list(cap.records), [s.as_dict() for s in cap.seen])
    r = found[0]
    if kind == "affinity":  # the NL / PAM softmax (1, N, N): rows computed lazily from queries and keys
        sm = next(t for t in softmaxes if t.shape[-1] == 64 and t.shape[-2] == 64)
        for y, xx in ((0, 0), (5, 6)):
            close(r.row(y, xx), sm.reshape(1, 64, 64)[0, y * 8 + xx].reshape(8, 8))
    elif kind == "criss_cross":
        close(r.attention, softmaxes[0])
        assert len(found) == 2  # both loops
    elif kind == "spatial":
        close(r.mask, softmaxes[0].reshape(1, 8, 8))
    else:
        assert r.regions == 19 and r.query_hw == (8, 8)
        gather, pixel = softmaxes[0], softmaxes[1]
        close(r.region_maps, gather.reshape(1, 19, 8, 8))
        close(r.pixel_weights, pixel)
    if method == "danet":
        (cam,) = [r for r in cap.records.values() if r.kind == "channel_affinity"]
        close(cam.matrix, next(t for t in softmaxes if t.shape[-1] == 512))


@pytest.mark.parametrize(("typed", "ours"), [
    ("gcnet_r50_d8_cityscapes", "gc_r50_d8_cityscapes"),  # mmsegmentation's method name
    ("ocrnet_r101_d8_cityscapes", "ocr_r101_d8_cityscapes"),
    ("gcnet_r50-d8_4xb2-80k_cityscapes-512x1024", "gc_r50_d8_cityscapes"),  # its 1.x config name
    ("nonlocal_r101-d8_512x512_160k_ade20k", "nonlocal_r101_d8_ade20k"),  # its 0.x checkpoint folder
    ("ccnet_r50_d8_ade20k", "ccnet_r50_d8_ade20k"),
])
def test_mmsegs_names_are_aliases(typed: str, ours: str) -> None:
    from attnviz.analysis import Catalog

    cat = Catalog.from_registry(torch.device("cpu"))
    assert cat.entry(typed).name == ours


def test_another_schedule_is_not_silently_our_checkpoint() -> None:
    """mmsegmentation's 40k GCNet is another checkpoint than our 80k entry: refused, with the entry we do offer named."""
    from attnviz.analysis import Catalog, UserError

    cat = Catalog.from_registry(torch.device("cpu"))
    with pytest.raises(UserError, match=r"another mmsegmentation checkpoint.*gc_r50_d8_cityscapes.*gcnet_r50-d8_4xb2-80k"):
        cat.entry("gcnet_r50-d8_4xb2-40k_cityscapes-512x1024")
    with pytest.raises(UserError, match="Unknown model 'nope'"):
        cat.entry("nope")


@pytest.mark.parametrize("sub_sample", [False, True])
def test_concatenation_non_local_rows_are_the_modules_own(sub_sample: bool) -> None:
    """mmcv's Non-Local in ``concatenation`` mode: f = ReLU(W·[θ_i, φ_j]) (θ repeated over the keys, φ over the queries),
    rows f / N. Every captured row equals what the module computed (read at ``concat_project``), on the key grid φ uses."""
    from mmcv.cnn import NonLocal2d

    import attnviz

    torch.manual_seed(0)
    m = NonLocal2d(16, mode="concatenation", sub_sample=sub_sample).eval()
    seen: dict[str, torch.Tensor] = {}
    m.concat_project.register_forward_hook(lambda mod, args, out: seen.__setitem__("f", out.detach().clone()))
    with torch.no_grad(), attnviz.capture(m) as cap:
        m(torch.randn(2, 16, 6, 7))
    rec = cap.records["model"]
    assert rec.kind == "affinity" and rec.normalize == "mean" and rec.query_hw == (6, 7)
    assert rec.key_hw == ((3, 3) if sub_sample else (6, 7))
    f = seen["f"].flatten(1, 2)  # (B, N, M): query i = y·7 + x, key j on φ's grid
    rows = f / f.shape[-1]
    for b in range(2):
        for y in range(6):
            for x in range(7):
                torch.testing.assert_close(rec.row(y, x, batch=b).flatten(), rows[b, y * 7 + x], atol=1e-6 * float(rows.abs().max()), rtol=0)


class SoftmaxRecorder(torch.overrides.TorchFunctionMode):
    """Keeps the output of every softmax (the module's own attention weights), independently of attnviz."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") == "softmax":
            self.out.append(out.detach().clone())
        return out


@pytest.mark.parametrize("block", ["APNB", "AFNB"])
def test_ann_pyramid_attention_is_pixel_to_region_attention_over_the_pooled_cells(block: str) -> None:
    """ANN's asymmetric non-local blocks: each pixel attends over 110 pyramid cells (adaptive average pools 1, 3, 6, 8 of the
    key features). Captured as pixel → region attention: the weights are the module's softmax, and each region is exactly
    the area its cell averages (the pyramid applied to one-hot maps, in the test)."""
    from mmseg.models.decode_heads import ann_head

    import attnviz

    torch.manual_seed(0)
    kw = dict(out_channels=32, query_scales=(1,), key_pool_scales=(1, 3, 6, 8), conv_cfg=None, norm_cfg=None, act_cfg=dict(type="ReLU"))
    high = torch.randn(2, 32, 20, 24)
    if block == "APNB":
        m, args = ann_head.APNB(in_channels=32, channels=16, **kw).eval(), (high,)
    else:
        m, args = ann_head.AFNB(low_in_channels=16, high_in_channels=32, channels=16, **kw).eval(), (torch.randn(2, 16, 20, 24), high)
    rec_mode = SoftmaxRecorder()
    with torch.no_grad(), rec_mode:
        m(*args)
    with torch.no_grad(), attnviz.capture(m) as cap:
        m(*args)
    (name, rec), = cap.records.items()
    assert name == "stages.0" and rec.kind == "regions" and rec.query_hw == (20, 24) and rec.regions == 110
    weights = rec_mode.out[0]  # (B, 480, 110)
    onehot = torch.eye(20 * 24).view(20 * 24, 1, 20, 24)
    regions = m.stages[0].key_downsample(onehot)[:, 0].T.reshape(110, 20, 24)  # (K, H, W): each cell's weight on each position
    torch.testing.assert_close(rec.pixel_weights, weights, atol=1e-6, rtol=0)
    for b in range(2):
        torch.testing.assert_close(rec.region_maps[b], regions, atol=1e-6, rtol=0)
        for y, x in [(0, 0), (7, 13), (19, 23)]:
            expected = torch.einsum("k,khw->hw", weights[b, y * 24 + x], regions)
            torch.testing.assert_close(rec.pixel_map(y, x, batch=b), expected, atol=1e-6 * float(expected.max()), rtol=0)
