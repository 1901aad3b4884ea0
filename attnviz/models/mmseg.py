"""Published mmsegmentation checkpoints without mmcv: our own ResNetV1c-D8 and decode heads, an explicit key map.

The backbone and heads are those of :mod:`attnviz.models.segmentation` at mmsegmentation's sizes
(ResNet-50/101 with a deep stem, stages 3–4 dilated, output stride 8; heads of 512 channels; OCR's
coarse FCN head on stage 3). Checkpoints are read with ``torch.load(weights_only=True)``, or — if their
metadata holds types that loader refuses — with a restricted unpickler that rebuilds tensors and plain
containers only; nothing is ever fully unpickled. :func:`convert` maps every parameter by an explicit
rule and fails loudly on any key it does not know.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .hub import Remote
from .seg_meta import ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from .segmentation import Bottleneck, CCHead, DAHead, FCNHead, GCHead, NLHead, OCRHead, ResNetD8, SegmentationNet

BASE = "https://download.openmmlab.com/mmsegmentation/v0.5"
DATASETS = {
    "cityscapes": {"classes": CITYSCAPES_CLASSES, "palette": CITYSCAPES_PALETTE, "crop": (512, 1024), "cpu_input": (256, 512),
                   "trained_on": "Cityscapes street scenes (19 classes, 512×1024 crops)"},
    "ade20k": {"classes": ADE20K_CLASSES, "palette": ADE20K_PALETTE, "crop": (512, 512), "cpu_input": (384, 384),
               "trained_on": "ADE20K scenes (150 classes, 512×512 crops)"},
}


@dataclass(frozen=True)
class MMSegEntry:
    """One published checkpoint: method, depth, dataset, where it is and how good it is."""

    name: str
    method: str  # nonlocal | ccnet | danet | gcnet | ocrnet
    depth: int  # 50 | 101
    dataset: str  # cityscapes | ade20k
    remote: Remote
    miou: float  # as published (single-scale)
    config: str  # the mmsegmentation config name

    @property
    def card(self) -> dict[str, Any]:
        ds = DATASETS[self.dataset]
        return {
            "name": self.name, "task": "segmentation", "source": "mmsegmentation", "config": self.config, "url": self.remote.url,
            "miou_published": self.miou, "dataset": self.dataset, "class_names": list(ds["classes"]), "palette": [list(p) for p in ds["palette"]],
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": list(ds["cpu_input"]), "full_input_size": list(ds["crop"]),
            "trained_on": ds["trained_on"],
            "input_note": f"resized to {ds['cpu_input'][1]}×{ds['cpu_input'][0]} on the CPU (trained on {ds['crop'][1]}×{ds['crop'][0]} crops); "
                          "full resolution on a GPU",
        }


def _e(method: str, depth: int, dataset: str, folder: str, stamp: str, sha: str, miou: float, config: str) -> MMSegEntry:
    short = {"nonlocal": "nonlocal", "ccnet": "ccnet", "danet": "danet", "gcnet": "gc", "ocrnet": "ocr"}[method]
    name = f"{short}_r{depth}_d8_{dataset}"
    url = f"{BASE}/{method if method != 'nonlocal' else 'nonlocal_net'}/{folder}/{folder}_{stamp}-{sha}.pth"
    size = 190.0 if depth == 50 else 265.0
    return MMSegEntry(name, method, depth, dataset, Remote(url, sha, size), miou, config)


# from mmsegmentation's configs/*/metafile.yaml: Cityscapes 80k iterations at 512×1024, ADE20K 160k at 512×512
MMSEG: dict[str, MMSegEntry] = {e.name: e for e in [
    _e("nonlocal", 50, "cityscapes", "nonlocal_r50-d8_512x1024_80k_cityscapes", "20200607_193518", "d6839fae", 78.01, "nonlocal_r50-d8_4xb2-80k_cityscapes-512x1024"),
    _e("nonlocal", 101, "cityscapes", "nonlocal_r101-d8_512x1024_80k_cityscapes", "20200607_183411", "32700183", 78.93, "nonlocal_r101-d8_4xb2-80k_cityscapes-512x1024"),
    _e("nonlocal", 50, "ade20k", "nonlocal_r50-d8_512x512_160k_ade20k", "20200616_005410", "baef45e3", 42.03, "nonlocal_r50-d8_4xb4-160k_ade20k-512x512"),
    _e("nonlocal", 101, "ade20k", "nonlocal_r101-d8_512x512_160k_ade20k", "20210827_221502", "7881aa1a", 44.63, "nonlocal_r101-d8_4xb4-160k_ade20k-512x512"),
    _e("ccnet", 50, "cityscapes", "ccnet_r50-d8_512x1024_80k_cityscapes", "20200617_010421", "869a3423", 79.03, "ccnet_r50-d8_4xb2-80k_cityscapes-512x1024"),
    _e("ccnet", 101, "cityscapes", "ccnet_r101-d8_512x1024_80k_cityscapes", "20200617_203935", "ffae8917", 78.87, "ccnet_r101-d8_4xb2-80k_cityscapes-512x1024"),
    _e("ccnet", 50, "ade20k", "ccnet_r50-d8_512x512_160k_ade20k", "20200616_084435", "7c97193b", 42.08, "ccnet_r50-d8_4xb4-160k_ade20k-512x512"),
    _e("ccnet", 101, "ade20k", "ccnet_r101-d8_512x512_160k_ade20k", "20200616_000644", "e849e007", 43.71, "ccnet_r101-d8_4xb4-160k_ade20k-512x512"),
    _e("danet", 50, "cityscapes", "danet_r50-d8_512x1024_80k_cityscapes", "20200607_133029", "2bfa2293", 79.34, "danet_r50-d8_4xb2-80k_cityscapes-512x1024"),
    _e("danet", 101, "cityscapes", "danet_r101-d8_512x1024_80k_cityscapes", "20200607_132918", "955e6350", 80.41, "danet_r101-d8_4xb2-80k_cityscapes-512x1024"),
    _e("danet", 50, "ade20k", "danet_r50-d8_512x512_160k_ade20k", "20200616_082340", "9cb35dcd", 42.45, "danet_r50-d8_4xb4-160k_ade20k-512x512"),
    _e("danet", 101, "ade20k", "danet_r101-d8_512x512_160k_ade20k", "20200616_082348", "23bf12f9", 44.17, "danet_r101-d8_4xb4-160k_ade20k-512x512"),
    _e("gcnet", 50, "cityscapes", "gcnet_r50-d8_512x1024_80k_cityscapes", "20200618_074450", "ef8f069b", 78.48, "gcnet_r50-d8_4xb2-80k_cityscapes-512x1024"),
    _e("gcnet", 101, "cityscapes", "gcnet_r101-d8_512x1024_80k_cityscapes", "20200618_074450", "778ebf69", 79.03, "gcnet_r101-d8_4xb2-80k_cityscapes-512x1024"),
    _e("gcnet", 50, "ade20k", "gcnet_r50-d8_512x512_160k_ade20k", "20200615_224122", "d95f3e1f", 42.37, "gcnet_r50-d8_4xb4-160k_ade20k-512x512"),
    _e("gcnet", 101, "ade20k", "gcnet_r101-d8_512x512_160k_ade20k", "20200615_225406", "615528d7", 43.69, "gcnet_r101-d8_4xb4-160k_ade20k-512x512"),
]}
_ocr = MMSegEntry("ocr_r101_d8_cityscapes", "ocrnet", 101, "cityscapes",
                  Remote(f"{BASE}/ocrnet/ocrnet_r101-d8_512x1024_80k_b16_cityscapes/ocrnet_r101-d8_512x1024_80k_b16_cityscapes_20200723_192421-78688424.pth",
                         "78688424", 270.0), 80.81, "ocrnet_r101-d8_8xb2-80k_cityscapes-512x1024")
MMSEG[_ocr.name] = _ocr
_SHORT = {"nonlocal": "nonlocal", "nonlocal_net": "nonlocal", "nl": "nonlocal", "ccnet": "ccnet", "cc": "ccnet", "danet": "danet", "da": "danet",
          "gcnet": "gc", "gc": "gc", "ocrnet": "ocr", "ocr": "ocr"}


def resolve(name: str) -> str | None:
    """Our entry name for what an mmsegmentation user types, or None when nothing matches.

    Accepted: our names (``gc_r50_d8_cityscapes``), mmsegmentation's method names (``gcnet_r50_d8_cityscapes``,
    ``ocrnet_r101_d8_cityscapes``), its 1.x config names (``gcnet_r50-d8_4xb2-80k_cityscapes-512x1024``) and its 0.x
    checkpoint folder names (``gcnet_r50-d8_512x1024_80k_cityscapes``). A config of another schedule is another
    checkpoint and does not match (see :func:`near_miss`).
    """
    key = name.strip().lower()
    if key in MMSEG:
        return key
    for e in MMSEG.values():
        if key in (e.config, e.remote.url.rsplit("/", 2)[-2]):
            return e.name
    m = re.fullmatch(r"([a-z_]+?)_r(50|101)[-_]d8_(cityscapes|ade20k)", key)
    if m and m.group(1) in _SHORT:
        cand = f"{_SHORT[m.group(1)]}_r{m.group(2)}_d8_{m.group(3)}"
        return cand if cand in MMSEG else None
    return None


def near_miss(name: str) -> str | None:
    """For an mmsegmentation config or checkpoint name we do not ship (another schedule or crop), the entry of the same
    method, depth and dataset, said as a hint; None when there is none."""
    m = re.match(r"([a-z_]+?)_r(50|101)-d8_.*?(cityscapes|ade20k)", name.strip().lower())
    if not m or m.group(1) not in _SHORT:
        return None
    cand = MMSEG.get(f"{_SHORT[m.group(1)]}_r{m.group(2)}_d8_{m.group(3)}")
    if cand is None:
        return None
    return (f"{name!r} is another mmsegmentation checkpoint (a different schedule or crop); attnviz offers {cand.name} "
            f"(config {cand.config}, published mIoU {cand.miou}).")


def build_mmseg(method: str, depth: int = 50, num_classes: int = 19) -> SegmentationNet:
    """Our architecture of an mmsegmentation R50/R101-D8 model with the given decode head (random weights)."""
    layers = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
    if depth not in layers:
        raise ValueError(f"depth must be 50 or 101, got {depth}")
    backbone = ResNetD8(Bottleneck, layers[depth], planes=(64, 128, 256, 512), stem_channels=64)
    kw: dict[str, Any] = dict(in_channels=2048, channels=512, num_classes=num_classes)
    ocr = None
    if method == "nonlocal":
        head: nn.Module = NLHead(**kw, reduction=2)
    elif method == "ccnet":
        head = CCHead(**kw, recurrence=2)
    elif method == "danet":
        head = DAHead(**kw, pam_channels=64)
    elif method == "gcnet":
        head = GCHead(**kw, ratio=0.25)
    elif method == "ocrnet":
        head = FCNHead(in_channels=1024, channels=256, num_classes=num_classes, num_convs=1, concat_input=False, in_index=2)
        ocr = OCRHead(**kw, ocr_channels=256)
    elif method == "fcn":
        head = FCNHead(**kw)
    else:
        raise ValueError(f"unknown method {method!r}; valid: nonlocal, ccnet, danet, gcnet, ocrnet, fcn")
    return SegmentationNet(backbone, head, ocr_head=ocr)


# ---------------------------------------------------------------------------------------------- key map
_RULES: list[tuple[str, str]] = [  # (mmsegmentation key regex, our key template); applied in order, first match wins
    (r"^backbone\.(.*)$", r"backbone.\1"),
    (r"^decode_head\.nl_block\.(g|phi)\.conv\.(weight|bias)$", r"decode_head.nl_block.\1.0.\2"),
    (r"^decode_head\.nl_block\.theta\.conv\.(weight|bias)$", r"decode_head.nl_block.theta.\1"),
    (r"^decode_head\.nl_block\.conv_out\.conv\.weight$", r"decode_head.nl_block.w.0.weight"),
    (r"^decode_head\.nl_block\.conv_out\.bn\.(.*)$", r"decode_head.nl_block.w.1.\1"),
    (r"^decode_head\.cca\.(query|key|value)_conv\.(weight|bias)$", r"decode_head.cca.\1.\2"),
    (r"^decode_head\.cca\.gamma\.scale$", r"decode_head.cca.gamma"),
    (r"^decode_head\.pam\.(query|key|value)_project\.(weight|bias)$", r"decode_head.pam.\1.\2"),
    (r"^decode_head\.(pam|cam)\.gamma\.scale$", r"decode_head.\1.gamma"),
    (r"^decode_head\.gc_block\.channel_add_conv\.(.*)$", r"decode_head.gc_block.transform.\1"),
    (r"^decode_head\.0\.(.*)$", r"decode_head.\1"),
    (r"^decode_head\.1\.bottleneck\.(.*)$", r"ocr_head.bottleneck.\1"),
    (r"^decode_head\.1\.object_context_block\.(.*)$", r"ocr_head.ocr.object_context_block.\1"),
    (r"^decode_head\.1\.conv_seg\.(.*)$", r"ocr_head.conv_seg.\1"),
    (r"^decode_head\.(.*)$", r"decode_head.\1"),
]
IGNORED = re.compile(r"^auxiliary_head\.")  # training-only heads


def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An mmsegmentation ``state_dict`` → ours, by the explicit rules above (auxiliary heads dropped).

    Raises:
        KeyError: for a key no rule knows (a checkpoint of another architecture).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if IGNORED.match(key):
            continue
        for pattern, template in _RULES:
            if re.match(pattern, key):
                new = re.sub(pattern, template, key)
                out[new] = value.reshape(1) if new.endswith(".gamma") and value.ndim == 0 else value  # mmcv's Scale is 0-d
                break
        else:
            raise KeyError(f"no rule maps the checkpoint key {key!r}")
    return out


# ---------------------------------------------------------------------------------------------- safe loading
class _Placeholder:
    """Stands in for any non-tensor object in checkpoint metadata; never runs its code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _TensorsOnly(pickle.Unpickler):
    """Rebuilds torch tensors and plain containers; every other class becomes a harmless placeholder."""

    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"), ("collections", "OrderedDict"),
        ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "LongStorage"), ("torch", "IntStorage"),
        ("torch", "BoolStorage"), ("torch", "ByteStorage"), ("torch", "DoubleStorage"), ("torch", "BFloat16Storage"),
        ("torch.storage", "UntypedStorage"), ("torch", "Size"),
    }

    def __init__(self, file: Any, storages: dict[str, torch.UntypedStorage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            import importlib

            return getattr(importlib.import_module(module), name)
        return _Placeholder

    def persistent_load(self, pid: Any) -> Any:
        _, storage_type, key, location, numel = pid
        dtype = storage_type.dtype if hasattr(storage_type, "dtype") else torch.float32
        return torch.storage.TypedStorage(wrap_storage=self._storages[key], dtype=dtype, _internal=True)


def _restricted_load(path: Path) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        prefix = names[0].split("/")[0]
        storages = {}
        for n in names:
            if n.startswith(f"{prefix}/data/") and not n.endswith("/"):
                storages[n.rsplit("/", 1)[-1]] = torch.UntypedStorage.from_buffer(z.read(n), dtype=torch.uint8)
        return _TensorsOnly(io.BytesIO(z.read(f"{prefix}/data.pkl")), storages).load()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an mmsegmentation checkpoint (``{"meta": ..., "state_dict": ...}`` or bare), safely."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        obj = _restricted_load(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path.name} is not an mmsegmentation checkpoint (no tensor state_dict)")
    return state


def load_mmseg(name: str, weights: str | Path) -> SegmentationNet:
    """A registry entry's architecture with the weights of ``weights`` (eval mode, ``model.card`` set)."""
    e = MMSEG[name]
    ds = DATASETS[e.dataset]
    model = build_mmseg(e.method, e.depth, len(ds["classes"]))
    state = convert(read_checkpoint(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{Path(weights).name} does not fit {name}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.card = {**e.card, "weights": str(weights)}  # type: ignore[assignment]
    return model.eval()
