"""Serve your own model: torchvision and segmentation_models_pytorch segmentation networks, unregistered.

Random weights (offline); the same code paths open the real weights when torchvision has them cached.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from attnviz.analysis import Catalog, Engine, Entry, UserError, click, export_bundle, modules, segmentation, spatial

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rgb = np.zeros((72, 96, 3), np.uint8)
    rgb[10:50, 20:60] = (200, 60, 40)
    rgb += (np.random.default_rng(0).random(rgb.shape) * 40).astype(np.uint8)
    path = tmp_path_factory.mktemp("user") / "scene.png"
    Image.fromarray(rgb).save(path)
    return path


def _tv(factory, size: int = 96):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = factory(weights=None, weights_backbone=None, num_classes=5, aux_loss=True).eval()
    m.card = {"input_size": [size, size], "class_names": ["bg", "a", "b", "c", "d"]}
    return m


@pytest.fixture(scope="module")
def engine() -> Engine:
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    unet = smp.Unet("resnet18", encoder_weights=None, decoder_attention_type="scse", classes=4).eval()
    unet.card = {"input_size": [64, 64]}
    cat = Catalog([
        Entry("deeplab", True, loader=lambda: _tv(torchvision.models.segmentation.deeplabv3_resnet50)),
        Entry("fcn", True, loader=lambda: _tv(torchvision.models.segmentation.fcn_resnet50)),
        Entry("unet", True, loader=lambda: unet),
    ], torch.device("cpu"))
    return Engine(cat, max_entries=4)


@pytest.mark.parametrize("name", ["deeplab", "fcn"])
def test_torchvision_segmentation_models_open_as_segmentation(engine: Engine, image: Path, name: str, tmp_path: Path) -> None:
    a = engine.analyze(image, name)  # dict output {"out", "aux"}: "out" is read
    assert a.task == "segmentation" and a.logits.shape[0] == 5
    assert a.labels().shape == (72, 96)  # labels at the image's own size
    legend = a.legend()
    assert legend and abs(sum(float(r["area"]) for r in legend) - 1) < 1e-6
    over, rows = segmentation.segmentation_view(a)
    assert over.shape[:2] == (72 * a.display_scale, 96 * a.display_scale) or over.shape[:2] == (72, 96)
    probs = a.probs_at(30, 20)
    assert len(probs) == 3 and abs(sum(p for _, p in a.probs_at(30, 20, k=5)) - 1) < 1e-4
    cam, info = segmentation.segment_gradcam(engine, a, 30, 20)  # Grad-CAM of the clicked pixel's class over its segment
    assert cam.ndim == 3 and info["class"] in a.class_names
    with pytest.raises(UserError, match="nothing to show"):  # no attention modules: said, not drawn
        click.attention_at(a, 30, 20)
    z = export_bundle(a, None, folder=tmp_path)
    import zipfile

    with zipfile.ZipFile(z) as f:
        assert "segmentation.png" in f.namelist()


def test_smp_unet_scse_segmentation_with_its_gates(engine: Engine, image: Path) -> None:
    a = engine.analyze(image, "unet")
    assert a.task == "segmentation" and a.logits.shape[0] == 4
    kinds = modules.summary(a)["kinds"]
    assert kinds == {"channel": 9, "spatial": 9}  # cSE and sSE of every decoder scSE block
    tiles = spatial.spatial_gallery(a)
    assert len(tiles) == 9 and all(t[0].ndim == 3 for t in tiles)
    assert a.class_names == [] or len(a.class_names) in (0, 4)
    assert a.label(3) == "class 3"


def test_cli_analyze_a_torchvision_segmentation_model(image: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "attnviz", "analyze", str(image), "--model", "torchvision.models.segmentation:fcn_resnet50",
         "--model-kwargs", json.dumps({"weights": None, "weights_backbone": None, "num_classes": 3}), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "classes present" in r.stdout and "Traceback" not in r.stderr
    assert list(tmp_path.glob("*.zip"))


def test_cli_says_in_one_line_when_the_models_own_forward_fails() -> None:
    """timm's HaloNet asserts on a 64×64 input: the CLI names the model, the input and the error — no traceback."""
    pytest.importorskip("timm")
    r = subprocess.run([sys.executable, "-m", "attnviz", "inspect", "--model", "timm:create_model", "--model-kwargs",
                        '{"model_name": "halonet26t", "pretrained": false}', "--size", "64"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "failed on a 1×3×64×64 input: AssertionError" in r.stderr, r.stderr


def test_hf_repository_route_loads_a_transformers_model_with_its_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--model hf:REPO`` (here a local folder in the hub's layout): the Auto class from the config, the card from the image
    processor and id2label, captured on SDPA; a repository that is not cached while offline is one line, no traceback."""
    transformers = pytest.importorskip("transformers")
    from attnviz.cli import main
    from attnviz.models.hf import load_hf

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 num_labels=3, id2label={0: "ant", 1: "bee", 2: "cow"}, label2id={"ant": 0, "bee": 1, "cow": 2})
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(tmp_path / "vit")
    model = load_hf(f"hf:{tmp_path / 'vit'}")
    assert type(model).__name__ == "ViTForImageClassification"
    assert model.card["input_size"] == [32, 32] and model.card["class_names"] == ["ant", "bee", "cow"] and model.card["mean"] == [0.5] * 3
    assert main(["inspect", "--model", f"hf:{tmp_path / 'vit'}", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"vit\.(encoder\.layer|layers)\.1\.attention\S*\s+tokens", out), out  # the module path differs across transformers versions
    assert "queries 4×4 + cls → keys 4×4 + cls, 2 head(s)" in out  # the prefix token is named beside the patch grid
    transformers.ViTModel(cfg).save_pretrained(tmp_path / "bare")  # a backbone: features, no classes
    bare = load_hf(f"hf:{tmp_path / 'bare'}")
    assert bare.card["task"] == "features" and "class_names" not in bare.card
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(SystemExit) as err:
            main(["inspect", "--model", "hf:nobody/no-such-repo-attnviz"])
    msg = str(err.value)
    assert msg.startswith("error: hf:nobody/no-such-repo-attnviz could not be loaded here") and "\n" not in msg and "from_pretrained" in msg
