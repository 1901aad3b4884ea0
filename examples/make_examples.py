"""Regenerate the example images and ``examples.json``: ``python examples/make_examples.py``.

- Zoo scenes (classification): 64×64 scenes v2 from t10k items, one per showcased model, on background
  families the models never trained on where possible; kept only when the paired model gets it right.
- Zoo scenes (segmentation): 128×128 scenes v2 with several items, one per showcased segmentation model,
  kept only when the paired model's prediction matches the label map (pixel accuracy ≥ 0.9 and every
  item's class predicted on most of its pixels).
- Photos: scikit-image's bundled photos we may redistribute (licence in each entry) for the ImageNet models
  and, indoors / a person, for the published ADE20K segmentation models (shown only when available).

Each entry names the models it suits (in order), the pixel clicked first (the centre of the object)
and, for zoo scenes, the class the model must predict (the test suite checks it). Deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import attnviz
from attnviz.data import CLASSES, FAMILIES, HELDOUT_FAMILIES, SceneConfig, SceneGenerator, normalize
from attnviz.data.backgrounds import _load
from attnviz.models.seg_zoo import SEG_CLASSES

HERE = Path(__file__).resolve().parent
# scikit-image's bundled photos that we may redistribute (licences from skimage.data's docstrings); the
# Middlebury motorcycle is left out (research use only)
PHOTOS = {
    "astronaut": ("astronaut", "public domain (NASA)"),
    "coffee": ("coffee", "CC0 (Rachel Michetti, via scikit-image)"),
    "chelsea": ("chelsea", "CC0 (Stéfan van der Walt, via scikit-image)"),
    "rocket": ("rocket", "public domain (SpaceX)"),
}
ADE20K = {"coffee": ["ccnet_r50_d8_ade20k", "nonlocal_r50_d8_ade20k"], "astronaut": ["danet_r50_d8_ade20k", "ccnet_r50_d8_ade20k"]}
IMAGENET = ["seresnet50", "botnet26t_256", "gcresnet50t", "efficientnet_b0"]
CLS_SHOW = ["ccnet_resnet", "nonlocal_resnet", "cbam_resnet", "stn_resnet", "scse_resnet", "se_resnet", "gc_resnet", "danet_resnet", "sk_resnet",
            "vit_tiny"]
SEG_SHOW = ["ccnet_seg", "nonlocal_seg", "ocr_seg", "danet_seg", "gc_seg"]


def _save(rgb: torch.Tensor, name: str) -> str:
    img = (rgb.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(img).save(HERE / name)
    return name


def _centre(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    i = int(((ys.float() - ys.float().mean()) ** 2 + (xs.float() - xs.float().mean()) ** 2).argmin())
    return [float(xs[i]) + 0.5, float(ys[i]) + 0.5]


def classification_examples() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    fams = list(HELDOUT_FAMILIES) + [f for f in FAMILIES if f not in HELDOUT_FAMILIES]
    for i, name in enumerate(CLS_SHOW):
        try:
            model = attnviz.load_pretrained(name)
        except Exception as e:  # not shipped in this release
            print(f"{name}: {e}; skipped")
            continue
        gen = SceneGenerator("test", SceneConfig(size=64, families=(fams[i % len(fams)],)))
        batch = gen.generate(64, seed=2024 + i)
        with torch.no_grad():
            p = model(normalize(batch.images)).softmax(1)
        ok = (p.argmax(1) == batch.labels) & (p.max(1).values >= 0.6) & (batch.masks.sum((1, 2)) >= 60)
        if not ok.any():
            print(f"{name}: no confident correct scene in this batch; skipped")
            continue
        j = int(torch.nonzero(ok)[0])
        label = CLASSES[int(batch.labels[j])]
        fname = _save(batch.images[j], f"scene_{name}.png")  # a fixed name per model (the README uses them)
        out.append({"file": fname, "group": "Zoo scenes (classification)", "title": f"{label} on {fams[i % len(fams)]}",
                    "models": [name], "click": _centre(batch.masks[j]), "expected": label})
    return out


def segmentation_examples() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i, name in enumerate(SEG_SHOW):
        try:
            model = attnviz.load_pretrained(name)
        except Exception as e:  # not trained yet
            print(f"{name}: {e}; skipped")
            continue
        fam = HELDOUT_FAMILIES[i % len(HELDOUT_FAMILIES)]
        gen = SceneGenerator("test", SceneConfig(size=128, items=(3, 5), families=(fam,)))
        batch = gen.generate(32, seed=4048 + i)
        with torch.no_grad():
            pred = model(normalize(batch.images)).argmax(1)
        for j in range(32):
            gt = batch.label_map[j]
            good = float((pred[j] == gt).float().mean()) >= 0.9
            for c in gt.unique().tolist():
                if c > 0:
                    good &= float((pred[j][gt == c] == c).float().mean()) >= 0.6
            if good:
                break
        else:
            print(f"{name}: no scene it segments well in this batch; skipped")
            continue
        fname = _save(batch.images[j], f"segscene_{name}.png")
        present = [SEG_CLASSES[c] for c in batch.label_map[j].unique().tolist() if c > 0]
        out.append({"file": fname, "group": "Zoo scenes (segmentation)", "title": f"{len(present)} items on {fam}",
                    "models": [name], "click": _centre(batch.instance_masks[j, 0] if batch.instance_masks[j, 0].any() else batch.label_map[j] > 0),
                    "expected_classes": present})
    return out


def photo_examples() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for name, (key, licence) in PHOTOS.items():
        img = Image.fromarray(_load(key))
        img.thumbnail((512, 512), Image.Resampling.LANCZOS)
        img.save(HERE / f"photo_{name}.png")
        out.append({"file": f"photo_{name}.png", "group": "Photos", "title": name, "models": IMAGENET, "click": None, "licence": licence})
    for name, models in ADE20K.items():  # indoor / person photos for the published ADE20K segmentation models
        out.append({"file": f"photo_{name}.png", "group": "Photos (ADE20K segmentation)", "title": f"{name} (ADE20K)", "models": models,
                    "click": None, "licence": PHOTOS[name][1]})
    return out


def main() -> None:
    for old in list(HERE.glob("scene_*.png")) + list(HERE.glob("segscene_*.png")) + list(HERE.glob("photo_*.png")):
        old.unlink()
    seg = segmentation_examples()
    cls = classification_examples()
    entries = seg[:1] + cls + seg[1:] + photo_examples()  # the first entry is what a visitor sees on load
    (HERE / "examples.json").write_text(json.dumps(entries, indent=1) + "\n")
    print(f"wrote {len(entries)} examples")


if __name__ == "__main__":
    main()
