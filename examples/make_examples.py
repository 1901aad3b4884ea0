"""Regenerate the example images: ``python examples/make_examples.py``.

Six test scenes (t10k items, fixed seed; the label is in the file name) for the zoo models, and five
natural photos bundled with scikit-image for the ImageNet models. Deterministic.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from attnviz.data import CLASSES, SceneGenerator
from attnviz.data.backgrounds import _load

HERE = Path(__file__).resolve().parent
PHOTOS = {"astronaut": "astronaut", "coffee": "coffee", "chelsea": "chelsea", "rocket": "rocket", "motorcycle": "stereo_motorcycle"}


def main() -> None:
    batch = SceneGenerator("test").generate(6, seed=2024)
    for i in range(6):
        rgb = (batch.images[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        label = CLASSES[int(batch.labels[i])].replace("/", "-").replace(" ", "_")
        Image.fromarray(rgb).save(HERE / f"scene_{i}_{label}.png")
    for name, key in PHOTOS.items():
        img = Image.fromarray(_load(key))
        img.thumbnail((512, 512), Image.Resampling.LANCZOS)
        img.save(HERE / f"photo_{name}.png")


if __name__ == "__main__":
    main()
