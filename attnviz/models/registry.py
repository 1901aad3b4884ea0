"""Model registry: our zoo (shipped in ``pretrained/``), ImageNet models from timm / torchvision, and
published mmsegmentation checkpoints (:mod:`attnviz.models.mmseg`).

Listing and loading never touch the network: weights come from the local caches (attnviz's own for
mmsegmentation checkpoints, the Hugging Face cache for timm, ``torch.hub`` for torchvision) or from a
file the user gives. Downloads happen only on request (:mod:`attnviz.models.hub`: ``attnviz download``,
or the app when a model that is not cached yet is chosen); a model that is not here is listed with a
one-line reason and how to get it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .hub import DownloadError, Progress, Remote, cached, fetch, offline
from .mmseg import MMSEG, load_mmseg
from .mmseg import resolve as resolve_mmseg
from .seg_zoo import SEG_INPUT_SIZE, SEG_ZOO, build_seg
from .zoo import INPUT_SIZE, ZOO, build

ZOO_TRAINED_ON = "64×64 synthetic scenes of one Fashion-MNIST item (10 clothing classes); not natural photos"
SEG_TRAINED_ON = "128×128 synthetic scenes of 1–6 Fashion-MNIST items (background + 10 clothing classes); not natural photos"

PRETRAINED_DIR = Path(os.environ.get("ATTNVIZ_PRETRAINED", Path(__file__).resolve().parents[2] / "pretrained"))

TIMM_MODELS = ("seresnet50", "ecaresnet50t", "gcresnet50t", "skresnet18", "botnet26t_256",
               "deit_small_patch16_224.fb_in1k", "swin_tiny_patch4_window7_224.ms_in1k",
               "vit_small_patch16_224.dino", "vit_small_patch14_reg4_dinov2.lvd142m")  # timm's name[.pretrained tag]
BACKBONES = {  # self-supervised backbones: features, no classes
    "vit_small_patch16_224.dino": "ImageNet-1k photos without labels (DINO, self-supervised)",
    "vit_small_patch14_reg4_dinov2.lvd142m": "LVD-142M photos without labels (DINOv2 with registers, self-supervised)",
}
IMAGENET_TRAINED = "ImageNet-1k photos (1000 classes)"
TORCHVISION_MODELS = ("efficientnet_b0", "mobilenet_v3_large", "regnet_y_400mf")


class WeightsUnavailable(RuntimeError):
    """The weights of a model are not on this machine."""


class ChecksumMismatch(RuntimeError):
    """A checkpoint's sha256 differs from its model card."""


@dataclass
class ModelInfo:
    """One entry of :func:`available`."""

    name: str
    source: str  # "attnviz" | "timm" | "torchvision" | "mmsegmentation"
    available: bool
    reason: str = ""
    input_size: int = 224
    task: str = "classification"
    trained_on: str = ""
    downloadable: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_path(name: str) -> Path:
    """Path of a zoo model's card."""
    return PRETRAINED_DIR / f"{name}.json"


def _zoo_status(name: str) -> ModelInfo:
    w, c = PRETRAINED_DIR / f"{name}.safetensors", card_path(name)
    seg = name in SEG_ZOO
    size, task, trained = (SEG_INPUT_SIZE, "segmentation", SEG_TRAINED_ON) if seg else (INPUT_SIZE, "classification", ZOO_TRAINED_ON)
    if w.exists() and c.exists():
        return ModelInfo(name, "attnviz", True, input_size=size, task=task, trained_on=trained)
    return ModelInfo(name, "attnviz", False, f"no checkpoint in {PRETRAINED_DIR}; train it with `attnviz train --model {name}`", size, task, trained)


def _timm_cache_file(name: str) -> Path | None:
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, fname)
        if isinstance(hit, str):
            return Path(hit)
    return None


def _torchvision_cache_file(name: str) -> Path | None:
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return path if path.exists() else None


def _timm_input(name: str) -> tuple[int, list[float], list[float]]:
    """Input side, mean and std of a timm checkpoint, from its pretrained config (no download)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    mean = list(cfg.mean) if cfg is not None and cfg.mean else [0.485, 0.456, 0.406]
    std = list(cfg.std) if cfg is not None and cfg.std else [0.229, 0.224, 0.225]
    return size, mean, std


def _imagenet_status(name: str, source: str) -> ModelInfo:
    size = _timm_input(name)[0] if source == "timm" else 224
    try:
        hit = _timm_cache_file(name) if source == "timm" else _torchvision_cache_file(name)
    except Exception as e:  # a broken cache or library must not break the listing
        return ModelInfo(name, source, False, f"cannot look up cached weights: {e}", size)
    task, trained = ("features", BACKBONES[name]) if name in BACKBONES else ("classification", IMAGENET_TRAINED)
    if hit is not None:
        return ModelInfo(name, source, True, input_size=size, task=task, trained_on=trained)
    how = (f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`" if source == "timm"
           else f"`python -c \"import torchvision; torchvision.models.get_model('{name}', weights='DEFAULT')\"`")
    return ModelInfo(name, source, False, f"weights not in the local cache; on a machine with internet run {how}, or pass weights=FILE", size, task, trained)


def registry_remote(name: str) -> Remote | None:
    """Where a registry model's weights are published (mmsegmentation entries), else None."""
    e = MMSEG.get(name)
    return e.remote if e is not None else None


def _mmseg_status(name: str) -> ModelInfo:
    e = MMSEG[name]
    card = e.card
    size = int(card["input_size"][0])
    try:
        hit = cached(e.remote)
    except OSError as err:
        return ModelInfo(name, "mmsegmentation", False, f"cannot read the cache: {err}", size, "segmentation", card["trained_on"])
    if hit is not None:
        return ModelInfo(name, "mmsegmentation", True, input_size=size, task="segmentation", trained_on=card["trained_on"])
    how = "set ATTNVIZ_OFFLINE=0 and " if offline() else ""
    return ModelInfo(name, "mmsegmentation", False, f"weights ({e.remote.size_mb:.0f} MB) not downloaded yet: {how}run `attnviz download {name}`, "
                     "or pick it in the app to download it", size, "segmentation", card["trained_on"], downloadable=not offline())


def available() -> list[ModelInfo]:
    """Every model the app offers, with whether it can be loaded here and why not."""
    out = [_zoo_status(n) for n in ZOO] + [_zoo_status(n) for n in SEG_ZOO] + [_mmseg_status(n) for n in MMSEG]
    out += [_imagenet_status(n, "timm") for n in TIMM_MODELS]
    out += [_imagenet_status(n, "torchvision") for n in TORCHVISION_MODELS]
    return out


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names (shipped with torchvision, no download)."""
    import torchvision

    return list(torchvision.models.EfficientNet_B0_Weights.DEFAULT.meta["categories"])


def build_imagenet(name: str) -> nn.Module:
    """A randomly initialised ImageNet architecture (no weights)."""
    if name in TIMM_MODELS:
        import timm

        return timm.create_model(name, pretrained=False)
    if name in TORCHVISION_MODELS:
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    raise ValueError(f"unknown ImageNet model {name!r}; valid names: {', '.join(TIMM_MODELS + TORCHVISION_MODELS)}")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)  # never unpickles arbitrary objects


def load_pretrained(name: str, device: str | torch.device | None = None, weights: str | os.PathLike[str] | None = None) -> nn.Module:
    """A model in eval mode with its card as ``model.card``.

    Zoo models load ``pretrained/NAME.safetensors`` after checking its sha256 against the card.
    ImageNet models load ``weights`` or the locally cached checkpoint.

    Raises:
        WeightsUnavailable: no weights on this machine (the message says how to get them).
        ChecksumMismatch: the zoo checkpoint does not match its card.
        ValueError: unknown name.
    """
    name = resolve_mmseg(name) or name  # mmsegmentation's method and config names
    if name in ZOO or name in SEG_ZOO:
        info = _zoo_status(name)
        if not info.available and weights is None:
            raise WeightsUnavailable(f"{name}: {info.reason}")
        path = Path(weights) if weights else PRETRAINED_DIR / f"{name}.safetensors"
        card: dict[str, Any] = json.loads(card_path(name).read_text()) if card_path(name).exists() else {"name": name}
        if weights is None:
            digest = sha256(path)
            if digest != card.get("sha256"):
                raise ChecksumMismatch(f"{path} has sha256 {digest}, its card says {card.get('sha256')}")
        model = build_seg(name) if name in SEG_ZOO else build(name)
        model.load_state_dict(load_file(str(path)))
        card.setdefault("task", "segmentation" if name in SEG_ZOO else "classification")
        card.setdefault("trained_on", SEG_TRAINED_ON if name in SEG_ZOO else ZOO_TRAINED_ON)
    elif name in MMSEG:
        if weights is None:
            hit = cached(MMSEG[name].remote)
            if hit is None:
                raise WeightsUnavailable(f"{name}: {_mmseg_status(name).reason}")
            weights = hit
        model = load_mmseg(name, weights)
        card = model.card  # type: ignore[assignment]
    elif name in TIMM_MODELS or name in TORCHVISION_MODELS:
        source = "timm" if name in TIMM_MODELS else "torchvision"
        if weights is None:
            info = _imagenet_status(name, source)
            if not info.available:
                raise WeightsUnavailable(f"{name}: {info.reason}")
            path = _timm_cache_file(name) if source == "timm" else _torchvision_cache_file(name)
            assert path is not None
        else:
            path = Path(weights)
        model = build_imagenet(name)
        model.load_state_dict(_read_state(path))
        size, mean, std = _timm_input(name) if source == "timm" else (224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        card = {"name": name, "source": source, "task": "classification", "trained_on": IMAGENET_TRAINED, "input_size": [size, size],
                "mean": mean, "std": std, "class_names": imagenet_classes(), "weights": str(path)}
        if name in BACKBONES:
            card.update(task="features", trained_on=BACKBONES[name], class_names=[])
    else:
        valid = list(ZOO) + list(SEG_ZOO) + list(MMSEG) + list(TIMM_MODELS) + list(TORCHVISION_MODELS)
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(valid)}")
    model.card = card  # type: ignore[assignment]
    if device is not None:
        model.to(device)
    return model.eval()


def download(name: str, progress: bool | Progress = False) -> Path:
    """Fetch the weights of a registry model (``attnviz download NAME``); returns where they are."""
    name = resolve_mmseg(name) or name
    if name in TIMM_MODELS or name in TORCHVISION_MODELS:
        if offline():
            raise DownloadError(f"{name}: ATTNVIZ_OFFLINE is set")
        try:
            if name in TIMM_MODELS:
                import timm

                timm.create_model(name, pretrained=True)
            else:
                import torchvision

                torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as e:
            raise DownloadError(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        info = _imagenet_status(name, "timm" if name in TIMM_MODELS else "torchvision")
        if not info.available:
            raise DownloadError(f"{name}: downloaded, but not found in the cache afterwards")
        return Path(info.reason or ".")
    remote = registry_remote(name)
    if remote is None:
        raise DownloadError(f"{name}: nothing to download (zoo models ship with attnviz; unknown names are listed by `attnviz models`)")
    return fetch(remote, name, progress)
