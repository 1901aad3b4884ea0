"""Command line: ``attnviz inspect | serve | video | train | evaluate | models``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

import torch
from torch import nn


def load_factory(spec: str) -> nn.Module:
    """Build a model from ``package.module:factory`` (a class or a function without arguments)."""
    if ":" not in spec:
        raise SystemExit(f"--model must look like package.module:factory, got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"cannot load {spec!r}: {e}") from None
    model = obj()
    if not isinstance(model, nn.Module):
        raise SystemExit(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def cmd_inspect(args: argparse.Namespace) -> int:
    """Run one random input through a model and list every captured record."""
    from .capture import capture

    model = load_factory(args.model).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with torch.no_grad(), capture(model, generic=args.generic) as cap:
        model(x)
    if not cap.records:
        print("no attention modules found")
        return 0
    print(f"{'name':48s} {'kind':16s} {'module':24s} {'source':8s} shape / contribution")
    for name, rec in cap.records.items():
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in rec.arrays().items() if k != "contribution")
        c = "" if rec.contribution is None else f"  ‖Δ‖/‖x‖={rec.contribution.mean():.3f}"
        print(f"{name:48s} {rec.kind:16s} {rec.module_type:24s} {rec.source:8s} {shapes}{c}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Print the registry with each model's status."""
    from .models import available

    for info in available():
        status = "ready" if info.available else f"unavailable: {info.reason}"
        print(f"{info.name:18s} {info.source:12s} {status}")
    return 0


def load_user_model(spec: str, weights: str | None = None, labels: str | None = None, input_size: int | None = None) -> nn.Module:
    """A researcher's model for the app: factory, optional weights (safetensors or tensor-only .pt), labels."""
    model = load_factory(spec)
    if weights:
        from pathlib import Path

        path = Path(weights)
        if not path.is_file():
            raise SystemExit(f"--weights {weights}: no such file")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles objects
            except Exception as e:
                raise SystemExit(f"--weights {weights}: not a tensor-only checkpoint ({e}); use safetensors") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SystemExit(f"--weights {weights} does not fit {spec}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    card = dict(getattr(model, "card", None) or {})
    if labels:
        names = [ln.strip() for ln in open(labels, encoding="utf-8") if ln.strip()]
        if not names:
            raise SystemExit(f"--labels {labels} has no labels (one per line)")
        card["class_names"] = names
    if input_size:
        card["input_size"] = [input_size, input_size]
    card.setdefault("name", spec)
    model.card = card  # type: ignore[assignment]
    return model.eval()


def cmd_serve(args: argparse.Namespace) -> int:
    """Open the app on the user's model (and, unless --only, the zoo and ImageNet models)."""
    import os

    from .ui import build_demo

    models = {}
    if args.model:
        model = load_user_model(args.model, args.weights, args.labels, args.input_size)
        models[args.model.split(":", 1)[1]] = model
    demo = build_demo(models=models, include_registry=not args.only)
    demo.launch(server_name=args.host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=args.port, ssr_mode=False)
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    """Render one attention map over every frame of a clip (MP4 + NPZ + CSV)."""
    from tqdm import tqdm

    from .video import VideoError, analyze_video

    if ":" in args.model:
        model = load_user_model(args.model)
    else:
        from .models import load_pretrained
        from .models.inputs import pick_device

        try:
            model = load_pretrained(args.model, device=pick_device())
        except Exception as e:
            raise SystemExit(str(e)) from None
    bar = tqdm(unit="frame", desc="video", dynamic_ncols=True)

    def progress(done: int, total: int, stage: str) -> None:
        bar.total = total or None
        bar.set_description(stage)
        bar.n = done
        bar.refresh()

    vrange = (args.vmin, args.vmax) if args.vmin is not None and args.vmax is not None else None
    try:
        res = analyze_video(args.input, model, kind=args.kind, layer=args.layer, query=tuple(args.query) if args.query else None,
                            out=args.out, stride=args.stride, max_frames=args.max_frames, batch_size=args.batch_size,
                            vrange=vrange, cmap=args.cmap, alpha=args.alpha, progress=progress)
    except VideoError as e:
        bar.close()
        raise SystemExit(f"error: {e}") from None
    bar.close()
    print(f"{res.frames} frames, layer {res.layer}, colour scale {res.vrange}: {res.video}, {res.npz}, {res.csv}")
    for n in res.notes:
        print("note:", n)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``attnviz`` argument parser."""
    p = argparse.ArgumentParser(prog="attnviz", description="Look inside CNN attention modules.")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="list the attention maps a model produces")
    ins.add_argument("--model", required=True, help="package.module:factory")
    ins.add_argument("--size", type=int, default=224, help="input side in pixels")
    ins.add_argument("--generic", choices=["auto", "all", "off"], default="auto")
    ins.set_defaults(func=cmd_inspect)
    sv = sub.add_parser("serve", help="open the web app, optionally on your own model")
    sv.add_argument("--model", default=None, help="package.module:factory of your model")
    sv.add_argument("--weights", default=None, help="FILE.safetensors (or a tensor-only .pt)")
    sv.add_argument("--labels", default=None, help="text file with one class name per line")
    sv.add_argument("--input-size", type=int, default=None, help="square input side (default: the model card's, else 224)")
    sv.add_argument("--only", action="store_true", help="offer only --model, not the zoo and ImageNet models")
    sv.add_argument("--host", default=None)
    sv.add_argument("--port", type=int, default=7860)
    sv.set_defaults(func=cmd_serve)
    vd = sub.add_parser("video", help="attention over time: an overlay video, NPZ and CSV")
    vd.add_argument("input", help="mp4 / webm / mov / gif")
    vd.add_argument("--model", required=True, help="zoo or ImageNet model name, or package.module:factory")
    vd.add_argument("--kind", default="spatial", choices=["spatial", "channel", "grid", "query"])
    vd.add_argument("--layer", default=None, help="default: the deepest layer of that kind")
    vd.add_argument("--query", type=float, nargs=2, metavar=("X", "Y"), help="query pixel for --kind query")
    vd.add_argument("--out", default="attnviz_video.mp4")
    vd.add_argument("--stride", type=int, default=1)
    vd.add_argument("--max-frames", type=int, default=900)
    vd.add_argument("--batch-size", type=int, default=None)
    vd.add_argument("--vmin", type=float, default=None, help="fixed colour scale (with --vmax); default: over the clip")
    vd.add_argument("--vmax", type=float, default=None)
    vd.add_argument("--cmap", default="inferno")
    vd.add_argument("--alpha", type=float, default=0.55)
    vd.set_defaults(func=cmd_video)
    from . import train as train_mod

    tr = sub.add_parser("train", help="train a zoo model on generated scenes")
    train_mod.build_parser(tr)
    tr.set_defaults(func=lambda a: (setattr(a, "argv", sys.argv[2:]), train_mod.train(a), 0)[-1])
    from . import evaluate as eval_mod

    ev = sub.add_parser("evaluate", help="accuracy and map faithfulness of a zoo model on test scenes")
    eval_mod.build_parser(ev)
    ev.set_defaults(func=eval_mod.run)
    ls = sub.add_parser("models", help="list every model and whether it can be loaded here")
    ls.set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnviz`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
