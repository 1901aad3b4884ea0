"""Command line: ``attnviz analyze | inspect | serve | video | atlas | download | train | evaluate | models``.

``--model`` means the same in every subcommand: a registry name (``attnviz models`` lists them),
``package.module:factory`` for your own code (with ``--model-kwargs`` for the factory's arguments), or ``hf:REPO_ID``
(a Hugging Face ``transformers`` vision model, downloaded and cached by the hub, or ``hf:/a/local/folder``).
Errors end in one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_HELP = "a registry name (see `attnviz models`), package.module:factory of your own model, or hf:REPO_ID (Hugging Face transformers)"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def load_factory(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build a model from ``package.module:factory`` (a class or function), called with ``kwargs``."""
    if ":" not in spec:
        raise SystemExit(f"--model must be a registry name or look like package.module:factory, got {spec!r} (see `attnviz models`)")
    mod_name, attr = spec.split(":", 1)
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"cannot load {spec!r}: {_one_line(e)}") from None
    try:
        model = obj(**(kwargs or {}))
    except Exception as e:
        hint = ""
        if "urlopen" in str(e) or "URLError" in type(e).__name__ or "Connection" in type(e).__name__ or "download" in str(e).lower():
            hint = " — it tried to download weights; offline, pass --model-kwargs '{\"weights\": null, \"weights_backbone\": null}' (torchvision)"
        raise SystemExit(f"cannot build {spec}: {_one_line(e)}{hint}") from None
    if not isinstance(model, nn.Module):
        raise SystemExit(f"{spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``--model-kwargs`` JSON object → dict (``null`` becomes None)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--model-kwargs must be a JSON object, e.g. '{{\"weights\": null}}': {e}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"--model-kwargs must be a JSON object, got {type(value).__name__}")
    return value


def load_user_model(spec: str, weights: str | None = None, labels: str | None = None, input_size: int | None = None,
                    kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A researcher's model: factory (+ kwargs), optional weights (safetensors or tensor-only .pt), labels."""
    model = load_factory(spec, kwargs)
    if weights:
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
                raise SystemExit(f"--weights {weights}: not a tensor-only checkpoint ({_one_line(e)}); use safetensors") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SystemExit(f"--weights {weights} does not fit {spec}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    card = dict(getattr(model, "card", None) or {})
    if labels:
        names = [ln.strip() for ln in Path(labels).read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not names:
            raise SystemExit(f"--labels {labels} has no labels (one per line)")
        card["class_names"] = names
    if input_size:
        card["input_size"] = [input_size, input_size]
    card.setdefault("name", spec)
    model.card = card  # type: ignore[assignment]
    return model.eval()


def resolve_model(args: argparse.Namespace) -> tuple[str, nn.Module]:
    """``--model`` as a registry name or a factory (the same rules in every subcommand)."""
    spec = args.model
    if spec.startswith("hf:"):
        from .models.hf import HFUnavailable, load_hf

        try:
            model = load_hf(spec)
        except HFUnavailable as e:
            raise SystemExit(f"error: {e}") from None
        if getattr(args, "input_size", None):
            model.card["input_size"] = [args.input_size, args.input_size]
        return spec, model
    if ":" in spec:
        model = load_user_model(spec, getattr(args, "weights", None), getattr(args, "labels", None), getattr(args, "input_size", None),
                                parse_kwargs(getattr(args, "model_kwargs", None)))
        return spec.split(":", 1)[1], model
    from .models import available, load_pretrained

    names = [i.name for i in available()]
    if spec not in names:
        raise SystemExit(f"unknown model {spec!r}: use a registry name ({', '.join(names)}) or package.module:factory")
    try:
        return spec, load_pretrained(spec, weights=getattr(args, "weights", None))
    except Exception as e:
        raise SystemExit(f"{spec}: {_one_line(e)}") from None


def _add_model(p: argparse.ArgumentParser, required: bool = True, factory_options: bool = True) -> None:
    p.add_argument("--model", required=required, default=None, help=MODEL_HELP)
    if factory_options:
        p.add_argument("--model-kwargs", default=None, help="JSON object of keyword arguments for a package.module:factory (e.g. '{\"weights\": null}')")
        p.add_argument("--weights", default=None, help="weights file: FILE.safetensors or a tensor-only .pt (never unpickled)")
        p.add_argument("--labels", default=None, help="text file with one class name per line (your own model)")
        p.add_argument("--input-size", type=int, default=None, help="square input side in pixels (default: the model card's, else 224)")


# ---------------------------------------------------------------------------------------------- commands
def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyse one image: print the prediction and the click's answer, write the same bundle as the app's export."""
    from .analysis import Catalog, Engine, Entry, Style, UserError, export_bundle
    from .analysis.views import click as click_view
    from .analysis.views import modules
    from .models.inputs import pick_device

    name, model = resolve_model(args)
    eng = Engine(Catalog([Entry(name, True, loader=lambda: model)], pick_device(args.device)))
    click = None
    if args.click:
        try:
            x, y = (float(v) for v in args.click.split(","))
        except ValueError:
            raise SystemExit(f"--click must be X,Y in image pixels, got {args.click!r}") from None
        click = (x, y)
    try:
        a = eng.analyze(args.image, name)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = export_bundle(a, click, args.layer, Style(cmap=args.cmap), folder=out_dir)
        summary = modules.summary(a)
        print(modules.status_line(a))
        for n in a.notes:
            print("note:", n)
        if a.task == "segmentation":
            print("classes present (share of the image):", json.dumps(a.top(10)))
        else:
            top = json.dumps({k: round(v, 4) for k, v in a.top(5).items()})  # (probabilities to 4 decimals)
            print("prediction:", top if a.task == "classification" else f"none: a backbone with {a.logits.numel()} features, no classes")
        if click is not None and click_view.click_choices(a):
            _, info, _ = click_view.attention_at(a, click[0], click[1], args.layer)
            print(info["text"].replace("**", ""))
        elif click is not None:
            print(f"no click layer in {name}: {summary['kinds'] or 'no attention modules'}")
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Run one input through a model and list every record, and every watched op seen but not drawn."""
    from .inspect import inspect as run_inspect

    _, model = resolve_model(args)
    try:
        shape = tuple(int(v) for v in args.input.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--input must look like 1x3x224x224, got {args.input!r}") from None
    if args.size:
        shape = (1, 3, args.size, args.size)
    try:
        report = run_inspect(model, torch.randn(*shape), generic=args.generic)
    except Exception as e:  # the model's own forward failed on this input: one line, with what the model said
        raise SystemExit(f"{type(model).__name__} failed on a {'×'.join(map(str, shape))} input: {type(e).__name__}: "
                         f"{' '.join(str(e).split()) or 'no message'} (try another --size or --input)") from None
    print(report.table())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Print the registry with each model's status."""
    from .models import available

    for info in available():
        status = "ready" if info.available else f"unavailable: {info.reason}"
        print(f"{info.name:28s} {info.source:15s} {info.task:15s} {status}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch registry weights into the local cache (progress bar, sha256 check)."""
    from .models.hub import DownloadError
    from .models.registry import download

    failed = 0
    for name in args.names:
        try:
            path = download(name, progress=True)
            print(f"{name}: {path}")
        except DownloadError as e:
            print(str(e), file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Open the app on your model (and, unless --only, the registry's)."""
    import os

    from .ui import build_demo
    from .ui.app import launch_kwargs

    models = {}
    if args.model:
        name, model = resolve_model(args)
        models[name] = model
    demo = build_demo(models=models, include_registry=not args.only)
    demo.launch(server_name=args.host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=args.port, css=demo.attnviz_css,  # type: ignore[attr-defined]
                **launch_kwargs())
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    """Render one attention map over every frame of a clip (MP4 + NPZ + CSV)."""
    from tqdm import tqdm

    from .models.inputs import pick_device
    from .video import VideoError, analyze_video

    _, model = resolve_model(args)
    model = model.to(pick_device(args.device))
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
                            vrange=vrange, cmap=args.cmap, alpha=args.alpha, progress=progress, head=args.head)
    except VideoError as e:
        bar.close()
        raise SystemExit(f"error: {e}") from None
    bar.close()
    lo, hi = res.vrange
    print(f"{res.frames} frames, {res.kind} of {res.layer}, colour scale {lo:.4g}–{hi:.4g}: {res.video}, {res.npz}, {res.csv}")
    for n in res.notes:
        print("note:", n)
    return 0


def cmd_atlas(args: argparse.Namespace) -> int:
    """Dataset-level statistics of every attention layer: Parquet tables, atlas.json and report.html in --out."""
    from tqdm import tqdm

    from .atlas import AtlasError, AtlasOptions, run_atlas, scan_folder, scene_source

    if (args.data is None) == (args.scenes is None):
        raise SystemExit("error: give --data DIR (an image folder) or --scenes N (generated scenes), not both")
    name, model = resolve_model(args)
    bar = tqdm(unit="img", desc="atlas", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    opts = AtlasOptions(engine=args.engine, batch_size=args.batch_size, workers=args.workers, ray_address=args.ray_address,
                        device=args.device, amp=args.amp, resume=args.resume, seed=args.seed, model_name=name)
    try:
        if args.data is not None:
            source = scan_folder(args.data, args.masks)
        else:
            task = str((getattr(model, "card", None) or {}).get("task", "classification"))
            source = scene_source(args.scenes, args.families, task, args.seed)
        info = run_atlas(model, source, args.out, opts, progress)
    except (AtlasError, RuntimeError) as e:
        bar.close()
        raise SystemExit(f"error: {_one_line(e) if not isinstance(e, AtlasError) else e}") from None
    bar.close()
    c = info["counts"]
    print(f"{c['images']} images ({c['skipped']} skipped), {c['records']} layers → {Path(args.out) / 'report.html'}")
    for key in ("accuracy", "miou"):
        if key in info["metrics"]:
            print(f"{key}: {info['metrics'][key]:.4f}")
    return 0


def _atlas_arguments(at: argparse.ArgumentParser) -> None:
    """Arguments of ``attnviz atlas``."""
    _add_model(at)
    at.add_argument("--data", default=None, help="image folder; class sub-folders give labels (as torchvision's ImageFolder)")
    at.add_argument("--masks", default=None, help="folder of per-pixel label maps named after the images' stems (0 = background, 255 = ignore)")
    at.add_argument("--scenes", type=int, default=None, help="use N generated test scenes with their truth instead of --data")
    at.add_argument("--families", nargs="+", default=None, help="background families of --scenes (default: all)")
    at.add_argument("--out", required=True, help="output folder (per_image/gates/attention.parquet, atlas.json, report.html)")
    at.add_argument("--engine", choices=["local", "ray"], default="local", help="local (default) or ray (Ray Data; pip install 'attnviz[ray]')")
    at.add_argument("--ray-address", default=None, help="join this Ray cluster (default: start Ray on this machine)")
    at.add_argument("--batch-size", type=int, default=16, help="images per batch (one shard); keep it when resuming")
    at.add_argument("--workers", type=int, default=None, help="decoding processes (local) or actors (ray); default: cores − 1")
    at.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    at.add_argument("--amp", action="store_true", help="autocast on CUDA")
    at.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its finished shards")
    at.add_argument("--seed", type=int, default=0, help="seed of the random query pairs and of --scenes")
    at.set_defaults(func=cmd_atlas)


def build_parser() -> argparse.ArgumentParser:
    """The ``attnviz`` argument parser."""
    p = argparse.ArgumentParser(prog="attnviz", description="Look inside CNN attention modules.")
    sub = p.add_subparsers(dest="command", required=True)
    an = sub.add_parser("analyze", help="one image: prediction, the click's answer, and the export bundle (zip)")
    an.add_argument("image", help="image file (PNG, JPEG, WebP, GIF, BMP, TIFF)")
    _add_model(an)
    an.add_argument("--click", default=None, help="X,Y pixel to click, in the image's own pixels (e.g. 32,40)")
    an.add_argument("--layer", default=None, help="click layer (default: the deepest)")
    an.add_argument("--cmap", default="inferno", help="colormap of the overlays")
    an.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    an.add_argument("--out", default="attnviz_out", help="folder for the bundle")
    an.set_defaults(func=cmd_analyze)
    ins = sub.add_parser("inspect", help="every map a model produces, and every op seen but not drawn (with the reason)")
    _add_model(ins)
    ins.add_argument("--input", default="1x3x224x224", help="input shape BxCxHxW of the random probe input")
    ins.add_argument("--size", type=int, default=None, help="shortcut for --input 1x3xSIZExSIZE")
    ins.add_argument("--generic", choices=["auto", "all", "off"], default="auto", help="generic discovery: auto (default), all modules, or adapters only")
    ins.set_defaults(func=cmd_inspect)
    sv = sub.add_parser("serve", help="open the web app, optionally on your own model")
    _add_model(sv, required=False)
    sv.add_argument("--only", action="store_true", help="offer only --model, not the registry's models")
    sv.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1, or $GRADIO_SERVER_NAME)")
    sv.add_argument("--port", type=int, default=7860, help="port")
    sv.set_defaults(func=cmd_serve)
    vd = sub.add_parser("video", help="attention over time: an overlay video, NPZ and CSV")
    vd.add_argument("input", help="mp4 / webm / mov / gif")
    _add_model(vd)
    vd.add_argument("--kind", default=None, choices=["spatial", "channel", "grid", "query", "segmentation", "cls", "rollout"],
                    help="map to draw (default: the first the model has); transformers: query (a patch), cls (the class token in one "
                         "layer) or rollout (the class token's rollout up to that layer)")
    vd.add_argument("--layer", default=None, help="default: the deepest layer of that kind")
    vd.add_argument("--head", type=int, default=None, help="one attention head for --kind query or cls (DINO shows each head); default: their mean")
    vd.add_argument("--query", type=float, nargs=2, metavar=("X", "Y"), help="query pixel (frame pixels) for --kind query/segmentation")
    vd.add_argument("--out", default="attnviz_video.mp4", help="output MP4 (NPZ and CSV are written next to it)")
    vd.add_argument("--stride", type=int, default=1, help="use every n-th frame")
    vd.add_argument("--max-frames", type=int, default=900, help="refuse clips that would use more frames")
    vd.add_argument("--batch-size", type=int, default=None, help="frames per forward (default 8 on CPU, 32 on GPU)")
    vd.add_argument("--vmin", type=float, default=None, help="fixed colour scale (with --vmax); default: over the clip")
    vd.add_argument("--vmax", type=float, default=None, help="upper end of a fixed colour scale")
    vd.add_argument("--cmap", default="inferno", help="colormap")
    vd.add_argument("--alpha", type=float, default=0.55, help="overlay opacity")
    vd.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    vd.set_defaults(func=cmd_video)
    dl = sub.add_parser("download", help="fetch the weights of registry models into the local cache")
    dl.add_argument("names", nargs="+", help="registry names (see `attnviz models`)")
    dl.set_defaults(func=cmd_download)
    from . import train as train_mod

    tr = sub.add_parser("train", help="train a zoo model on generated scenes")
    train_mod.build_parser(tr)
    tr.set_defaults(func=lambda a: (setattr(a, "argv", sys.argv[2:]), train_mod.train(a), 0)[-1])
    from . import evaluate as eval_mod

    ev = sub.add_parser("evaluate", help="accuracy / mIoU and map faithfulness of a zoo model, per background family")
    eval_mod.build_parser(ev)
    ev.set_defaults(func=eval_mod.run)
    _atlas_arguments(sub.add_parser("atlas", help="dataset-level attention statistics: Parquet tables and report.html (local or Ray)"))
    ls = sub.add_parser("models", help="list every model and whether it can be loaded here")
    ls.set_defaults(func=cmd_models)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnviz`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
