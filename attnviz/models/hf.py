"""Hugging Face ``transformers`` vision models by repository id or local folder: ``--model hf:REPO_ID``.

The Auto classes pick the architecture from the repository's config (image classification, semantic segmentation, else
the bare model); weights come through the hub's own download, progress bar and cache (``HF_HOME``), never with
``trust_remote_code``. The card (input size, mean, std, class names) is read from the repository's image-processor
config and ``id2label``. Offline, a repository not in the cache is one line saying how to fetch it.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

PREFIX = "hf:"


class HFUnavailable(RuntimeError):
    """A repository that cannot be loaded here (not cached offline, unknown, or not a vision model); one line."""


def _auto_class(config: Any) -> Any:
    import transformers  # noqa: PLC0415

    archs = " ".join(getattr(config, "architectures", None) or [])
    if "ForImageClassification" in archs:
        return transformers.AutoModelForImageClassification
    if "ForSemanticSegmentation" in archs:
        return transformers.AutoModelForSemanticSegmentation
    return transformers.AutoModel


def _card(repo: str, config: Any, local_only: bool) -> dict[str, Any]:
    import transformers  # noqa: PLC0415

    card: dict[str, Any] = {"name": f"{PREFIX}{repo}", "source": "huggingface"}
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(repo, local_files_only=local_only)
    except (OSError, ValueError):
        proc = None
    size = getattr(proc, "size", None) or {}
    side = size.get("height") or size.get("shortest_edge") or getattr(config, "image_size", None) or 224
    card["input_size"] = [int(size.get("height", side)), int(size.get("width", side))]
    if proc is not None and getattr(proc, "image_mean", None) is not None:
        card["mean"], card["std"] = list(proc.image_mean), list(proc.image_std)
    labels = getattr(config, "id2label", None) or {}
    names = [str(labels[i]) for i in sorted(labels, key=int)]
    if names and not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        card["class_names"] = names
    return card


def load_hf(spec: str) -> nn.Module:
    """The model of ``hf:REPO_ID`` (or ``hf:/a/local/folder``) in eval mode, with its card as ``model.card``.

    Raises:
        HFUnavailable: transformers missing, the repository not cached while offline or unreachable, or no such repository.
    """
    repo = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    if not repo:
        raise HFUnavailable("hf: needs a repository id (hf:google/vit-base-patch16-224) or a local folder")
    try:
        import transformers  # noqa: PLC0415
    except ImportError:
        raise HFUnavailable("hf: models need Hugging Face transformers: pip install transformers") from None
    local_only = os.environ.get("ATTNVIZ_OFFLINE", "") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        config = transformers.AutoConfig.from_pretrained(repo, local_files_only=local_only)
        model = _auto_class(config).from_pretrained(repo, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as e:
        how = f"on a machine with internet run `python -c \"import transformers; transformers.AutoModel.from_pretrained('{repo}')\"` (HF cache: $HF_HOME)"
        first = " ".join(str(e).split())[:160]
        raise HFUnavailable(f"hf:{repo} could not be loaded here ({type(e).__name__}: {first}); {how}") from None
    model.card = _card(repo, config, local_only)  # type: ignore[assignment]
    if _auto_class(config) is transformers.AutoModel:  # the bare model: a backbone without classes
        model.card["task"] = "features"
        model.card.pop("class_names", None)
    return model.eval()
