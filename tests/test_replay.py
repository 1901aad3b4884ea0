"""Lazy labelling: a forward that replays a plan gives exactly the records of a forward that follows every op.

The first captured forward of a model at an input signature follows every op (discovery) and keeps a plan; later forwards
replay it, watching ops only in the modules that compute attention (see ``attnviz.capture.plan``). Each case below runs
discovery on one input, a replay on a second input, then a fresh discovery on the second input, and compares every field
of every record and every "seen, not drawn" item.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
from conftest import in_threads
from torch import nn

import attnviz
from attnviz.capture.plan import PLANS, forget_plans


def _run(model: nn.Module, x: Any) -> attnviz.Capture:
    with torch.inference_mode(), attnviz.capture(model) as cap:
        model(**x) if isinstance(x, dict) else model(x)
    return cap


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return a == b


def assert_replay_exact(model: nn.Module, make: Callable[[], Any]) -> attnviz.Capture:
    """Discovery on x1, replay on x2, discovery on x2: the replay's records and seen items equal the discovery's."""
    forget_plans(model)
    x1, x2 = make(), make()
    first = _run(model, x1)
    assert first.replays == 0
    replayed = _run(model, x2)
    forget_plans(model)
    fresh = _run(model, x2)
    assert fresh.replays == 0
    assert replayed.seen_not_drawn() == fresh.seen_not_drawn()
    assert list(replayed.records) == list(fresh.records)
    for name, rec in fresh.records.items():
        other = replayed.records[name]
        assert type(other) is type(rec), name
        for f in dataclasses.fields(rec):
            assert _same(getattr(other, f.name), getattr(rec, f.name)), (name, f.name)
    return replayed


def _img(*shape: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(*shape)


def _timm(name: str, **kw: Any) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).eval()


TIMM = [
    ("vit_small_patch16_224", {"img_size": 64, "depth": 2}, (1, 3, 64, 64)),
    ("deit_tiny_distilled_patch16_224", {"img_size": (64, 96), "depth": 2}, (2, 3, 64, 96)),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 56, "depth": 2}, (1, 3, 56, 56)),
    ("swin_tiny_patch4_window7_224", {"depths": (2, 2, 2, 2), "embed_dim": 32, "num_heads": (1, 2, 2, 4)}, (1, 3, 224, 224)),
    ("swin_tiny_patch4_window7_224", {"depths": (2, 2), "embed_dim": 32, "num_heads": (1, 2), "img_size": 256}, (1, 3, 256, 256)),  # padded
    ("efficientvit_m0", {}, (1, 3, 224, 224)),
    ("mobilevit_xxs", {}, (1, 3, 128, 128)),
    ("xcit_nano_12_p16_224", {"depth": 2}, (1, 3, 64, 64)),
    ("coatnet_nano_rw_224", {}, (1, 3, 224, 224)),
    ("halonet26t", {}, (1, 3, 256, 256)),
]


@pytest.mark.parametrize(("name", "kw", "shape"), TIMM, ids=[f"{t[0]}-{t[2][-1]}" for t in TIMM])
def test_timm_replay_equals_discovery(name: str, kw: dict[str, Any], shape: tuple[int, ...]) -> None:
    model = _timm(name, **kw)
    cap = assert_replay_exact(model, _img(*shape))
    assert cap.replays == 1 and (cap.records or cap.seen), "the second forward replayed a plan"


FCA = [
    ("CBAM", "CBAMBlock", {"channel": 32, "reduction": 8, "kernel_size": 7}),
    ("CoordAttention", "CoordAtt", {"inp": 32, "oup": 32, "reduction": 8}),
    ("TripletAttention", "TripletAttention", {}),
    ("SKAttention", "SKAttention", {"channel": 32, "reduction": 8}),
    ("SimAM", "SimAM", {}),
    ("CrissCrossAttention", "CrissCrossAttention", {"in_dim": 32}),
    ("PolarizedSelfAttention", "SequentialPolarizedSelfAttention", {"channel": 32}),
]


@pytest.mark.parametrize(("mod", "cls", "kw"), FCA, ids=[f[0] for f in FCA])
def test_external_attention_replay_equals_discovery(mod: str, cls: str, kw: dict[str, Any]) -> None:
    fca = pytest.importorskip(f"fightingcv_attention.attention.{mod}", reason="pip install fightingcv-attention (test extra)")
    torch.manual_seed(0)
    model = getattr(fca, cls)(**kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert_replay_exact(model, _img(2, 32, 8, 8))


def test_hf_swin_and_segformer_replay_equals_discovery() -> None:
    transformers = pytest.importorskip("transformers", reason="pip install transformers (test extra)")
    torch.manual_seed(0)
    swin = transformers.SwinModel(transformers.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                                                          window_size=4)).eval()
    assert_replay_exact(swin, lambda: {"pixel_values": torch.randn(1, 3, 64, 64)})
    seg = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
        decoder_hidden_size=32, num_labels=3)).eval()
    assert_replay_exact(seg, lambda: {"pixel_values": torch.randn(1, 3, 64, 64)})


class _Attend(nn.Module):
    """Non-Local style attention over the positions of its input (softmax of q·k, contracted with v)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.q, self.k = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.q(x).flatten(2), self.k(x).flatten(2), x.flatten(2)  # (B, C, HW)
        a = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, HW, HW)
        return x + (v @ a.transpose(1, 2)).reshape(b, c, h, w)


class Branchy(nn.Module):
    """Attends with one module or another depending on the input's mean (a value Python reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.attn1, self.attn2 = _Attend(8), _Attend(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.attn1(y) if x.mean() > 0 else self.attn2(y)


def test_a_value_dependent_branch_keeps_no_plan_and_every_map_is_drawn_exactly() -> None:
    """A forward whose ops depend on a value Python read is never replayed: each forward follows every op, so the branch it
    takes is drawn, exactly (a replay of the other branch's plan could only say "seen, not drawn")."""
    torch.manual_seed(0)
    model = Branchy().eval()
    for x in (torch.randn(1, 3, 6, 6) + 3, torch.randn(1, 3, 6, 6) - 3, torch.randn(1, 3, 6, 6) + 3):
        cap = _run(model, x)
        assert cap.replays == 0
        attn = model.attn1 if x.mean() > 0 else model.attn2
        rec = cap.records["attn1" if attn is model.attn1 else "attn2"]
        with torch.no_grad():
            y = model.stem(x)
            q, k = attn.q(y).flatten(2), attn.k(y).flatten(2)
            a = torch.softmax(q.transpose(1, 2) @ k, dim=-1)[0]  # (HW, HW)
        torch.testing.assert_close(rec.row(1, 4), a[1 * 6 + 4].reshape(6, 6), atol=1e-5, rtol=1e-5)


def test_a_replay_that_meets_another_code_path_draws_nothing_from_it_and_traces_again() -> None:
    """A code path changed through an attribute (no value read): a watched call the plan does not know is reported, not drawn;
    the plan is dropped and the next forward is a discovery."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a, self.b = _Attend(8), _Attend(8)
            self.second = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(self.stem(x))
            return self.b(y) if self.second else y

    torch.manual_seed(0)
    model = Twice().eval()
    x = torch.randn(1, 3, 6, 6)
    _run(model, x)
    assert PLANS.get(model, next(iter(PLANS._by_model[model]))) is not None
    model.second = True
    cap = _run(model, x)
    assert cap.replays == 1 and "a" in cap.records and "b" not in cap.records
    assert any(s["module"] == "b" and s["op"] == "replay" for s in cap.seen_not_drawn())
    again = _run(model, x)
    assert again.replays == 0 and "b" in again.records


def test_training_mode_keeps_no_plan() -> None:
    model = _timm("vit_small_patch16_224", img_size=32, depth=1).train()
    for _ in range(2):
        assert _run(model, torch.randn(1, 3, 32, 32)).replays == 0


def test_plans_do_not_keep_a_model_alive() -> None:
    import gc
    import weakref

    model = _timm("vit_small_patch16_224", img_size=32, depth=1)
    _run(model, torch.randn(1, 3, 32, 32))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None



def test_spill_writes_strided_and_half_precision_sources_exactly(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A strided view (q of a fused qkv projection) or a float64 / float16 source is written in slices; the mapped copy is
    bit-equal to ``keep``'s, with its shape, and nothing is left in the folder."""
    import importlib

    records = importlib.import_module("attnviz.capture.records")
    monkeypatch.setattr(records, "SPILL_DIR", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 1100, 3, 6, 64, generator=g).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d): q is strided
    for src in (qkv[0], qkv[1].double(), qkv[2].half(), qkv[0].contiguous(), torch.randn(5, 3, generator=g).t()):
        out = records.spill(src)
        assert out.shape == src.shape and out.dtype == torch.float32
        assert torch.equal(out, records.keep(src))
    assert not list(tmp_path.iterdir())


def test_large_queries_and_keys_are_spilled_to_an_unlinked_mapped_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Beyond SPILL_BYTES of queries and keys per forward, a record's q and k live in a memory-mapped temporary file that is
    unlinked at once (nothing is left in the folder); rows are the same as from the in-memory copies."""
    import importlib

    records = importlib.import_module("attnviz.capture.records")
    tracker = importlib.import_module("attnviz.capture.tracker")
    model = _timm("vit_small_patch16_224", img_size=64, depth=2)
    x = torch.randn(1, 3, 64, 64)
    forget_plans(model)
    held = _run(model, x)
    calls: list[tuple[int, ...]] = []

    def counted(t: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(t.shape))
        return records.spill(t)

    monkeypatch.setattr(records, "SPILL_BYTES", 0)
    monkeypatch.setattr(records, "SPILL_DIR", str(tmp_path))
    monkeypatch.setattr(tracker, "spill", counted)
    spilled = _run(model, x)  # a replay: the plan's fast regions spill too
    assert len(calls) == 4 and not list(tmp_path.iterdir())
    for name, rec in held.records.items():
        other = spilled.records[name]
        torch.testing.assert_close(other.queries, rec.queries, atol=0, rtol=0)
        torch.testing.assert_close(other.keys, rec.keys, atol=0, rtol=0)
        for y, xx in ((0, 0), (3, 1)):
            torch.testing.assert_close(other.row(y, xx), rec.row(y, xx), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(other.prefix_row(0), rec.prefix_row(0), atol=1e-6, rtol=1e-6)
    monkeypatch.setattr(records, "SPILL_DIR", str(tmp_path / "missing"))  # a folder that cannot be written: kept in memory instead
    t = torch.randn(3, 5).t()
    assert torch.equal(records.spill(t), t)


_BOUND_SDPA = torch.nn.functional.scaled_dot_product_attention  # bound at import, as ``from … import`` does


class _Fused(nn.Module):
    """Attention over a feature map's positions through ``F.scaled_dot_product_attention``, looked up at the call (as timm
    does), or through a name bound at import (``bound``), or called twice on another code path (``twice``)."""

    def __init__(self, c: int = 8, bound: bool = False) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.bound, self.twice = bound, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).transpose(1, 2).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, HW, C) each
        sdpa = _BOUND_SDPA if self.bound else torch.nn.functional.scaled_dot_product_attention
        o = sdpa(q, k, v)
        if self.twice:
            o = sdpa(o, k, v)
        return x + o.squeeze(1).transpose(1, 2).reshape(b, c, h, w)


def _fused_net(bound: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _Fused(8, bound)).eval()


def _fused_row(model: nn.Module, x: torch.Tensor, y: int, xx: int) -> torch.Tensor:
    with torch.no_grad():
        f = model[0](x)
        q, k, _ = model[1].qkv(f).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # (B, HW, C)
        a = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)[0]
    return a[y * x.shape[-1] + xx].reshape(x.shape[-2:])


@pytest.mark.parametrize("bound", [False, True])
def test_fused_regions_replay_without_watching_ops_and_draw_every_forward(bound: bool) -> None:
    """A region whose only record is a fused ``F.scaled_dot_product_attention`` replays *direct*: no op is watched, the call
    is seen through a wrapper of the function (installed only while the region runs). Code that bound the function at
    import never reaches the wrapper: discovery notices, and that region replays by watching its ops. Either way every
    forward draws the row exactly, the function is the original again afterwards, and a patch of it made by the user
    before the capture is what the model runs."""
    from attnviz.capture.plan import SDPA

    model = _fused_net(bound)
    original = torch.nn.functional.scaled_dot_product_attention
    calls: list[int] = []

    def users_patch(*a: Any, **k: Any) -> torch.Tensor:
        calls.append(1)
        return original(*a, **k)

    torch.nn.functional.scaled_dot_product_attention = users_patch
    try:
        for i in range(3):
            x = torch.randn(1, 3, 6, 5)
            cap = _run(model, x)
            assert cap.replays == (1 if i else 0) and not cap.seen_not_drawn()
            torch.testing.assert_close(cap.records["1"].row(2, 3), _fused_row(model, x, 2, 3), atol=1e-5, rtol=1e-5)
            assert torch.nn.functional.scaled_dot_product_attention is users_patch
        (plan,) = PLANS._by_model[model].values()
        (fast,) = plan.fast.values()
        assert fast.ops[next(iter(fast.events))] is SDPA
        assert (fast.direct is None) == bound
        assert len(calls) == (0 if bound else 3)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def test_a_direct_replay_that_meets_more_fused_calls_draws_nothing_from_them_and_traces_again() -> None:
    """A direct region that calls the fused op more often than its plan (a code path changed through an attribute) is
    reported, not drawn; the next forward is a discovery that draws both calls. An exception inside a direct region leaves
    the function restored."""
    model = _fused_net()
    x = torch.randn(1, 3, 6, 5)
    _run(model, x)
    model[1].twice = True
    cap = _run(model, x)
    assert cap.replays == 1 and any(s["module"] == "1" and s["op"] == "replay" for s in cap.seen_not_drawn())
    again = _run(model, x)
    assert again.replays == 0 and list(again.records) == ["1", "1#2"]
    original = torch.nn.functional.scaled_dot_product_attention
    with pytest.raises(RuntimeError), torch.inference_mode(), attnviz.capture(model):
        model(torch.randn(1, 3, 6, 5))  # a replay: the direct region holds the wrapper when the error comes
        model(torch.randn(1, 4, 6, 5))  # wrong channel count: the first conv raises
    assert torch.nn.functional.scaled_dot_product_attention is original


def test_direct_replays_in_two_threads_see_only_their_own_calls() -> None:
    """Two threads replay direct regions of two models at once (the wrapper is installed while either holds it): each
    capture's rows are its own model's, on every forward, and the original function is back when both are done."""
    import threading

    models = [_fused_net(), _fused_net()]
    with torch.no_grad():
        models[1][1].qkv.weight.mul_(3)  # other weights: a row taken from the wrong model would differ
    inputs = [torch.randn(1, 3, 6, 5), torch.randn(1, 3, 6, 5)]
    original = torch.nn.functional.scaled_dot_product_attention
    for m, x in zip(models, inputs):
        _run(m, x)  # discovery: the plans
    rows: list[list[torch.Tensor]] = [[], []]
    replays = [0, 0]
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(25):
            cap = _run(models[i], inputs[i])
            replays[i] += cap.replays
            rows[i].append(cap.records["1"].row(2, 3))

    in_threads(work)
    for i in range(2):
        assert replays[i] == 25 and len(rows[i]) == 25
        ref = _fused_row(models[i], inputs[i], 2, 3)
        for r in rows[i]:
            torch.testing.assert_close(r, ref, atol=1e-5, rtol=1e-5)
    assert torch.nn.functional.scaled_dot_product_attention is original
