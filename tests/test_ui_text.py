"""What the tabs say in words (the numbers stay in a JSON fold): agreement of two maps, the effect of an ablation, a segment's Grad-CAM."""

from __future__ import annotations

from attnviz.ui.tabs.attributions import RANDOM_TOP10_IOU, agreement_sentence
from attnviz.ui.tabs.modules import ablation_sentence
from attnviz.ui.tabs.segmentation import cam_sentence


def test_agreement_in_words() -> None:
    info = {"native": "layer1.sa (mean row)", "attribution": "Grad-CAM", "target": "Bag", "spearman": 0.62, "top10%_iou": 0.31}
    s = agreement_sentence(info)
    assert "moderately related" in s and "ρ = 0.62" in s and "IoU 0.31" in s and f"{RANDOM_TOP10_IOU:.2f}" in s
    assert "barely related" in agreement_sentence({**info, "spearman": 0.05})
    assert "strongly opposed" in agreement_sentence({**info, "spearman": -0.9})
    assert "undefined" in agreement_sentence({**info, "spearman": None})
    assert abs(RANDOM_TOP10_IOU - 0.0526) < 1e-3  # |A∩B| / |A∪B| for two independent 10 % sets: 0.01 / 0.19


def test_ablation_in_words() -> None:
    cls = {"layer": "layer3.se", "change": "gate = 1", "max_abs_logit_change": 0.8, "top_class": "Bag", "top_prob_before": 0.7,
           "top_prob_after": 0.4, "prediction_after": "Shirt"}
    s = ablation_sentence(cls)
    assert "70.0% to 40.0%" in s and "becomes **Shirt**" in s
    assert "prediction stays" in ablation_sentence({**cls, "prediction_after": "Bag"})
    seg = {"layer": "decode_head.cca", "change": "γ = 0", "max_abs_logit_change": 1.5, "pixels_changing_class": 0.123}
    assert "12.3% of the pixels" in ablation_sentence(seg)


def test_segment_gradcam_in_words() -> None:
    info = {"class": "Dress", "segment_area_share": 0.03, "layer": "backbone.layer4", "mass_on_segment": 0.49, "mass_ratio": 16.3}
    s = cam_sentence(info)
    assert "49% of the map's mass lies on the segment" in s and "16.30×" in s and "not a mask" in s
    assert "zero everywhere" in cam_sentence({**info, "mass_on_segment": None, "mass_ratio": None})


def test_small_shares_are_not_rounded_to_zero() -> None:
    """A click's prefix-token share of 0.4 % reads "0.4%", not "0%"; a patch share of 99.6 % not "100%"."""
    from attnviz.analysis.text import share_text

    shares = (0.0, 0.0004, 0.004, 0.0099, 0.37, 0.996, 0.9996, 1.0)
    assert [share_text(v) for v in shares] == ["0%", "<0.1%", "0.4%", "1.0%", "37%", "99.6%", ">99.9%", "100%"]


def test_inspect_names_prefix_tokens_beside_the_grid() -> None:
    from attnviz.inspect import _prefix

    assert _prefix(()) == "" and _prefix(("cls", "dist")) == " + cls + dist"
    assert _prefix(("cls", "reg0", "reg1", "reg2", "reg3")) == " + cls + 4 registers" and _prefix(("reg0",)) == " + 1 register"
