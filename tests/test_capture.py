"""The hook manager: third-party adapters, counts, generic discovery, hook hygiene, robustness."""

from __future__ import annotations

import sys
import threading

import pytest
import timm
import torch
import torchvision
from conftest import in_threads, randomize_bn
from torch import nn
from torch.nn import functional as F

import attnviz
from attnviz.modules import criss_cross_logits

ATOL = 1e-5


def kinds(cap: attnviz.Capture) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in cap.records.values():
        out[r.kind] = out.get(r.kind, 0) + 1
    return out


def run(model: nn.Module, x: torch.Tensor, **kw: str) -> attnviz.Capture:
    model.eval()
    with torch.no_grad(), attnviz.capture(model, **kw) as cap:
        model(x)
    return cap


# ---- counts on real architectures ----------------------------------------------------------------
def test_efficientnet_b0_has_16_se_gates() -> None:
    cap = run(torchvision.models.efficientnet_b0(), torch.randn(1, 3, 64, 64))
    assert kinds(cap) == {"channel": 16}
    assert all(r.module_type == "SqueezeExcitation" and r.source == "adapter" for r in cap.records.values())


def test_mobilenet_v3_hardsigmoid_gates() -> None:
    m = torchvision.models.mobilenet_v3_small()
    cap = run(m, torch.randn(1, 3, 64, 64))
    n_se = sum(isinstance(x, torchvision.ops.SqueezeExcitation) for x in m.modules())
    assert n_se > 0 and kinds(cap) == {"channel": n_se}


def test_regnet_y_one_gate_per_block() -> None:
    m = torchvision.models.regnet_y_400mf()
    cap = run(m, torch.randn(1, 3, 64, 64))
    blocks = [x for x in m.modules() if type(x).__name__ == "ResBottleneckBlock"]
    assert len(blocks) == 16 and kinds(cap) == {"channel": len(blocks)}


def test_timm_resnet18_cbam_8_channel_8_spatial() -> None:
    m = timm.create_model("resnet18", pretrained=False, block_args=dict(attn_layer="cbam"))
    assert kinds(run(m, torch.randn(1, 3, 64, 64))) == {"channel": 8, "spatial": 8}


@pytest.mark.parametrize("generic", ["auto", "all"])
@pytest.mark.parametrize("factory", [torchvision.models.resnet18, torchvision.models.mobilenet_v2])
def test_plain_cnns_give_no_records(factory: object, generic: str) -> None:
    assert run(factory(), torch.randn(1, 3, 64, 64), generic=generic).records == {}


# ---- timm / torchvision adapters are exact -------------------------------------------------------
@pytest.mark.parametrize("attn", ["se", "ese", "eca", "ceca", "cbam", "lcbam", "gc"])
def test_timm_gate_adapters_exact(attn: str) -> None:
    from timm.layers import create_attn

    m = create_attn(attn, 32)
    randomize_bn(m)
    x = torch.randn(2, 32, 6, 7)
    cap = run(m, x)
    assert cap.records
    # exactness: the module output equals x times the captured gates (applied in forward order)
    y = x
    for r in cap.records.values():
        if r.kind == "channel":
            y = y * r.weights[:, :, None, None]
        elif r.kind == "spatial" and attn != "gc":
            y = y * r.mask[:, None]
    if attn == "gc":
        rec = next(r for r in cap.records.values() if r.kind == "spatial")
        logits = m.conv_attn(x).flatten(1)
        torch.testing.assert_close(rec.mask, torch.softmax(logits, 1).view(2, 6, 7), atol=ATOL, rtol=0)
    else:
        with torch.no_grad():
            torch.testing.assert_close(m(x), y, atol=ATOL, rtol=0)


def test_timm_nonlocal_rows_exact() -> None:
    from timm.layers import NonLocalAttn

    m = NonLocalAttn(32).eval()
    x = torch.randn(2, 32, 5, 6)
    (rec,) = run(m, x).records.values()
    with torch.no_grad():
        t = m.t(x).flatten(2).transpose(1, 2)
        p = m.p(x).flatten(2)
        dense = torch.softmax(t @ p * m.scale, -1)
    for y, xx in [(0, 0), (4, 5), (2, 3)]:
        torch.testing.assert_close(rec.row(y, xx, batch=1), dense[1, y * 6 + xx].view(5, 6), atol=ATOL, rtol=0)


def test_timm_selective_kernel_branches() -> None:
    from timm.layers import SelectiveKernel

    m = SelectiveKernel(16, 16)
    randomize_bn(m)
    cap = run(m, torch.randn(2, 16, 8, 8))
    (rec,) = cap.records.values()
    assert rec.kind == "branch" and rec.weights.shape == (2, 2, 16)
    torch.testing.assert_close(rec.weights.sum(1), torch.ones(2, 16))


@pytest.mark.parametrize("scale_pos", [False, True])
def test_botnet_rows_equal_model_softmax(scale_pos: bool) -> None:
    from timm.layers.bottleneck_attn import BottleneckAttn

    m = BottleneckAttn(32, 32, feat_size=(5, 6), num_heads=4, scale_pos_embed=scale_pos).eval()
    with torch.no_grad():
        m.pos_embed.height_rel.normal_(0, 1.0)
        m.pos_embed.width_rel.normal_(0, 1.0)
    x = torch.randn(2, 32, 5, 6)
    (rec,) = run(m, x).records.values()
    assert rec.heads == 4 and rec.matrix is None
    with torch.no_grad():  # the module's own computation, with timm's own PosEmbedRel
        qkv = m.qkv(x)
        q, k, _ = torch.split(qkv, [m.dim_out_qk, m.dim_out_qk, m.dim_out_v], dim=1)
        q = q.reshape(2 * 4, m.dim_head_qk, -1).transpose(-1, -2)
        k = k.reshape(2 * 4, m.dim_head_qk, -1)
        if scale_pos:
            attn = ((q @ k + m.pos_embed(q)) * m.scale).softmax(-1)
        else:
            attn = ((q @ k) * m.scale + m.pos_embed(q)).softmax(-1)
        attn = attn.view(2, 4, 30, 30)
    for y, xx in [(0, 0), (4, 5), (2, 1), (3, 4)]:
        n = y * 6 + xx
        for h in range(4):
            torch.testing.assert_close(rec.row(y, xx, batch=1, head=h), attn[1, h, n].view(5, 6), atol=ATOL, rtol=0)
        torch.testing.assert_close(rec.row(y, xx, batch=1), attn[1, :, n].mean(0).view(5, 6), atol=ATOL, rtol=0)


def test_botnet26t_model() -> None:
    m = timm.create_model("botnet26t_256", pretrained=False)
    cap = run(m, torch.randn(1, 3, 256, 256))
    assert kinds(cap) == {"affinity": 3}


# ---- generic discovery ---------------------------------------------------------------------------
class PlainSE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, c // 4), nn.ReLU(), nn.Linear(c // 4, c), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = self.fc(F.adaptive_avg_pool2d(x, 1).view(b, c)).view(b, c, 1, 1)
        return x * y.expand_as(x)


class FunctionalCBAM(nn.Module):
    def __init__(self, c: int, gate_module: bool = False) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(c, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, c, 1))
        self.conv = nn.Conv2d(2, 1, 7, padding=3)
        self.sigmoid = nn.Sigmoid() if gate_module else torch.sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ca = self.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))
        x = x * ca
        sa = self.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], 1)))
        return x * sa


class FunctionalNonLocal(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Conv2d(c, c // 2, 1), nn.Conv2d(c, c // 2, 1), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = F.softmax(self.q(x).flatten(2).transpose(1, 2) @ self.k(x).flatten(2), dim=-1)  # (B, HW, HW)
        return x + (self.v(x).flatten(2) @ attn.transpose(1, 2)).view(b, c, h, w)


class ModuleSoftmaxCrissCross(nn.Module):
    def __init__(self, c: int, functional: bool) -> None:
        super().__init__()
        self.query, self.key = nn.Conv2d(c, 2, 1), nn.Conv2d(c, 2, 1)
        self.sm = None if functional else nn.Softmax(dim=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = criss_cross_logits(self.query(x), self.key(x))
        attn = F.softmax(logits, dim=3) if self.sm is None else self.sm(logits)  # (B, H, W, H + W)
        return x + 0 * attn.sum()


class TutorialSTN(nn.Module):
    """The spatial transformer of the PyTorch tutorial, lightly shrunk."""

    def __init__(self) -> None:
        super().__init__()
        self.localization = nn.Sequential(nn.Conv2d(1, 8, 7), nn.MaxPool2d(2, 2), nn.ReLU(True))
        self.fc_loc = nn.Sequential(nn.Linear(8 * 11 * 11, 32), nn.ReLU(True), nn.Linear(32, 6))
        self.fc_loc[2].weight.data.normal_(0, 0.01)
        self.fc_loc[2].bias.data.copy_(torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.float))
        self.conv = nn.Conv2d(1, 4, 3)

    def stn(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.localization(x).view(-1, 8 * 11 * 11)
        theta = self.fc_loc(xs).view(-1, 2, 3)
        grid = F.affine_grid(theta, x.size(), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.stn(x)).mean((1, 2, 3))


class BranchSoftmaxSK(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.b1, self.b2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=2, dilation=2)
        self.fc = nn.Conv2d(c, 2 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.stack([self.b1(x), self.b2(x)], 1)
        a = self.fc(u.sum(1).mean((2, 3), keepdim=True)).view(x.shape[0], 2, x.shape[1], 1, 1).softmax(dim=1)
        return (u * a).sum(1)


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def net(block: nn.Module, c: int = 16) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1), block, nn.Conv2d(c, 4, 1))


def test_generic_se_linear_relu_linear_sigmoid() -> None:
    m = net(PlainSE(16))
    x = torch.randn(2, 3, 8, 8)
    cap = run(m, x)
    (rec,) = cap.records.values()
    assert rec.kind == "channel" and rec.source == "generic" and rec.name == "1.channel"
    with torch.no_grad():
        expected = m[1].fc(m[0](x).mean((2, 3)))
    torch.testing.assert_close(rec.weights, expected, atol=ATOL, rtol=0)
    assert rec.contribution is not None and rec.contribution.shape == (2,)


@pytest.mark.parametrize("gate_module", [False, True])
def test_generic_functional_cbam(gate_module: bool) -> None:
    m = net(FunctionalCBAM(16, gate_module))
    cap = run(m, torch.randn(2, 3, 8, 8))
    assert list(cap.records) == ["1.channel", "1.spatial"]
    assert cap.records["1.spatial"].mask.shape == (2, 8, 8)


def test_generic_nonlocal_softmax_matrix() -> None:
    m = net(FunctionalNonLocal(16))
    x = torch.randn(2, 3, 6, 5)
    (rec,) = run(m, x).records.values()
    assert rec.kind == "affinity" and rec.query_hw == (6, 5) and rec.key_hw == (6, 5)
    with torch.no_grad():
        f = m[0](x)
        blk = m[1]
        dense = torch.softmax(blk.q(f).flatten(2).transpose(1, 2) @ blk.k(f).flatten(2), -1)
    torch.testing.assert_close(rec.row(3, 4, batch=1), dense[1, 3 * 5 + 4].view(6, 5), atol=ATOL, rtol=0)


@pytest.mark.parametrize("functional", [True, False])
def test_generic_criss_cross(functional: bool) -> None:
    blk = ModuleSoftmaxCrissCross(16, functional)
    ours = attnviz.modules.CrissCrossAttention(16)
    ours.query, ours.key = blk.query, blk.key
    x = torch.randn(1, 16, 6, 5)
    (rec,) = run(net(blk)[1:2], x).records.values()
    (ref,) = run(ours, x).records.values()
    assert rec.kind == "criss_cross" and rec.source == "generic"
    for y, xx in [(0, 0), (5, 4), (3, 2)]:
        torch.testing.assert_close(rec.row(y, xx), ref.row(y, xx), atol=ATOL, rtol=0)


def test_generic_tutorial_stn() -> None:
    m = TutorialSTN()
    x = torch.randn(2, 1, 28, 28)
    cap = run(m, x)
    (rec,) = cap.records.values()
    assert rec.kind == "grid" and rec.theta.shape == (2, 2, 3) and rec.input_hw == (28, 28)
    torch.testing.assert_close(rec.grid, F.affine_grid(rec.theta, [2, 1, 28, 28], align_corners=False))


def test_generic_sk_branch_softmax() -> None:
    (rec,) = run(net(BranchSoftmaxSK(16)), torch.randn(2, 3, 8, 8)).records.values()
    assert rec.kind == "branch" and rec.weights.shape == (2, 2, 16)


def test_swish_is_not_a_gate() -> None:
    m = nn.Sequential(nn.Conv2d(3, 16, 3), Swish(), nn.Conv2d(16, 16, 3), Swish())
    assert run(m, torch.randn(1, 3, 16, 16), generic="all").records == {}


def test_generic_off_skips_unknown_code() -> None:
    assert run(net(PlainSE(16)), torch.randn(1, 3, 8, 8), generic="off").records == {}


def test_adapted_module_is_not_recorded_twice_by_discovery() -> None:
    m = nn.Sequential(nn.Conv2d(3, 16, 3), attnviz.create_attn("se", 16), PlainSE(16))
    cap = run(m, torch.randn(1, 3, 8, 8), generic="all")
    assert [(r.name, r.source) for r in cap.records.values()] == [("1", "adapter"), ("2.channel", "generic")]


# ---- hook hygiene and robustness -----------------------------------------------------------------
def hook_state(model: nn.Module) -> list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    return [
        (n, tuple(m._forward_hooks), tuple(m._forward_pre_hooks), tuple(m._backward_hooks))
        for n, m in model.named_modules()
    ]


def test_no_hooks_left_after_exit_and_after_exception() -> None:
    m = net(nn.Sequential(attnviz.create_attn("cbam", 16), PlainSE(16)))
    user_handle = m[0].register_forward_hook(lambda *a: None)
    before = hook_state(m)
    with attnviz.capture(m):
        m(torch.randn(1, 3, 8, 8))
    assert hook_state(m) == before
    with pytest.raises(RuntimeError, match="boom"), attnviz.capture(m):
        m(torch.randn(1, 3, 8, 8))
        raise RuntimeError("boom")
    assert hook_state(m) == before
    with pytest.raises(RuntimeError), attnviz.capture(m):  # an exception inside the forward itself
        m(torch.randn(1, 5, 8, 8))
    assert hook_state(m) == before
    assert not torch.overrides._get_current_function_mode_stack()
    user_handle.remove()


@pytest.mark.parametrize("train", [True, False])
def test_train_eval_state_untouched(train: bool) -> None:
    m = net(attnviz.create_attn("se", 16)).train(train)
    states = [x.training for x in m.modules()]
    with attnviz.capture(m):
        m(torch.randn(2, 3, 8, 8))
    assert [x.training for x in m.modules()] == states


class InplaceAfterGate(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.se = attnviz.create_attn("se", c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(x.mean((2, 3), keepdim=True))
        out = x * g
        g.mul_(0.0)  # in-place after the gate
        out = self.se(out)
        return out.relu_()


def test_records_are_clones() -> None:
    m = InplaceAfterGate(16)
    x = torch.randn(2, 16, 4, 4)
    cap = run(m, x, generic="auto")
    generic = cap.records["channel"]
    torch.testing.assert_close(generic.weights, torch.sigmoid(x.mean((2, 3))))
    se = cap.records["se"]
    assert (se.weights > 0).all()  # not zeroed by later ops


def test_thread_safety_two_captures_same_model() -> None:
    m = net(nn.Sequential(attnviz.create_attn("se", 16), PlainSE(16))).eval()
    inputs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8) * 3]
    expected = [run(m, x).records for x in inputs]
    results: list[dict | None] = [None, None]
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        with torch.no_grad(), attnviz.capture(m) as cap:
            barrier.wait()
            for _ in range(20):
                m(inputs[i])
        results[i] = dict(cap.records)

    in_threads(work)
    for i in range(2):
        recs = results[i]
        assert recs is not None and len(recs) == 2 * 20
        for name, ref in expected[i].items():
            for k in range(1, 21):
                key = name if k == 1 else f"{name}#{k}"
                torch.testing.assert_close(recs[key].weights, ref.weights)


def test_inference_mode_and_autocast_records_float32_cpu() -> None:
    m = net(nn.Sequential(attnviz.create_attn("cbam", 16), attnviz.create_attn("nonlocal", 16), PlainSE(16))).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode(), attnviz.capture(m) as cap:
        m(x)
    assert len(cap.records) == 4
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad(), attnviz.capture(m) as cap2:
        m(x)
    assert len(cap2.records) == 4
    for r in cap2.records.values():
        assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in r.arrays().values())
    torch.testing.assert_close(cap2.records["1.0.channel"].weights, cap.records["1.0.channel"].weights, atol=0.02, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_records_cpu_float32() -> None:
    m = net(nn.Sequential(attnviz.create_attn("cbam", 16), attnviz.create_attn("ccnet", 16))).cuda().eval()
    with torch.autocast("cuda", dtype=torch.float16), torch.no_grad(), attnviz.capture(m) as cap:
        m(torch.randn(2, 3, 8, 8, device="cuda"))
    assert len(cap.records) == 4
    for r in cap.records.values():
        assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in r.arrays().values())


def test_unwraps_compile_and_dataparallel() -> None:
    m = net(attnviz.create_attn("se", 16)).eval()
    x = torch.randn(1, 3, 8, 8)
    compiled = torch.compile(m)
    compiled_forward = compiled.forward
    with torch.no_grad(), attnviz.capture(compiled) as cap:
        compiled(x)  # runs the eager original while captured: no compilation, exact records
    assert list(cap.records) == ["1"]
    assert compiled.forward is compiled_forward
    dp = nn.DataParallel(m)  # on a CPU-only machine DataParallel calls the module directly
    with torch.no_grad(), attnviz.capture(dp) as cap:
        dp(x)
    assert list(cap.records) == ["1"]


def test_torchscript_gets_clear_error() -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 1)))
    with pytest.raises(TypeError, match="TorchScript"), attnviz.capture(scripted):
        pass


def test_repeated_module_calls_are_numbered() -> None:
    se = attnviz.create_attn("se", 16)
    m = nn.Sequential(nn.Conv2d(3, 16, 1), se, se, se)
    assert list(run(m, torch.randn(1, 3, 4, 4)).records) == ["1", "1#2", "1#3"]


def test_contribution_near_zero_for_identity_start() -> None:
    m = net(attnviz.create_attn("ccnet", 16))
    cap = run(m, torch.randn(1, 3, 8, 8))
    assert all(float(r.contribution.max()) < 1e-6 for r in cap.records.values())
    with torch.no_grad():
        m[1].cca.gamma.fill_(1.0)
    cap = run(m, torch.randn(1, 3, 8, 8))
    assert all(float(r.contribution.min()) > 1e-3 for r in cap.records.values())


def test_no_attention_model_yields_empty_records() -> None:
    cap = run(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1)), torch.randn(1, 3, 8, 8))
    assert cap.records == {}


@pytest.mark.parametrize(
    "make",
    [
        lambda: attnviz.modules.SqueezeExcite(32),
        lambda: timm.layers.squeeze_excite.SEModule(32),
        lambda: timm.layers.eca.EcaModule(32),
        lambda: timm.layers.eca.CecaModule(32),
        lambda: torchvision.ops.misc.SqueezeExcitation(32, 8),
        lambda: timm.layers.cbam.ChannelAttn(32),
        lambda: timm.layers.cbam.SpatialAttn(),
        lambda: timm.layers.cbam.LightChannelAttn(32),
        lambda: timm.layers.cbam.LightSpatialAttn(),
        lambda: attnviz.modules.cbam.SpatialGate(),
        lambda: attnviz.modules.scse.SpatialSE(32),
    ],
)
def test_gate_contribution_fast_path_matches_definition(make, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Pure gates (channel or spatial) take the one-pass contribution; it must equal ‖out − x‖ / ‖x‖ computed directly,
    and take the fast path (the general one, patched to fail, is never called)."""
    m = nn.Sequential(make()).eval()
    monkeypatch.setattr(sys.modules["attnviz.capture.manager"], "contribution", lambda *a: pytest.fail("general path"))
    x = torch.randn(2, 32, 7, 9)
    with torch.no_grad(), attnviz.capture(m) as cap:
        out = m(x)
    (rec,) = cap.records.values()
    ref = torch.linalg.vector_norm((out - x).flatten(1), dim=1) / torch.linalg.vector_norm(x.flatten(1), dim=1)
    torch.testing.assert_close(rec.contribution, ref, rtol=1e-5, atol=1e-6)


def test_lambda_layer_is_seen_not_drawn_with_reason() -> None:
    """A lambda layer's key softmax pools features but no attention weights mix them back: listed, never drawn."""
    from timm.layers.lambda_layer import LambdaLayer

    m = nn.Sequential(LambdaLayer(64, 64, feat_size=(8, 8), stride=1)).eval()
    rep = attnviz.inspect(m, torch.randn(1, 64, 8, 8))
    assert rep.records == []
    assert len(rep.seen) == 1 and "lambda layer" in rep.seen[0]["reason"] and rep.seen[0]["op"] == "softmax"
    assert "seen, not drawn" in rep.table()


def test_inspect_without_attention_says_so_in_one_line() -> None:
    rep = attnviz.inspect(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    assert rep.records == [] and rep.seen == []
    assert rep.table().startswith("no attention modules: none of the") and "\n" not in rep.table()


def test_generic_dot_product_non_local_rows_equal_the_modules_own_f_over_n() -> None:
    """The dot-product Non-Local (f / N, no softmax) found generically: rows equal what the module computed (once divided by N)."""

    class DotNL(nn.Module):
        def __init__(self, c: int = 8) -> None:
            super().__init__()
            self.t, self.p, self.g, self.o = nn.Conv2d(c, 4, 1), nn.Conv2d(c, 4, 1), nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, _, h, w = x.shape
            q, k, v = self.t(x).flatten(2).transpose(1, 2), self.p(x).flatten(2), self.g(x).flatten(2).transpose(1, 2)
            f = torch.matmul(q, k)  # (B, N, N)
            return x + self.o(torch.matmul(f / f.shape[-1], v).transpose(1, 2).reshape(b, 4, h, w))

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), DotNL()).eval()
    x = torch.randn(2, 3, 6, 5)
    with torch.no_grad(), attnviz.capture(m) as cap:
        m(x)
    (rec,) = cap.records.values()
    with torch.no_grad():
        y = m[0](x)
        f = m[1].t(y).flatten(2).transpose(1, 2) @ m[1].p(y).flatten(2) / 30  # (B, 30, 30)
    for b, yy, xx in [(0, 0, 0), (1, 2, 3), (1, 5, 4)]:
        torch.testing.assert_close(rec.row(yy, xx, batch=b), f[b, yy * 5 + xx].reshape(6, 5), atol=ATOL, rtol=0)


@pytest.mark.parametrize(("block", "halo", "stride", "hw"), [(4, 1, 1, (8, 12)), (4, 2, 2, (8, 8)), (8, 2, 1, (8, 8))])
def test_halo_windows_are_placed_exactly(block: int, halo: int, stride: int, hw: tuple[int, int]) -> None:
    """timm's HaloAttn: each query block attends to its block grown by the halo (F.pad, then ``Tensor.unfold``). Every row
    is the module's own softmax placed at the key cells the paper defines (block i's window starts at i·block − halo), the
    weight on zero padding outside the map is reported, not drawn; strided queries (block_stride 2) and one block too."""
    from timm.layers.halo_attn import HaloAttn

    torch.manual_seed(0)
    m = HaloAttn(16, 16, num_heads=2, block_size=block, halo_size=halo, stride=stride).eval()
    x = torch.randn(2, 16, *hw)
    from test_third_party import reference

    (a,) = reference(m, x, {"softmax"})  # (B·heads, blocks, (block/stride)², win²), blocks and cells row-major
    cap = run(m, x)
    (rec,) = cap.records.values()
    bq, win = block // stride, block + 2 * halo
    nbw = hw[1] // block
    assert rec.kind == "window" and rec.query_hw == (hw[0] // stride, hw[1] // stride) and rec.key_hw == hw
    for b in range(2):
        for y, xx in [(0, 0), (rec.query_hw[0] - 1, rec.query_hw[1] - 1), (1, rec.query_hw[1] // 2)]:
            (by, iy), (bx, ix) = divmod(y, bq), divmod(xx, bq)
            r = a[b * 2:(b + 1) * 2, by * nbw + bx, iy * bq + ix].view(2, win, win)  # (heads, win, win)
            for head in [None, 1]:
                w = r.mean(0) if head is None else r[head]
                ref, outside = torch.zeros(hw), 0.0
                for ky in range(win):
                    for kx in range(win):
                        py, px = by * block - halo + ky, bx * block - halo + kx
                        if 0 <= py < hw[0] and 0 <= px < hw[1]:
                            ref[py, px] = w[ky, kx]
                        else:
                            outside += float(w[ky, kx])
                torch.testing.assert_close(rec.row(y, xx, batch=b, head=head), ref, atol=ATOL, rtol=0)
                assert rec.outside_mass(y, xx, batch=b, head=head) == pytest.approx(outside, abs=1e-5)


class ScaledTransposedAttention(nn.Module):
    """A softmax over positions, doubled and then transposed before it meets the values (keys first): the weights used are
    2·Aᵀ, so a record built from the softmax's own values in the transposed tensor's axis order would show Aᵀ's rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(2)  # (B, C, N)
        attn = torch.softmax(f.transpose(1, 2) @ f, dim=-1)  # (B, N queries, N keys)
        return (f @ (attn * 2).transpose(1, 2)).view_as(x)  # (B, C, N): each query's values, weighted by its row


def test_scaled_then_transposed_weights_are_drawn_right_or_not_at_all() -> None:
    """Once drawn transposed (the softmax's values in the transposed tensor's axis order); now the source's values are
    permuted as the tensor was, so each query's row is its own."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 3, 5)
    cap = run(ScaledTransposedAttention(), x)
    f = x.flatten(2)
    attn = torch.softmax(f.transpose(1, 2) @ f, dim=-1)[0]  # (15, 15)
    for rec in cap.records.values():  # drawn only if each query's row is its own (scaled) softmax row
        assert rec.kind == "affinity"
        torch.testing.assert_close(rec.row(1, 2) / rec.row(1, 2).sum(), attn[1 * 5 + 2].view(3, 5), atol=ATOL, rtol=0)
    assert cap.records or cap.seen


def test_contribution_of_a_large_map_is_summed_in_slices_and_matches_definition() -> None:
    """Beyond 2¹⁸ features per sample the difference is formed slice by slice (no full-size transient); the value is
    still ‖out − x‖ / ‖x‖ (deferred: the ratio is formed on first read), here for a small and a large change."""
    from attnviz.capture.manager import _CHUNK, contribution

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, _CHUNK // 2 + 7, generator=g)  # (B, N, C): 1.5 slices per sample
    for eps in (1e-4, 0.5):
        out = x + eps * torch.randn(x.shape, generator=g)
        ref = torch.linalg.vector_norm((out - x).flatten(1).double(), dim=1) / torch.linalg.vector_norm(x.flatten(1).double(), dim=1)
        torch.testing.assert_close(contribution(x, out, None)().double(), ref, rtol=1e-5, atol=0)


def test_contribution_only_where_the_output_is_the_input_changed() -> None:
    """‖out − x‖/‖x‖ is a module's contribution only when its output is its input changed. Found by provenance (the
    output comes from the input through sums, products and views): a residual attention block keeps it, on discovery
    and replay alike; a transformer's attention (out = proj(A·V), the residual sum is in the block) and an A·V adapter
    (BotNet) have none, with the reason in ``contribution_note``."""
    from attnviz.capture.records import NOT_CHANGED

    class Residual(nn.Module):  # x + γ·softmax(QKᵀ)V, written out: found by generic discovery
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Conv2d(8, 24, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)  # (B, 8, N) each
            a = (q.transpose(1, 2) @ k).softmax(-1)  # (B, N, N)
            return x + 0.5 * (v @ a.transpose(1, 2)).view_as(x)

    torch.manual_seed(0)
    res = nn.Sequential(nn.Conv2d(3, 8, 1), Residual()).eval()
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=1).eval()
    bot = timm.create_model("botnet26t_256", pretrained=False).eval()
    for _ in range(2):  # discovery, then a replay of its plan
        (r,) = run(res, torch.randn(2, 3, 6, 6)).records.values()
        assert r.contribution is not None and r.contribution.shape == (2,) and float(r.contribution.min()) > 1e-3 and not r.contribution_note
        (t,) = run(vit, torch.randn(1, 3, 32, 32)).records.values()
        assert t.contribution is None and t.contribution_note == NOT_CHANGED
    recs = run(bot, torch.randn(1, 3, 256, 256)).records
    assert recs and all(r.contribution is None and r.contribution_note == NOT_CHANGED for r in recs.values())


def test_contribution_of_an_all_zero_input_is_undefined_not_zero() -> None:
    """timm's zero-initialised last BatchNorm feeds SE an all-zero map: ‖out − x‖/‖x‖ is NaN there (it read 0, "barely
    changes its input"), and the modules table leaves the cell empty and says why."""
    from attnviz.analysis.views.modules import contribution_note

    m = timm.create_model("seresnet18", pretrained=False).eval()  # zero_init_last: bn2.weight = 0
    rec = run(m, torch.randn(1, 3, 64, 64)).records["layer1.0.se"]
    assert bool(rec.contribution.isnan().all())
    assert "all zeros" in contribution_note(rec, float(rec.contribution[0]))
    randomize_bn(m)
    rec = run(m, torch.randn(1, 3, 64, 64)).records["layer1.0.se"]
    assert 0 < float(rec.contribution[0]) < 1


def test_kept_walk_follows_every_change_of_the_tree() -> None:
    """The module walk is kept per model between captures (it is most of a capture's set-up); a child swapped in, a
    child swapped out, an adapter registered later and an adapter's instance condition that changes each walk again,
    and the walk never keeps the model alive."""
    import gc
    import weakref

    from attnviz.capture.adapters import _gate_spec, register_adapter

    m = net(nn.Identity())
    x = torch.randn(1, 3, 8, 8)
    assert run(m, x).records == {}
    m[1] = attnviz.create_attn("se", 16)
    assert list(run(m, x).records) == ["1"]
    m[1] = nn.Identity()
    assert run(m, x).records == {}

    class Gate(nn.Module):  # out = x · σ(mean); no gate-function name in its code, so discovery does not watch it
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.Sigmoid()
            self.on = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.act(x.mean((2, 3), keepdim=True))

    m[1] = Gate()
    assert run(m, x, generic="off").records == {}
    register_adapter(f"{Gate.__module__}.{Gate.__qualname__}", when=lambda g: g.on)(lambda g: _gate_spec(g.act, pure=True))
    assert list(run(m, x, generic="off").records) == ["1"]
    m[1].on = False
    assert run(m, x, generic="off").records == {}
    m[1].on = True
    assert list(run(m, x, generic="off").records) == ["1"]

    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None
