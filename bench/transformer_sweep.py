"""Sweep timm's transformer and hybrid families: is every attention unit drawn, and drawn at the right cells?

    python bench/transformer_sweep.py [--max-params 30e6] [--families vit,deit,...] [--out bench/out/transformer_sweep.json]

One model per family (the smallest of its first names with at most ``--max-params`` parameters), random weights, its
default input size. Units are found independently of attnviz's capture code: a copy of the model runs its explicit path
(``fused_attn = False`` wherever a module has that switch) under a ``TorchFunctionMode`` that records, per innermost
module, every softmax output with three or more dims, and for a fused ``scaled_dot_product_attention`` that remains, the
weights it computes (softmax of scale · q·kᵀ + mask, from the op's own arguments). A unit is a module whose forward
made such a tensor.

The same weights are captured on the default (fused) path. Per unit: *drawn* (a record named after the module),
*seen, not drawn* (listed with a reason) or *missed*. Geometry is checked against the unit's own tensor where the
architecture defines its token order as row-major patches after the prefix tokens (ViT-like families, and flattened
feature maps in hybrids): the record's row of several query cells and its class-token row must equal the row of one of
the unit's tensors or of the weights the module multiplies its values by (a renormalised mix of softmaxes, as ConViT's),
mapped by that definition (≤ 1e-4); class attention (one class-token query over the class token and s×s patches) must
equal the heads' mean over the patches. Units of other families (windows, pooled or shuffled tokens) are counted as checked
for kind only; the dedicated tests cover Swin, EfficientViT, MobileViT, MaxViT, XCiT and EdgeNeXt geometry.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import attnviz  # noqa: E402

FAMILIES = ["vit", "deit", "deit3", "beit", "beitv2", "eva02", "cait", "xcit", "swin", "swinv2", "pvt_v2", "twins", "levit", "pit", "tnt",
            "crossvit", "convit", "gcvit", "efficientvit", "fastvit", "mobilevit", "mobilevitv2", "edgenext", "nextvit", "tiny_vit", "hiera",
            "coat", "davit", "maxvit", "coatnet", "volo", "sequencer", "poolformer", "flexivit", "vitamin", "mvitv2"]
ROW_MAJOR = {"vit", "deit", "deit3", "beit", "beitv2", "eva02", "cait", "pit", "crossvit", "convit", "flexivit", "tnt", "levit", "xcit",
             "coatnet", "vitamin", "volo"}
TOL = 1e-4


def _units_oracle(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
    """Per innermost module path, the attention tensors its explicit path computes (see the module docstring), and the
    left operands of its matmuls with three or more dims (the weights that multiply the values: a mix of softmaxes
    such as ConViT's is drawn as that mix)."""
    oracle = copy.deepcopy(model).eval()
    for m in oracle.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    names = {m: n for n, m in oracle.named_modules()}
    for m in oracle.modules():  # a softmax module belongs to the module that calls it (its attention)
        for child in m.children():
            if isinstance(child, nn.Softmax):
                names[child] = names[m]
    stack: list[str] = []
    handles = []
    def enter(mod: nn.Module, args: Any) -> None:
        stack.append(names[mod])

    def leave(mod: nn.Module, args: Any, out: Any) -> None:
        stack.pop()

    for m in oracle.modules():
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    found: dict[str, list[torch.Tensor]] = defaultdict(list)
    used: dict[str, list[torch.Tensor]] = defaultdict(list)

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = getattr(func, "__name__", "")
            where = stack[-1] if stack else ""
            if name == "softmax" and isinstance(out, torch.Tensor) and out.ndim >= 3 and out.shape[-1] > 1:
                found[where].append(out.detach().clone())
            elif name in ("matmul", "__matmul__") and isinstance(args[0], torch.Tensor) and args[0].ndim >= 3:
                used[where].append(args[0].detach().clone())
            elif name == "scaled_dot_product_attention":
                q, k = args[0], args[1]
                mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
                scale = kwargs.get("scale") or 1 / math.sqrt(q.shape[-1])
                with torch._C.DisableTorchFunction():
                    logits = (q.float() @ k.float().transpose(-1, -2)) * scale
                    if mask is not None:
                        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
                    found[where].append(logits.softmax(-1))
            return out

    try:
        with torch.no_grad(), Watch():
            oracle(x)
    finally:
        for h in handles:
            h.remove()
    return dict(found), dict(used)


def _rows_match(rec: Any, a: torch.Tensor) -> bool | None:
    """Row-major check of a token / affinity record against the unit's tensor ``a`` (B, heads, N, M); None if not applicable."""
    if a.ndim == 4 and a.shape[-2] == 1 and rec.kind == "spatial":  # class attention: one class-token query over cls ⊕ s×s patches
        s = math.isqrt(a.shape[-1] - 1)
        if s * s != a.shape[-1] - 1 or tuple(rec.mask.shape[1:]) != (s, s):
            return False
        return torch.allclose(rec.mask[0].float(), a[0, :, 0, 1:].mean(0).reshape(s, s), atol=TOL, rtol=0)
    if a.ndim != 4 or not hasattr(rec, "query_hw") or not hasattr(rec, "row"):
        return None
    (h, w), (hk, wk) = rec.query_hw, rec.key_hw
    pq, pk = len(getattr(rec, "query_prefix", []) or []), len(getattr(rec, "key_prefix", []) or [])
    if a.shape[-2] != pq + h * w or a.shape[-1] != pk + hk * wk:
        return False
    for y, xx in {(0, 0), (h - 1, w - 1), (h // 2, w // 3), (h // 3, w - 1)}:
        ref = a[0, :, pq + y * w + xx, pk:].mean(0).reshape(hk, wk)
        if not torch.allclose(rec.row(y, xx).float(), ref, atol=TOL, rtol=0):
            return False
    if pq:
        ref = a[0, :, 0, pk:].mean(0).reshape(hk, wk)
        if not torch.allclose(rec.prefix_row(0).float(), ref, atol=TOL, rtol=0):
            return False
    return True


def _belongs(record: str, unit: str) -> bool:
    """A record of the unit: named after its module, or after it plus a kind suffix (``attn.channel_affinity``)."""
    base = record.split("#")[0]
    return base == unit or (base.startswith(unit + ".") and "." not in base[len(unit) + 1:])


def pick(family: str, max_params: float) -> str | None:
    """The smallest of ten of the family's model names (small-sounding ones first) with at most ``max_params`` parameters
    (built on the meta device)."""
    import timm

    small = ("pico", "nano", "atto", "femto", "xxs", "tiny", "xs", "small", "_s", "b0", "t_", "_t")
    names = sorted(timm.list_models(f"{family}_*"), key=lambda n: next((i for i, k in enumerate(small) if k in n), len(small)))
    best: tuple[int, str] | None = None
    for name in names[:10]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with torch.device("meta"):
                    n_params = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
            except Exception:  # noqa: BLE001 - a name that cannot be built is skipped
                continue
        if n_params <= max_params and (best is None or n_params < best[0]):
            best = (n_params, name)
    return best[1] if best else None


def check(family: str, name: str) -> dict[str, Any]:
    import timm

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False).eval()
    size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
    x = torch.randn(1, 3, *size)
    try:
        units, used = _units_oracle(model, x)
        with torch.no_grad(), attnviz.capture(model) as cap:
            model(x)
    except Exception as e:  # noqa: BLE001 - reported per model
        return {"family": family, "model": name, "error": f"{type(e).__name__}: {str(e)[:160]}"}
    seen = {s["module"] for s in cap.seen_not_drawn()}
    rows = []
    for path, tensors in units.items():
        recs = [r for n, r in cap.records.items() if _belongs(n, path)]
        status = "drawn" if recs else "seen" if path in seen else "missed"
        geometry = None
        if recs and family in ROW_MAJOR:
            checks = []
            for r in recs:  # right when the rows are those of one of the unit's softmaxes or of the weights it multiplies by
                got = [_rows_match(r, a) for a in (*tensors, *used.get(path, []))]
                if any(g is not None for g in got):
                    checks.append(any(got))
            geometry = all(checks) if checks else None
        rows.append({"unit": path, "calls": len(tensors), "shape": list(tensors[0].shape), "status": status,
                     "kinds": sorted({r.kind for r in recs}), "geometry": geometry,
                     "reason": next((s["reason"] for s in cap.seen_not_drawn() if s["module"] == path), "")})
    extra = sorted({f"{n.split('#')[0]} ({r.kind})" for n, r in cap.records.items() if not any(_belongs(n, u) for u in units)})
    return {"family": family, "model": name, "units": rows, "records_without_unit": extra}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-params", type=float, default=30e6)
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--out", default="bench/out/transformer_sweep.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    results = []
    for fam in args.families.split(","):
        name = pick(fam, args.max_params)
        if name is None:
            results.append({"family": fam, "model": None, "error": "no model of this family within the parameter limit"})
            continue
        res = check(fam, name)
        results.append(res)
        units = res.get("units", [])
        tally = {s: sum(u["status"] == s for u in units) for s in ("drawn", "seen", "missed")}
        geo = [u["geometry"] for u in units if u["geometry"] is not None]
        print(f"{fam:12s} {name:40s} units {len(units):3d}  drawn {tally['drawn']:3d}  seen {tally['seen']:3d}  missed {tally['missed']:3d}  "
              f"geometry checked {len(geo):3d} wrong {sum(not g for g in geo)}  {res.get('error', '')}", flush=True)
    units = [u for r in results for u in r.get("units", [])]
    geo = [u["geometry"] for u in units if u["geometry"] is not None]
    summary = {
        "families": len(results), "models": sum(1 for r in results if r.get("units") is not None),
        "units": len(units), "drawn": sum(u["status"] == "drawn" for u in units), "seen_not_drawn": sum(u["status"] == "seen" for u in units),
        "missed": sum(u["status"] == "missed" for u in units), "geometry_checked": len(geo), "geometry_wrong": sum(not g for g in geo),
        "records_without_unit": sum(len(r.get("records_without_unit", [])) for r in results),  # e.g. SE gates (sigmoid, not a unit here)
        "errors": [r for r in results if "error" in r], "seconds": round(time.time() - t0, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "models": results}, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}, indent=1))
    for e in summary["errors"]:
        print("error:", e["family"], e.get("model"), e["error"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
