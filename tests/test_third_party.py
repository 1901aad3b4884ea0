"""Capture on real third-party code, unmodified (test-only dependencies, never copied into the project).

Every captured map is compared with the module's own intermediate tensor, taken from a separate forward
of the same module on the same input (an op recorder sees each sigmoid / softmax output). Modules whose
attention cannot be drawn exactly must produce no record and say why (``cap.seen``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import attnviz

fca = pytest.importorskip("fightingcv_attention.attention", reason="pip install fightingcv-attention (test extra)")
pytest.importorskip("einops")


class OpRecorder(TorchFunctionMode):
    """Records the outputs of ops by name during one forward: the module's own intermediate tensors."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names
        self.out: list[tuple[str, torch.Tensor]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        res = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name in self.names and isinstance(res, torch.Tensor):
            self.out.append((name, res.detach().clone()))
        return res


def reference(model: nn.Module, x: torch.Tensor, names: set[str] = frozenset({"sigmoid", "sigmoid_", "softmax", "hardsigmoid"})) -> list[torch.Tensor]:
    rec = OpRecorder(set(names))
    with torch.no_grad(), rec:
        model(x.clone())
    return [t for _, t in rec.out]


def captured(model: nn.Module, x: torch.Tensor) -> attnviz.Capture:
    with torch.no_grad(), attnviz.capture(model) as cap:
        model(x.clone())
    return cap


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.float(), b.float(), atol=1e-5, rtol=1e-5)


def by_kind(cap: attnviz.Capture, kind: str) -> list[Any]:
    return [r for r in cap.records.values() if r.kind == kind]


def build(mod: str, cls: str, **kw: Any) -> nn.Module:
    import importlib

    torch.manual_seed(0)
    m = getattr(importlib.import_module(f"fightingcv_attention.attention.{mod}"), cls)(**kw).eval()
    for p in m.parameters():  # away from zero-initialised identities so every map is non-trivial
        with torch.no_grad():
            p.add_(torch.randn_like(p) * 0.05)
    return m


X = torch.randn(2, 32, 8, 6)


def test_se() -> None:
    m = build("SEAttention", "SEAttention", channel=32, reduction=8)
    (ref,) = reference(m, X)
    cap = captured(m, X)
    (g,) = by_kind(cap, "channel")
    close(g.weights, ref.reshape(2, 32))


def test_cbam() -> None:
    m = build("CBAM", "CBAMBlock", channel=32, reduction=8, kernel_size=7)
    ca, sa = reference(m, X)
    cap = captured(m, X)
    (g,), (s,) = by_kind(cap, "channel"), by_kind(cap, "spatial")
    close(g.weights, ca.reshape(2, 32))
    close(s.mask, sa[:, 0])


def test_bam_full_gate_is_its_channel_mean() -> None:
    m = build("BAM", "BAMBlock", channel=32, reduction=8, dia_val=1)
    (w,) = reference(m, X)
    cap = captured(m, X)
    (s,) = by_kind(cap, "element_gate")  # σ(channel + spatial) varies over both: a per-element gate
    close(s.gate, w)
    close(s.mask, w.mean(1))  # its channel mean, said so
    assert "channel mean" in s.note
    # with its default dilation the spatial branch shrinks a 7×7 map to 1×1, broadcast back: a channel gate
    m = build("BAM", "BAMBlock", channel=32, reduction=8)
    x = torch.randn(2, 32, 7, 7)
    (w,) = reference(m, x)
    cap = captured(m, x)
    assert not by_kind(cap, "spatial")
    close(by_kind(cap, "channel")[0].weights, w[:, :, 0, 0])


def test_eca() -> None:
    m = build("ECAAttention", "ECAAttention", kernel_size=3)
    (ref,) = reference(m, X)
    (g,) = by_kind(captured(m, X), "channel")
    close(g.weights, ref.reshape(2, 32))


def test_coordinate_attention_has_h_and_w_factors() -> None:
    m = build("CoordAttention", "CoordAtt", inp=32, oup=32, reduction=8)
    a_h, a_w = reference(m, X)
    cap = captured(m, X)
    gates = {r.axes: r for r in by_kind(cap, "axis_gate")}
    close(gates[("c", "h")].weights, a_h[..., 0])
    close(gates[("c", "w")].weights, a_w[:, :, 0, :])
    assert not by_kind(cap, "channel") and not by_kind(cap, "spatial")


def test_spatial_group_enhance_groups_folded_into_the_batch() -> None:
    m = build("SGE", "SpatialGroupEnhance", groups=4)
    (ref,) = reference(m, X)
    (s,) = by_kind(captured(m, X), "element_gate")  # one gate per group and position
    close(s.gate, ref.view(2, 4, 8, 6))
    close(s.mask, ref.view(2, 4, 8, 6).mean(1))


def test_shuffle_attention() -> None:
    m = build("ShuffleAttention", "ShuffleAttention", channel=32, G=4)
    ch, sp = reference(m, X)
    cap = captured(m, X)
    (g,), (s,) = by_kind(cap, "channel"), by_kind(cap, "element_gate")  # the spatial half gates every channel and position
    close(g.weights, ch.reshape(2, -1))  # the channel half of every group
    close(s.mask, sp.view(2, 4, -1, 8, 6).mean((1, 2)))
    close(s.gate.mean(1), s.mask)


def test_triplet_attention_in_place_sigmoid() -> None:
    m = build("TripletAttention", "TripletAttention")
    cw, hc, hw = reference(m, X)
    cap = captured(m, X)
    gates = {r.axes: r for r in by_kind(cap, "axis_gate")}
    close(gates[("c", "w")].weights, cw[:, 0])  # (B, C, W)
    close(gates[("c", "h")].weights, hc[:, 0].permute(0, 2, 1))  # (B, H, C) -> (B, C, H)
    (s,) = by_kind(cap, "spatial")
    close(s.mask, hw[:, 0])


def test_danet_position_and_channel_attention() -> None:
    m = build("DANet", "DAModule", d_model=512, kernel_size=3, H=7, W=7)
    x = torch.randn(2, 512, 7, 7)
    pos, chan = reference(m, x, {"softmax"})
    cap = captured(m, x)
    (a,) = by_kind(cap, "affinity")
    (c,) = by_kind(cap, "channel_affinity")
    assert a.query_hw == (7, 7) and a.key_hw == (7, 7) and a.queries is not None  # lazy rows from the queries and keys
    for y, xx in ((0, 0), (3, 5), (6, 2)):
        close(a.row(y, xx, batch=1), pos[1, 0, y * 7 + xx].reshape(7, 7))
    close(c.matrix, chan[:, 0])  # (B, C, C) although C = 512 ≠ 49 = H·W here; with C = H·W it is still channels
    m2 = build("DANet", "ChannelAttentionModule", d_model=49, kernel_size=3, H=7, W=7)  # C == H·W: still channel affinity
    x2 = torch.randn(2, 49, 7, 7)
    (ref2,) = reference(m2, x2, {"softmax"})
    cap2 = captured(m2, x2)
    assert not by_kind(cap2, "affinity")
    close(by_kind(cap2, "channel_affinity")[0].matrix, ref2[:, 0])


def test_polarized_self_attention() -> None:
    for cls in ("ParallelPolarizedSelfAttention", "SequentialPolarizedSelfAttention"):
        m = build("PolarizedSelfAttention", cls, channel=32)
        ch_sm, ch_sig, sp_sm, sp_sig = reference(m, X)
        cap = captured(m, X)
        spatial = by_kind(cap, "spatial")
        channel = by_kind(cap, "channel")
        assert len(spatial) == 2 and len(channel) == 2, list(cap.records)
        close(spatial[0].mask, ch_sm.view(2, 8, 6))  # softmax pooling over positions
        close(channel[0].weights, ch_sig.reshape(2, 32))
        close(channel[1].weights, sp_sm.reshape(2, 16))  # softmax weights over the channels they pool
        close(spatial[1].mask, sp_sig[:, 0])


def test_contextual_transformer_per_channel_softmax() -> None:
    m = build("CoTAttention", "CoTAttention", dim=32, kernel_size=3)
    (ref,) = reference(m, X, {"softmax"})
    (s,) = by_kind(captured(m, X), "element_gate")  # a softmax over positions for every channel: per-element weights
    close(s.gate, ref.view(2, 32, 8, 6))
    close(s.mask, ref.view(2, 32, 8, 6).mean(1))


def test_selective_kernel_branch_axis_first() -> None:
    m = build("SKAttention", "SKAttention", channel=32, reduction=8, L=8, kernels=[1, 3])
    (ref,) = reference(m, X, {"softmax"})
    (b,) = by_kind(captured(m, X), "branch")
    close(b.weights, ref.permute(1, 0, 2, 3, 4).reshape(2, 2, 32))  # (M, B, C, 1, 1) softmax over M


def test_psa_scale_branches() -> None:
    m = build("PSA", "PSA", channel=32, reduction=4, S=4)
    refs = reference(m, X, {"softmax"})
    cap = captured(m, X)
    (b,) = by_kind(cap, "branch")  # softmax across the S scale groups of the channels
    close(b.weights, refs[-1][:, :, :, 0, 0])  # (B, S, C/S)


def test_split_attention_s2() -> None:
    m = build("S2Attention", "S2Attention", channels=512)
    x = torch.randn(1, 512, 4, 4)
    (ref,) = reference(m, x, {"softmax"})
    (b,) = by_kind(captured(m, x), "branch")
    close(b.weights, ref)  # (B, k, C)


def test_simam_and_parnet() -> None:
    m = build("SimAM", "SimAM")
    (ref,) = reference(m, X)
    (s,) = by_kind(captured(m, X), "element_gate")  # a per-element gate, not a spatial mask
    close(s.gate, ref)
    close(s.mask, ref.mean(1))  # its channel mean, the view that is drawn
    assert "channel mean" in s.note
    m = build("ParNetAttention", "ParNetAttention", channel=32)
    (ref,) = reference(m, X)
    (g,) = by_kind(captured(m, X), "channel")
    close(g.weights, ref.reshape(2, 32))


def test_criss_cross_pure_pytorch() -> None:
    m = build("CrissCrossAttention", "CrissCrossAttention", in_dim=32)
    (ref,) = reference(m, X, {"softmax"})
    (c,) = by_kind(captured(m, X), "criss_cross")
    close(c.attention, ref)
    assert c.row(3, 2).sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("mod,cls,kw,x", [
    ("A2Atttention", "DoubleAttention", {"in_channels": 32, "c_m": 16, "c_n": 16}, X),  # implicit softmax dim: over the batch
    ("HaloAttention", "HaloAttention", {"dim": 32, "block_size": 2, "halo_size": 1, "dim_head": 8, "heads": 2}, torch.randn(2, 32, 8, 8)),
])
def test_not_drawable_is_said_not_drawn(mod: str, cls: str, kw: dict[str, Any], x: torch.Tensor) -> None:
    m = build(mod, cls, **kw)
    cap = captured(m, x)
    assert not [r for r in cap.records.values() if r.kind in ("affinity", "spatial", "regions")], list(cap.records)
    assert cap.seen and all(s.reason for s in cap.seen)


def test_models_without_attention_give_no_records() -> None:
    import torchvision

    for m in (torchvision.models.resnet18(), torchvision.models.mobilenet_v2()):
        cap = captured(m.eval(), torch.randn(1, 3, 64, 64))
        assert cap.records == {}


# ---------------------------------------------------------------------------------------- EfficientNet-PyTorch
def test_lukemelas_efficientnet_se_on_expanded_channels() -> None:
    ep = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    m = ep.EfficientNet.from_name("efficientnet-b0").eval()
    m.set_swish(memory_efficient=False)
    x = torch.randn(1, 3, 64, 64)
    refs = [t for t in reference(m, x, {"sigmoid"}) if t.ndim == 4 and t.shape[-1] == 1]  # the SE gates (B, C, 1, 1)
    cap = captured(m, x)
    gates = by_kind(cap, "channel")
    assert len(gates) == 16 == len(refs)  # one SE per MBConv block, on the expanded channels
    for g, r in zip(gates, refs):
        close(g.weights, r.reshape(1, -1))
    m.set_swish(memory_efficient=True)  # the autograd-Function Swish: still every gate
    assert len(by_kind(captured(m, x), "channel")) == 16


# ---------------------------------------------------------------------------------------- segmentation-models-pytorch
def test_smp_unet_scse() -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    m = smp.Unet("resnet18", encoder_weights=None, decoder_attention_type="scse", classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    refs = reference(m, x, {"sigmoid"})
    cap = captured(m, x)
    chans = [r for r in refs if r.shape[-1] == 1]
    spats = [r for r in refs if r.shape[1] == 1]
    assert len(by_kind(cap, "channel")) == len(chans) == len(by_kind(cap, "spatial")) == len(spats) == 9  # cSE and sSE of every scSE
    assert not cap.seen
    for g, r in zip(by_kind(cap, "channel"), chans):
        close(g.weights, r.reshape(1, -1))
    for s, r in zip(by_kind(cap, "spatial"), spats):
        close(s.mask, r[:, 0])
    _ = Callable
