"""Every attention module: the captured map equals a brute-force recomputation from its weights."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_bn
from torch.nn import functional as F

import attnviz
from attnviz.modules import attn_names, create_attn

ATOL = 1e-5


def only(cap: attnviz.Capture, kind: str) -> list[attnviz.Record]:
    return [r for r in cap.records.values() if r.kind == kind]


def conv1x1(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1×1 convolution written as an einsum over channels."""
    w = conv.weight[:, :, 0, 0]
    out = torch.einsum("oc,bchw->bohw", w, x)
    return out if conv.bias is None else out + conv.bias[None, :, None, None]


def bn_eval(bn: torch.nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def run(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, attnviz.Capture]:
    module.eval()
    with torch.no_grad(), attnviz.capture(module) as cap:
        out = module(x)
    return out, cap


@pytest.mark.parametrize("name", attn_names())
def test_registry_builds_and_captures(name: str) -> None:
    m = create_attn(name, 16)
    x = torch.randn(2, 16, 8, 8)
    out, cap = run(m, x)
    assert out.shape[:2] == x.shape[:2]
    assert cap.records, f"{name} produced no record"
    for rec in cap.records.values():
        assert rec.source == "adapter"
        for t in rec.arrays().values():
            assert t.dtype == torch.float32 and t.device.type == "cpu"


def test_unknown_name_lists_valid() -> None:
    with pytest.raises(ValueError, match="valid names: .*cbam"):
        create_attn("nope", 8)


def test_se_gate() -> None:
    m = create_attn("se", 32)
    x = torch.randn(3, 32, 5, 7)
    out, cap = run(m, x)
    (rec,) = cap.records.values()
    s = x.mean((2, 3))
    z = torch.relu(s @ m.fc1.weight[:, :, 0, 0].T + m.fc1.bias)
    g = torch.sigmoid(z @ m.fc2.weight[:, :, 0, 0].T + m.fc2.bias)
    torch.testing.assert_close(rec.weights, g, atol=ATOL, rtol=0)
    torch.testing.assert_close(out, x * g[:, :, None, None], atol=ATOL, rtol=0)


def test_eca_gate() -> None:
    m = create_attn("eca", 64)
    x = torch.randn(2, 64, 4, 4)
    _, cap = run(m, x)
    (rec,) = cap.records.values()
    k = m.conv.weight[0, 0]
    pad = len(k) // 2
    y = F.pad(x.mean((2, 3)), (pad, pad))
    expected = torch.stack([sum(k[j] * y[:, c + j] for j in range(len(k))) for c in range(64)], 1)
    torch.testing.assert_close(rec.weights, torch.sigmoid(expected), atol=ATOL, rtol=0)


def test_cbam_channel_and_spatial() -> None:
    m = create_attn("cbam", 32)
    randomize_bn(m)
    x = torch.randn(2, 32, 9, 6)
    _, cap = run(m, x)
    ch, sp = only(cap, "channel")[0], only(cap, "spatial")[0]
    assert (ch.name, sp.name) == ("channel", "spatial")
    c = m.channel

    def mlp(v: torch.Tensor) -> torch.Tensor:
        return torch.relu(v @ c.fc1.weight[:, :, 0, 0].T) @ c.fc2.weight[:, :, 0, 0].T

    g = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))
    torch.testing.assert_close(ch.weights, g, atol=ATOL, rtol=0)
    y = x * g[:, :, None, None]
    pooled = torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)
    mask = torch.sigmoid(bn_eval(m.spatial.bn, F.conv2d(pooled, m.spatial.conv.weight, padding=3)))[:, 0]
    torch.testing.assert_close(sp.mask, mask, atol=ATOL, rtol=0)


def test_scse() -> None:
    m = create_attn("scse", 16)
    x = torch.randn(2, 16, 5, 5)
    out, cap = run(m, x)
    sse = only(cap, "spatial")[0]
    cse = only(cap, "channel")[0]
    mask = torch.sigmoid(conv1x1(m.sse.conv, x))[:, 0]
    torch.testing.assert_close(sse.mask, mask, atol=ATOL, rtol=0)
    torch.testing.assert_close(out, 0.5 * (x * cse.weights[:, :, None, None] + x * mask[:, None]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("fusion", ["add", "scale"])
def test_gc_context_mask(fusion: str) -> None:
    m = create_attn("gc", 16, fusion=fusion)
    x = torch.randn(2, 16, 6, 5)
    _, cap = run(m, x)
    rec = only(cap, "spatial")[0]
    logits = conv1x1(m.conv_mask, x).flatten(1)
    torch.testing.assert_close(rec.mask, torch.softmax(logits, 1).view(2, 6, 5), atol=ATOL, rtol=0)
    assert len(only(cap, "channel")) == (1 if fusion == "scale" else 0)


def test_sk_branch_weights() -> None:
    m = create_attn("sk", 16, num_branches=3)
    randomize_bn(m)
    x = torch.randn(2, 16, 6, 6)
    out, cap = run(m, x)
    (rec,) = cap.records.values()
    assert rec.weights.shape == (2, 3, 16)
    with torch.no_grad():
        feats = [b(x) for b in m.branches]
        s = sum(feats).mean((2, 3), keepdim=True)
        z = m.fc_select(m.fc_reduce(s)).view(2, 3, 16)
    w = torch.softmax(z, 1)
    torch.testing.assert_close(rec.weights, w, atol=ATOL, rtol=0)
    torch.testing.assert_close(rec.weights.sum(1), torch.ones(2, 16))
    expected = sum(w[:, i, :, None, None] * feats[i] for i in range(3))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def dense_nonlocal(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, N, M) affinity of a NonLocal2d from its weights."""
    q = conv1x1(m.theta, x).flatten(2).transpose(1, 2)
    k = conv1x1(m.phi[0], x)
    if len(m.phi) > 1:
        k = F.max_pool2d(k, 2)
    logits = q @ k.flatten(2)
    return torch.softmax(logits * m.scale, -1) if m.mode == "embedded_gaussian" else logits / logits.shape[-1]


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product"])
@pytest.mark.parametrize("sub_sample", [False, True])
def test_nonlocal_rows(mode: str, sub_sample: bool) -> None:
    m = attnviz.modules.NonLocal2d(16, mode=mode, sub_sample=sub_sample)
    x = torch.randn(2, 16, 8, 6)
    _, cap = run(m, x)
    (rec,) = cap.records.values()
    assert rec.query_hw == (8, 6) and rec.key_hw == ((4, 3) if sub_sample else (8, 6))
    dense = dense_nonlocal(m, x)
    for b, y, xx in [(0, 0, 0), (1, 7, 5), (0, 3, 2)]:
        torch.testing.assert_close(rec.row(y, xx, batch=b), dense[b, y * 6 + xx].view(rec.key_hw), atol=ATOL, rtol=0)
    assert rec.queries.shape[-2] == 48 and rec.matrix is None  # lazy: no N×N matrix kept


def test_nonlocal_rejects_bad_query() -> None:
    m = attnviz.modules.NonLocal2d(8)
    _, cap = run(m, torch.randn(1, 8, 4, 4))
    (rec,) = cap.records.values()
    with pytest.raises(IndexError, match="outside"):
        rec.row(4, 0)


def dense_criss_cross(cca: torch.nn.Module, x: torch.Tensor, b: int = 0) -> torch.Tensor:
    """(HW, HW) criss-cross matrix of one sample, built position by position."""
    q, k = conv1x1(cca.query, x)[b], conv1x1(cca.key, x)[b]
    _, h, w = q.shape
    a = torch.zeros(h * w, h * w)
    for y in range(h):
        for xx in range(w):
            keys = [(hh, xx) for hh in range(h) if hh != y] + [(y, ww) for ww in range(w)]
            e = torch.stack([q[:, y, xx] @ k[:, i, j] for i, j in keys])
            p = torch.softmax(e, 0)
            for (i, j), v in zip(keys, p):
                a[y * w + xx, i * w + j] += v
    return a


def test_criss_cross_rows_reach_and_output() -> None:
    m = attnviz.modules.RecurrentCrissCross(16, recurrence=2)
    with torch.no_grad():
        m.cca.gamma.fill_(0.7)
    x = torch.randn(2, 16, 6, 5)
    out, cap = run(m, x)
    first, second = cap.records["cca"], cap.records["cca#2"]
    a1 = dense_criss_cross(m.cca, x, b=1)
    x1 = x[1] + 0.7 * torch.einsum("nm,cm->cn", a1, conv1x1(m.cca.value, x)[1].flatten(1)).view(16, 6, 5)
    a2 = dense_criss_cross(m.cca, x1[None], b=0)
    for y, xx in [(0, 0), (5, 4), (2, 3)]:
        r = first.row(y, xx, batch=1)
        torch.testing.assert_close(r, a1[y * 5 + xx].view(6, 5), atol=ATOL, rtol=0)
        off_cross = r.clone()
        off_cross[y, :] = 0
        off_cross[:, xx] = 0
        assert off_cross.abs().max() == 0 and abs(r.sum() - 1) < 1e-5
        torch.testing.assert_close(second.row(y, xx, batch=1), a2[y * 5 + xx].view(6, 5), atol=ATOL, rtol=0)
        reach = attnviz.criss_cross_reach(first, second, y, xx, batch=1)
        torch.testing.assert_close(reach, (a2[y * 5 + xx] @ a1).view(6, 5), atol=ATOL, rtol=0)
        assert abs(reach.sum() - 1) < 1e-5
    # the module itself computes exactly what the dense matrices say (output of sample 1)
    x2 = x1 + 0.7 * torch.einsum("nm,cm->cn", a2, conv1x1(m.cca.value, x1[None])[0].flatten(1)).view(16, 6, 5)
    torch.testing.assert_close(out[1], x2, atol=1e-5 * float(x2.abs().max()), rtol=0)  # float32 sums: relative to the output's scale


def test_danet_pam_and_cam() -> None:
    m = create_attn("danet", 16)
    x = torch.randn(2, 16, 5, 4)
    _, cap = run(m, x)
    pam, cam = cap.records["pam"], cap.records["cam"]
    q = conv1x1(m.pam.query, x).flatten(2).transpose(1, 2)
    k = conv1x1(m.pam.key, x).flatten(2)
    dense = torch.softmax(q @ k, -1)
    for y, xx in [(0, 0), (4, 3), (2, 1)]:
        torch.testing.assert_close(pam.row(y, xx, batch=1), dense[1, y * 4 + xx].view(5, 4), atol=ATOL, rtol=0)
    f = x.flatten(2)
    e = f @ f.transpose(1, 2)
    torch.testing.assert_close(cam.matrix, torch.softmax(e.amax(-1, keepdim=True) - e, -1), atol=ATOL, rtol=0)


@pytest.mark.parametrize("bounded", [False, True])
def test_stn_grid_from_theta(bounded: bool) -> None:
    m = attnviz.modules.SpatialTransformer(3, out_size=(6, 8), bounded=bounded)
    with torch.no_grad():
        m.head.fc.weight.normal_(0, 0.3)
    x = torch.randn(2, 3, 12, 10)
    out, cap = run(m, x)
    (rec,) = cap.records.values()
    assert rec.theta.shape == (2, 2, 3) and rec.grid.shape == (2, 6, 8, 2) and rec.input_hw == (12, 10)
    ho, wo = 6, 8
    xs = (2 * torch.arange(wo) + 1) / wo - 1
    ys = (2 * torch.arange(ho) + 1) / ho - 1
    base = torch.stack([xs.expand(ho, wo), ys[:, None].expand(ho, wo), torch.ones(ho, wo)], -1)  # (Ho, Wo, 3)
    for b in range(2):
        torch.testing.assert_close(rec.grid[b], base @ rec.theta[b].T, atol=ATOL, rtol=0)
    torch.testing.assert_close(out, F.grid_sample(x, rec.grid, align_corners=False), atol=ATOL, rtol=0)
    if bounded:
        scale = torch.linalg.det(rec.theta[:, :, :2]).sqrt()
        assert ((scale >= 0.2 - 1e-5) & (scale <= 1 + 1e-5)).all()


def test_stn_starts_as_identity() -> None:
    m = attnviz.modules.SpatialTransformer(3)
    x = torch.randn(1, 3, 16, 16)
    out, cap = run(m, x)
    (rec,) = cap.records.values()
    torch.testing.assert_close(rec.theta[0], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_stn_map_localizer_soft_argmax_window() -> None:
    """The map localiser's window: centred at scale ≈ 0.92 at initialisation; then its centre is the soft-argmax of the
    cell scores and its sides lie in [0.2, 1] independently (zoom in, never out), as the grid the capture records."""
    m = attnviz.modules.SpatialTransformer(3, localizer="map").eval()
    x = torch.randn(2, 3, 64, 48)
    _, cap = run(m, x)
    (rec,) = cap.records.values()
    s0 = 0.2 + 0.8 * torch.sigmoid(torch.tensor(2.2))
    torch.testing.assert_close(rec.theta, torch.tensor([[s0, 0, 0], [0, s0, 0]]).expand(2, 2, 3), atol=1e-6, rtol=0)
    with torch.no_grad():
        m.head.score.weight.normal_(0, 1.0)
        m.head.size.weight.normal_(0, 3.0)
    out, cap = run(m, x)
    (rec,) = cap.records.values()
    feats = m.localization(x)  # (2, C, 16, 12)
    p = torch.softmax(m.head.score(feats).flatten(1), 1).view(2, 16, 12)
    cx = (p.sum(1) * ((torch.arange(12) + 0.5) / 12 * 2 - 1)).sum(1)
    cy = (p.sum(2) * ((torch.arange(16) + 0.5) / 16 * 2 - 1)).sum(1)
    torch.testing.assert_close(rec.theta[:, :, 2], torch.stack([cx, cy], 1), atol=1e-5, rtol=0)
    sides = rec.theta[:, :, :2].diagonal(dim1=1, dim2=2)
    assert ((sides >= 0.2) & (sides <= 1)).all() and rec.theta[:, 0, 1].abs().max() == 0
    assert not torch.allclose(sides[:, 0], sides[:, 1])  # anisotropic
    torch.testing.assert_close(out, F.grid_sample(x, rec.grid, align_corners=False), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="localizer"):
        attnviz.modules.SpatialTransformer(3, localizer="grid")
