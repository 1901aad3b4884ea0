"""Command line: ``attnviz inspect | train | evaluate | models``."""

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


def build_parser() -> argparse.ArgumentParser:
    """The ``attnviz`` argument parser."""
    p = argparse.ArgumentParser(prog="attnviz", description="Look inside CNN attention modules.")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="list the attention maps a model produces")
    ins.add_argument("--model", required=True, help="package.module:factory")
    ins.add_argument("--size", type=int, default=224, help="input side in pixels")
    ins.add_argument("--generic", choices=["auto", "all", "off"], default="auto")
    ins.set_defaults(func=cmd_inspect)
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
