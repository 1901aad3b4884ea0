"""Sweep timm's CNN / hybrid models with attention: is every attention module recorded with the right kind and geometry?

    python bench/timm_sweep.py [--max-params 30e6] [--limit N] [--per-family K] [--out bench/out/timm_sweep.json]

Every model of ``timm.list_models()`` outside the pure-transformer families is built with random weights;
those with at most ``--max-params`` parameters that contain a known attention class are captured on one
input of their default size (capped at 256). For each attention module instance the records named at its
path must include its expected kinds, with geometry that fits what the module multiplies (a channel gate
has the module's input channels, a spatial mask and a row's query grid its input size), and no record of
another kind. Window-local attention must never be drawn image-wide. A sample of models without attention
must give zero records. Results (per class and per model) go to JSON; BENCHMARKS.md quotes the totals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import attnviz  # noqa: E402

SKIP_PREFIXES = (  # pure transformers / MLPs (not CNN or hybrid), and very large or input-bound families
    "vit", "deit", "beit", "swin", "cait", "xcit", "pvt", "twins", "crossvit", "convit", "tnt", "pit_", "mvit", "eva", "flexivit", "samvit",
    "sequencer", "mixer", "resmlp", "gmlp", "gmixer", "davit", "hiera", "sam2", "focalnet", "coat_", "volo", "visformer", "gcvit",
    "nest", "jx_", "levit", "efficientvit", "tiny_vit", "vitamin", "aimv2", "naflexvit", "mambaout", "fastvit_mci", "test_",
)
# expected record kinds per attention class (qualified name); "" = no drawable map (must produce no record)
EXPECT: dict[str, set[str]] = {
    "timm.layers.squeeze_excite.SEModule": {"channel"},
    "timm.layers.squeeze_excite.EffectiveSEModule": {"channel"},
    "timm.layers.squeeze_excite.SqueezeExcite": {"channel"},
    "timm.layers.squeeze_excite.SqueezeExciteCl": {"channel"},
    "timm.models._efficientnet_blocks.SqueezeExcite": {"channel"},
    "timm.models.senet.SEModule": {"channel"},
    "timm.models.rexnet.SEModule": {"channel"},
    "timm.layers.eca.EcaModule": {"channel"},
    "timm.layers.eca.CecaModule": {"channel"},
    "timm.layers.cbam.CbamModule": {"channel", "spatial"},
    "timm.layers.cbam.LightCbamModule": {"channel", "spatial"},
    "timm.layers.global_context.GlobalContext": {"spatial", "channel"},
    "timm.layers.gather_excite.GatherExcite": {"channel", "spatial"},
    "timm.layers.selective_kernel.SelectiveKernel": {"branch"},
    "timm.layers.split_attn.SplitAttn": {"branch"},
    "timm.layers.non_local_attn.NonLocalAttn": {"affinity"},
    "timm.layers.bottleneck_attn.BottleneckAttn": {"affinity"},
    "timm.layers.halo_attn.HaloAttn": {"window"},
    "timm.layers.lambda_layer.LambdaLayer": {""},
    "timm.layers.coord_attn.CoordAttn": {"axis_gate"},
    "timm.layers.attention2d.MultiQueryAttention2d": {"affinity"},
    "timm.layers.attention2d.Attention2d": {"affinity"},
    "timm.models.maxxvit.Attention2d": {"affinity", "window"},
    "timm.models.maxxvit.AttentionCl": {"affinity", "window"},
}
NO_ATTENTION = ["resnet18", "resnet50", "mobilenetv2_100", "densenet121", "regnetx_002", "efficientnet_lite0", "convnext_atto", "dla34",
                "resnet34", "cspresnet50", "res2net50_26w_4s", "vgg11", "inception_v3", "hrnet_w18_small"]


def qualname(m: torch.nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def input_size(name: str) -> tuple[int, int]:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    size = tuple(getattr(cfg, "input_size", (3, 224, 224))[1:]) if cfg is not None else (224, 224)
    fixed = getattr(cfg, "fixed_input_size", False) if cfg is not None else False
    if fixed:
        return size  # type: ignore[return-value]
    return (min(size[0], 256), min(size[1], 256))


def qualifies(name: str, max_params: float) -> bool | None:
    """Whether the model is small enough and has a known attention class, from a build on the meta device (no memory, fast).

    ``None`` when it cannot be built there (then the real build decides).
    """
    import timm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                m = timm.create_model(name, pretrained=False)
        except Exception:  # noqa: BLE001 - any model that cannot be built on meta is decided by the real build
            return None
    n_params = sum(p.numel() for p in m.parameters())
    return n_params <= max_params and any(qualname(mod) in EXPECT for mod in m.modules())


def family(name: str) -> str:
    """The model's family prefix (``seresnext26d_32x4d`` → ``seresnext``, ``tf_efficientnet_b0`` → ``tf_efficientnet``)."""
    import re

    m = re.match(r"(tf_|timm_|gluon_|legacy_)?[a-z]+", name)
    return m.group(0) if m else name


def check_model(name: str, max_params: float) -> dict[str, Any] | None:
    import timm

    if qualifies(name, max_params) is False:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            m = timm.create_model(name, pretrained=False).eval()
        except Exception as e:
            return {"model": name, "error": f"build: {type(e).__name__}"}
    n_params = sum(p.numel() for p in m.parameters())
    if n_params > max_params:
        return None
    attn = {n: mod for n, mod in m.named_modules() if qualname(mod) in EXPECT}
    if not attn:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    def remember(n: str) -> Any:
        def hook(mod: torch.nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor):
                shapes.setdefault(n, tuple(args[0].shape))

        return hook

    hooks = [mod.register_forward_pre_hook(remember(n)) for n, mod in attn.items()]
    h, w = input_size(name)
    x = torch.randn(1, 3, h, w)
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), attnviz.capture(m) as cap:
            m(x)
    except Exception as e:
        return {"model": name, "error": f"forward: {type(e).__name__}: {str(e)[:120]}"}
    finally:
        for hk in hooks:
            hk.remove()
    secs = time.perf_counter() - t0
    results = []
    names = list(cap.records)
    for path, mod in attn.items():
        q = qualname(mod)
        want = EXPECT[q]
        if q == "timm.layers.split_attn.SplitAttn" and getattr(mod, "radix", 2) == 1:
            want = {"channel"}  # radix 1: no branches, rSoftMax is a sigmoid gate over the conv's channels (an SE gate)
        recs = [cap.records[r] for r in names if r.split("#")[0] == path or r.split("#")[0].startswith(path + ".")]
        kinds = {r.kind for r in recs}
        inp = shapes.get(path)
        ok, why = True, ""
        if not recs:
            ok = "" in want
            why = "no record" if not ok else ""
        else:
            bad = kinds - want
            if bad:
                ok, why = False, f"unexpected kinds {sorted(bad)}"
            elif inp is not None and len(inp) == 4:
                for r in recs:
                    if r.kind == "channel" and r.weights.shape[1] != inp[1] and q not in ("timm.layers.global_context.GlobalContext",):
                        ok, why = False, f"channel gate of {r.weights.shape[1]} for {inp[1]} input channels"
                    if r.kind == "spatial" and tuple(r.mask.shape[1:]) != tuple(inp[2:]):
                        ok, why = False, f"spatial mask {tuple(r.mask.shape[1:])} for a {tuple(inp[2:])} input"
                    if r.kind == "affinity" and q in ("timm.layers.non_local_attn.NonLocalAttn", "timm.layers.bottleneck_attn.BottleneckAttn") \
                            and tuple(r.query_hw) != tuple(inp[2:]):
                        ok, why = False, f"query grid {r.query_hw} for a {tuple(inp[2:])} input"
                    if q == "timm.layers.halo_attn.HaloAttn" and (r.key_hw != tuple(inp[2:]) or r.query_hw != (inp[2] // mod.block_stride,
                                                                                                   inp[3] // mod.block_stride)):
                        ok, why = False, f"halo windows from a {r.query_hw} query grid over {r.key_hw} keys for a {tuple(inp[2:])} input"
        results.append({"module": path, "class": q, "kinds": sorted(kinds), "ok": ok, "why": why})
    return {"model": name, "params_m": round(n_params / 1e6, 2), "capture_s": round(secs, 3), "modules": results,
            "seen": len(cap.seen)}


def main() -> int:
    import timm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-params", type=float, default=30e6)
    p.add_argument("--limit", type=int, default=0, help="stop after this many qualifying models (0 = all)")
    p.add_argument("--per-family", type=int, default=0, help="check at most this many qualifying models per family prefix (0 = all)")
    p.add_argument("--only", default="", help="comma-separated model names to check instead of the sweep")
    p.add_argument("--out", default="bench/out/timm_sweep.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    names = args.only.split(",") if args.only else [n for n in timm.list_models() if not n.startswith(SKIP_PREFIXES)]
    per_class: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    models, failures, errors = [], [], []
    t0 = time.time()
    per_family: dict[str, int] = defaultdict(int)
    for i, name in enumerate(names):
        if args.per_family and per_family[family(name)] >= args.per_family:
            continue
        res = check_model(name, args.max_params)
        if res is None:
            continue
        if "error" in res:
            errors.append(res)
            continue
        models.append(res)
        per_family[family(name)] += 1
        for mod in res["modules"]:
            per_class[mod["class"]][0] += mod["ok"]
            per_class[mod["class"]][1] += 1
            if not mod["ok"]:
                failures.append({"model": name, **mod})
        if len(models) % 20 == 0:
            done = sum(v[0] for v in per_class.values())
            total = sum(v[1] for v in per_class.values())
            print(f"{len(models)} models ({i + 1}/{len(names)} names, {time.time() - t0:.0f} s): {done}/{total} modules right", flush=True)
        if args.limit and len(models) >= args.limit:
            break
    no_attn = {}
    for name in NO_ATTENTION:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = timm.create_model(name, pretrained=False).eval()
        with torch.no_grad(), attnviz.capture(m) as cap:
            m(torch.randn(1, 3, *input_size(name)))
        no_attn[name] = len(cap.records)
    right = sum(v[0] for v in per_class.values())
    total = sum(v[1] for v in per_class.values())
    summary = {
        "models": len(models), "attention_modules": total, "right": right, "share_right": round(right / max(total, 1), 4),
        "per_class": {k: {"right": v[0], "total": v[1]} for k, v in sorted(per_class.items())},
        "models_without_attention": no_attn, "records_on_models_without_attention": sum(no_attn.values()),
        "build_or_forward_errors": errors, "seconds": round(time.time() - t0, 1), "per_family_limit": args.per_family,
        "families": len(per_family) if args.per_family else len({family(m["model"]) for m in models}),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "failures": failures, "models": models}, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("build_or_forward_errors",)}, indent=1))
    print(f"{len(failures)} modules wrong; first ones:")
    for f in failures[:25]:
        print(" ", f["model"], f["module"], f["class"].rsplit(".", 1)[-1], f["kinds"], f["why"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
