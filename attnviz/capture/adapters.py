"""Adapters: exact, per-class hooks for attention modules we know.

An adapter turns one module into an :class:`AdapterSpec`: which submodule outputs to keep (taps), what
to compute from the input before the module runs (``on_input``), and how to build records once the
module has returned. The manager does the hooking; nothing here touches hooks directly. Classes are
registered by their qualified name, so neither timm nor torchvision is imported to look them up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .records import (
    Affinity,
    BranchWeights,
    ChannelAffinity,
    ChannelGate,
    CrissCross,
    HaloAffinity,
    Record,
    RegionAttention,
    SamplingGrid,
    SpatialMask,
    WindowAffinity,
    keep,
)

Stash = dict[str, torch.Tensor]
Built = list[tuple[str, Record]]  # (name suffix, record); suffix "" = the module's own name


@dataclass
class AdapterSpec:
    """How to record one module.

    Attributes:
        build: ``build(module, x, out, stash) -> [(suffix, record), ...]`` called after the module ran.
        taps: ``key -> (submodule, select)``: the submodule's output, passed through ``select`` (or
            kept whole), is cloned into ``stash[key]`` when it is produced.
        on_input: ``on_input(module, x) -> stash`` computed before the module runs.
        gate_of: For a module whose output is exactly ``x * gate`` (the SE family, CBAM's gates), the key of the gate
            in the stash: its contribution is then computed from the gate and the per-channel or per-position norms of
            x, in one pass over x instead of three.
        changes_input: The output is the input changed (a residual sum, a gate, a warp), so ``‖out − x‖ / ‖x‖`` is the
            module's contribution; False where the output is something else (SK's fused branches, A·V, OCR's context).
    """

    build: Callable[[nn.Module, torch.Tensor, object, Stash], Built]
    taps: dict[str, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]] = field(default_factory=dict)
    on_input: Callable[[nn.Module, torch.Tensor], Stash] | None = None
    gate_of: str | None = None
    changes_input: bool = True


_REGISTRY: dict[str, Callable[[nn.Module], AdapterSpec]] = {}


_WHEN: dict[Callable[[nn.Module], AdapterSpec], Callable[[nn.Module], bool]] = {}
_VERSION = 0  # counts registrations (a class registered again counts too)


def register_adapter(*qualnames: str, when: Callable[[nn.Module], bool] | None = None,
                     ) -> Callable[[Callable[[nn.Module], AdapterSpec]], Callable[[nn.Module], AdapterSpec]]:
    """Register an adapter factory for classes given as ``"package.module.ClassName"``; with ``when``, only for the
    instances it accepts (the others are left to generic discovery)."""

    def deco(fn: Callable[[nn.Module], AdapterSpec]) -> Callable[[nn.Module], AdapterSpec]:
        global _VERSION
        for q in qualnames:
            _REGISTRY[q] = fn
        if when is not None:
            _WHEN[fn] = when
        _VERSION += 1
        return fn

    return deco


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def find_adapter(module: nn.Module) -> Callable[[nn.Module], AdapterSpec] | None:
    """The adapter factory for ``module``'s class or its nearest registered base class (if it accepts this instance)."""
    fn = _adapter_for_class(type(module), _VERSION)
    return None if fn is None or (fn in _WHEN and not _WHEN[fn](module)) else fn


def has_condition(module: nn.Module) -> bool:
    """Whether the adapter of ``module``'s class asks the instance first (``when``): its answer can change."""
    return _adapter_for_class(type(module), _VERSION) in _WHEN


def adapter_count() -> int:
    """How many registrations there were (grows with each, a class registered again included)."""
    return _VERSION


@functools.cache
def _adapter_for_class(cls: type, _version: int) -> Callable[[nn.Module], AdapterSpec] | None:
    # cached per class; the registration count in the key invalidates it when adapters are registered later
    for klass in cls.__mro__:
        fn = _REGISTRY.get(_qualname(klass))
        if fn is not None:
            return fn
    return None


def known_classes() -> list[str]:
    """Qualified names of every class with an adapter."""
    return sorted(_REGISTRY)


def gate_record(gate: torch.Tensor, x: torch.Tensor) -> Record:
    """Classify a gate tensor by its size against the module input ``x`` (B, C, H, W)."""
    b, c, h, w = x.shape
    per = gate.numel() // b
    if per == c:
        return ChannelGate(weights=gate.reshape(b, c))
    if per == h * w:
        return SpatialMask(mask=gate.reshape(b, h, w))
    raise ValueError(f"gate of shape {tuple(gate.shape)} fits neither channels nor positions of {tuple(x.shape)}")


def _gate_spec(gate: nn.Module, pure: bool = False) -> AdapterSpec:
    return AdapterSpec(taps={"gate": (gate, None)}, build=lambda m, x, out, s: [("", gate_record(s["gate"], x))], gate_of="gate" if pure else None)


def gate_contribution(x: torch.Tensor, gate: torch.Tensor) -> Callable[[], torch.Tensor] | None:
    """‖x·g − x‖ / ‖x‖ per sample for a channel gate ``g`` (B, C[, 1, 1]) or a spatial one (B, [1,] H, W), from the norms of
    x per channel or per position (one pass). Returns the last step, deferred (:meth:`Record.defer_contribution`)."""
    if x.ndim != 4:
        return None
    b, c, h, w = x.shape
    with torch.no_grad():
        if gate.numel() == b * c:
            n = torch.linalg.vector_norm(x, dim=(2, 3), dtype=torch.float32)  # (B, C): ‖x_c‖
        elif gate.numel() == b * h * w:
            xf = x.float()  # (a norm over dim 1 of NCHW is a strided reduction, ~10× slower than squares summed)
            n = torch.square(xf).sum(1).sqrt_().reshape(b, h * w)  # (B, HW): ‖x_p‖
        else:
            return None
    return functools.partial(_gate_ratio, n, gate.reshape(n.shape))


def _gate_ratio(n: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """‖(g − 1)·n‖ / ‖n‖ per sample of per-channel or per-position norms ``n`` (B, K) and gate ``g`` (B, K)."""
    with torch.no_grad():
        n, g = n.cpu(), g.detach().float().cpu()
        return relative(torch.linalg.vector_norm((g - 1) * n, dim=1), torch.linalg.vector_norm(n, dim=1))


def relative(diff: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """``diff / norm`` per sample, NaN where the input's norm is 0 (an all-zero input, e.g. after a zero-initialised
    BatchNorm: the contribution is undefined there, not 0)."""
    return torch.where(norm > 0, diff / norm.clamp_min(1e-30), torch.full_like(diff, float("nan")))


# ---- squeeze-and-excitation family: the gate is a submodule -------------------------------------
@register_adapter(
    "attnviz.modules.se.SqueezeExcite",
    "attnviz.modules.eca.EfficientChannelAttn",
    "attnviz.modules.cbam.ChannelGate",
    "attnviz.modules.cbam.SpatialGate",
    "attnviz.modules.scse.SpatialSE",
    "timm.layers.squeeze_excite.SEModule",
    "timm.layers.squeeze_excite.EffectiveSEModule",
    "timm.layers.eca.EcaModule",
    "timm.layers.eca.CecaModule",
    "timm.layers.cbam.ChannelAttn",
    "timm.layers.cbam.SpatialAttn",
    "timm.models._efficientnet_blocks.SqueezeExcite",
)
def _gate_module(m: nn.Module) -> AdapterSpec:
    pure = _qualname(type(m)) in _PURE_GATES
    return _gate_spec(m.gate, pure)


_PURE_GATES = {  # out = x * gate exactly
    "attnviz.modules.se.SqueezeExcite", "attnviz.modules.eca.EfficientChannelAttn", "attnviz.modules.cbam.ChannelGate",
    "attnviz.modules.cbam.SpatialGate", "attnviz.modules.scse.SpatialSE", "timm.layers.cbam.ChannelAttn", "timm.layers.cbam.SpatialAttn",
    "timm.layers.squeeze_excite.SEModule", "timm.layers.squeeze_excite.EffectiveSEModule", "timm.layers.eca.EcaModule",
    "timm.layers.eca.CecaModule", "timm.models._efficientnet_blocks.SqueezeExcite",
}


@register_adapter("torchvision.ops.misc.SqueezeExcitation")
def _tv_se(m: nn.Module) -> AdapterSpec:
    return _gate_spec(m.scale_activation, pure=True)


@register_adapter("timm.layers.cbam.LightChannelAttn")
def _timm_light_channel(m: nn.Module) -> AdapterSpec:
    # the gate is a functional F.sigmoid: recompute it from the input with the module's own layers
    def on_input(mod: nn.Module, x: torch.Tensor) -> Stash:
        pool = 0.5 * x.mean((2, 3), keepdim=True) + 0.5 * x.amax((2, 3), keepdim=True)
        return {"gate": keep(torch.sigmoid(mod.fc2(mod.act(mod.fc1(pool)))))}

    return AdapterSpec(on_input=on_input, build=lambda mod, x, out, s: [("", gate_record(s["gate"], x))], gate_of="gate")


@register_adapter("timm.layers.cbam.LightSpatialAttn")
def _timm_light_spatial(m: nn.Module) -> AdapterSpec:
    return _gate_spec(m.gate, pure=True)


# ---- global context ------------------------------------------------------------------------------
@register_adapter("attnviz.modules.gc.GlobalContext")
def _gc(m: nn.Module) -> AdapterSpec:
    taps = {"attn": (m.softmax, None)}
    if m.gate is not None:
        taps["gate"] = (m.gate, None)

    def build(mod: nn.Module, x: torch.Tensor, out: object, s: Stash) -> Built:
        b, _, h, w = x.shape
        recs: Built = [("", SpatialMask(mask=s["attn"].reshape(b, h, w)))]
        if "gate" in s:
            recs.append((".gate", gate_record(s["gate"], x)))
        return recs

    return AdapterSpec(taps=taps, build=build)


@register_adapter("timm.layers.global_context.GlobalContext")
def _timm_gc(m: nn.Module) -> AdapterSpec:
    taps: dict[str, tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]] = {}
    if m.conv_attn is not None:
        taps["logits"] = (m.conv_attn, None)
    if m.mlp_scale is not None:
        taps["gate"] = (m.gate, None)

    def build(mod: nn.Module, x: torch.Tensor, out: object, s: Stash) -> Built:
        b, _, h, w = x.shape
        recs: Built = []
        if "logits" in s:  # the module's own F.softmax over H·W, recomputed on the same logits
            recs.append(("", SpatialMask(mask=F.softmax(s["logits"].reshape(b, h * w), dim=-1).reshape(b, h, w))))
        if "gate" in s:
            recs.append((".gate" if recs else "", gate_record(s["gate"], x)))
        return recs

    return AdapterSpec(taps=taps, build=build)


# ---- selective kernel ----------------------------------------------------------------------------
def _branch_build(mod: nn.Module, x: torch.Tensor, out: object, s: Stash) -> Built:
    w = s["weights"]  # (B, M, C, 1, 1)
    return [("", BranchWeights(weights=w.reshape(w.shape[0], w.shape[1], w.shape[2])))]


@register_adapter("attnviz.modules.sk.SelectiveKernel")
def _sk(m: nn.Module) -> AdapterSpec:
    return AdapterSpec(taps={"weights": (m.softmax, None)}, build=_branch_build, changes_input=False)  # out = Σ branch·weight


@register_adapter("timm.layers.selective_kernel.SelectiveKernelAttn")
def _timm_sk(m: nn.Module) -> AdapterSpec:
    return AdapterSpec(taps={"weights": (m, None)}, build=_branch_build, changes_input=False)


# ---- non-local / position attention: queries and keys, rows on demand -------------------------
def _affinity(q: torch.Tensor, k: torch.Tensor, **kw: object) -> Affinity:
    """Affinity from query maps ``(B, d, H, W)`` and key maps ``(B, d, Hk, Wk)``, one head."""
    return Affinity(
        queries=q.flatten(2).transpose(1, 2).unsqueeze(1),  # (B, 1, N, d)
        keys=k.flatten(2).unsqueeze(1),  # (B, 1, d, M)
        query_hw=(q.shape[2], q.shape[3]),
        key_hw=(k.shape[2], k.shape[3]),
        **kw,  # type: ignore[arg-type]
    )


@register_adapter("attnviz.modules.non_local.NonLocal2d")
def _nonlocal(m: nn.Module) -> AdapterSpec:
    normalize = "softmax" if m.mode == "embedded_gaussian" else "mean"
    return AdapterSpec(
        taps={"q": (m.theta, None), "k": (m.phi, None)},
        build=lambda mod, x, out, s: [("", _affinity(s["q"], s["k"], scale=float(mod.scale), normalize=normalize))],
    )


@register_adapter("timm.layers.non_local_attn.NonLocalAttn")
def _timm_nonlocal(m: nn.Module) -> AdapterSpec:
    return AdapterSpec(
        taps={"q": (m.t, None), "k": (m.p, None)},
        build=lambda mod, x, out, s: [("", _affinity(s["q"], s["k"], scale=float(mod.scale)))],
    )


@register_adapter("attnviz.modules.danet.PositionAttention")
def _pam(m: nn.Module) -> AdapterSpec:
    return AdapterSpec(
        taps={"q": (m.query, None), "k": (m.key, None)},
        build=lambda mod, x, out, s: [("", _affinity(s["q"], s["k"]))],
    )


@register_adapter("attnviz.modules.danet.ChannelAttention")
def _cam(m: nn.Module) -> AdapterSpec:
    return AdapterSpec(taps={"attn": (m.softmax, None)}, build=lambda mod, x, out, s: [("", ChannelAffinity(matrix=s["attn"]))])


@register_adapter("timm.layers.bottleneck_attn.BottleneckAttn")
def _botnet(m: nn.Module) -> AdapterSpec:
    dqk = m.dim_out_qk

    def build(mod: nn.Module, x: torch.Tensor, out: object, s: Stash) -> Built:
        qk = s["qk"]  # (B, 2·heads·d, H, W)
        b, _, h, w = qk.shape
        heads, d = mod.num_heads, mod.dim_head_qk
        q = qk[:, :dqk].reshape(b, heads, d, h * w).transpose(2, 3)  # (B, heads, N, d)
        k = qk[:, dqk:].reshape(b, heads, d, h * w)  # (B, heads, d, N)
        pe = mod.pos_embed
        rec = Affinity(
            queries=q, keys=k, query_hw=(h, w), key_hw=(h, w), scale=float(mod.scale),
            rel_h=keep(pe.height_rel), rel_w=keep(pe.width_rel), scale_pos=bool(mod.scale_pos_embed),
        )
        return [("", rec)]

    return AdapterSpec(taps={"qk": (m.qkv, lambda t: t[:, : 2 * dqk])}, build=build, changes_input=False)  # out = A·V


# ---- outlook attention (VOLO) ---------------------------------------------------------------------
def fold_outlook(attn: torch.Tensor, hw: tuple[int, int], k: int, stride: int, pad: int) -> torch.Tensor:
    """VOLO's outlook weights, folded back as the module's ``F.fold`` adds them: ``(B, heads, H, W, 1, (2k−1)²)``.

    ``attn`` ``(B, heads, h·w, k², k²)``: for each window (one per cell of the pooled ``h × w`` grid) the weights of its
    k×k output cells over its k×k value cells. Output cell ``p`` gets ``Σ_windows attn[window, p, key]`` for every key
    cell within ``k − 1`` of it: window offset (a, b) of window (i, j) is image cell ``(i·stride − pad + a, j·stride −
    pad + b)`` for the fold and the unfold alike.
    """
    b, heads, n, _, _ = attn.shape
    H, W = hw
    h, w = -(-H // stride), -(-W // stride)
    if n != h * w:
        raise ValueError(f"outlook attention over {n} windows does not match a {H}×{W} map at stride {stride}")
    a = attn.float().reshape(b, heads, h, w, k, k, k, k)  # (B, heads, h, w, a_out, b_out, a_in, b_in)
    span = (2 * k - 1)
    gh, gw = max((h - 1) * stride + k, pad + H), max((w - 1) * stride + k, pad + W)  # padded output grid
    grid = attn.new_zeros(b, heads, gh, gw, span, span, dtype=torch.float32)
    for ai in range(k):
        for bi in range(k):
            out = grid[:, :, ai:ai + stride * (h - 1) + 1:stride, bi:bi + stride * (w - 1) + 1:stride]  # (B, heads, h, w, span, span)
            out[..., k - 1 - ai:2 * k - 1 - ai, k - 1 - bi:2 * k - 1 - bi] += a[:, :, :, :, ai, bi]
    grid = grid[:, :, pad:pad + H, pad:pad + W]  # output cells of the image (the fold drops its padding)
    return grid.reshape(b, heads, H, W, 1, span * span)


@register_adapter("timm.models.volo.OutlookAttention")
def _outlook(m: nn.Module) -> AdapterSpec:
    def build(mod: nn.Module, x: torch.Tensor, out: object, s: Stash) -> Built:
        k, pad = int(mod.kernel_size), int(mod.padding)
        H, W = x.shape[1], x.shape[2]  # (B, H, W, C): channels last
        rec = HaloAffinity(weights=fold_outlook(s["attn"], (H, W), k, int(mod.stride), pad), query_hw=(H, W), key_hw=(H, W),
                           block=(1, 1), window=(2 * k - 1, 2 * k - 1), step=(1, 1), pad=(k - 1, k - 1), folded=True)
        rec.note = (f"outlook attention (VOLO, Yuan et al. 2021, https://arxiv.org/abs/2106.13112): {k}×{k} windows at stride "
                    f"{mod.stride}, their weights added up where the fold overlaps them (a row sums to the windows that hold the cell)")
        return [("", rec)]

    return AdapterSpec(taps={"attn": (m.attn_drop, None)}, build=build, changes_input=False)  # out = proj(fold(A·V))


# ---- global-context window attention (GCViT) ---------------------------------------------------
def window_record(attn: torch.Tensor, batch: int, hw: tuple[int, int], window: tuple[int, int]) -> WindowAffinity:
    """Window attention ``attn`` ``(B·nWh·nWw, heads, wh·ww, wh·ww)`` of a ``(B, H, W, C)`` map cut by timm's
    ``window_partition`` (windows image-major, then row-major; cells row-major within a window), placed by that order."""
    (H, W), (wh, ww) = hw, window
    nh, nw = H // wh, W // ww
    heads = attn.shape[1]
    weights = attn.reshape(batch, nh, nw, heads, wh * ww, wh * ww)  # (B, nWh, nWw, heads, Nq, Nk)
    cells = [(f"h[{wh}i]", wh), (f"w[{ww}i]", ww)]
    return WindowAffinity(weights=keep(weights), lead_atoms=[("b", batch), (f"h[{nh}o]", nh), (f"w[{nw}o]", nw), (f"c[{heads}o]", heads)],
                          query_atoms=list(cells), key_atoms=list(cells))


@register_adapter("timm.models.gcvit.GlobalContextVitBlock", when=lambda m: bool(getattr(m.attn, "use_global", False)))
def _gcvit_block(m: nn.Module) -> AdapterSpec:
    """GCViT's global blocks (Hatamizadeh et al. 2023, https://arxiv.org/abs/2206.09959; generic discovery finds the local
    ones). The block cuts its map into windows and its ``attn`` attends within each, but the queries are not the window's
    own: one pooled grid of the whole stage map (the global query), the same for every window. Query i's weights make the
    output at window cell i, where the block's ``window_reverse`` puts it; so a row is placed at the output cell it makes,
    by the block's own partition (provenance of the output, which generic discovery cannot follow from the queries)."""

    def build(mod: nn.Module, x: torch.Tensor, out: object, s: Stash) -> Built:
        b, H, W, _ = x.shape  # (B, H, W, C): channels last
        rec = window_record(s["attn"], b, (H, W), tuple(mod.window_size))
        rec.note = ("global query (GCViT): every window's queries are one pooled grid of the whole stage map; the row of "
                    "a cell is the weights that the output at that cell takes over its window's keys")
        return [(".attn", rec)]

    return AdapterSpec(taps={"attn": (m.attn.attn_drop, None)}, build=build, changes_input=False)  # the record is of attn: proj(A·V)


# ---- criss-cross ---------------------------------------------------------------------------------
@register_adapter("attnviz.modules.ccnet.CrissCrossAttention")
def _cca(m: nn.Module) -> AdapterSpec:
    return AdapterSpec(
        taps={"q": (m.query, None), "k": (m.key, None)},
        build=lambda mod, x, out, s: [("", CrissCross(queries=s["q"], keys=s["k"]))],
    )


# ---- pixel → region attention -------------------------------------------------------------------
@register_adapter("attnviz.modules.ocr.ObjectContext")
def _ocr(m: nn.Module) -> AdapterSpec:
    def build(mod: nn.Module, x: torch.Tensor, out: object, s: Stash) -> Built:
        b, _, h, w = x.shape
        regions = s["regions"].reshape(b, -1, h, w)  # (B, K, H, W): softmax over positions per region
        return [("", RegionAttention(region_maps=regions, pixel_weights=s["pixels"], query_hw=(h, w)))]

    return AdapterSpec(
        taps={"regions": (m.spatial_gather_module.softmax, None), "pixels": (m.object_context_block.softmax, None)},
        build=build, changes_input=False,  # out = bottleneck([context, x])
    )


# ---- spatial transformer -------------------------------------------------------------------------
@register_adapter("attnviz.modules.stn.SpatialTransformer")
def _stn(m: nn.Module) -> AdapterSpec:
    def build(mod: nn.Module, x: torch.Tensor, out: object, s: Stash) -> Built:
        theta = s["theta"]  # (B, 2, 3)
        b, c, h, w = x.shape
        oh, ow = mod.out_size or (h, w)
        grid = F.affine_grid(theta, [b, c, oh, ow], align_corners=mod.align_corners)  # same call as the module
        return [("", SamplingGrid(grid=grid, theta=theta, input_hw=(h, w), align_corners=mod.align_corners))]

    return AdapterSpec(taps={"theta": (m.head, None)}, build=build)
