"""The segmentation zoo: one small dilated ResNet (output stride 8) with each attention paper's head.

Input 128×128 scenes v2 (1–6 Fashion-MNIST items), 11 classes (0 = background), feature maps 16×16:
``fcn_seg`` (no attention, the baseline), ``nonlocal_seg``, ``ccnet_seg`` (R = 2), ``danet_seg``
(position + channel attention), ``gc_seg`` and ``ocr_seg`` (soft object regions from a coarse FCN
head). All share the backbone and head layout of :mod:`attnviz.models.segmentation` (mmsegmentation's),
at a width that trains on two CPU cores.
"""

from __future__ import annotations

from torch import nn

from ..data import CLASSES
from .segmentation import (
    BasicBlock,
    CCHead,
    DAHead,
    FCNHead,
    GCHead,
    NLHead,
    OCRHead,
    ResNetD8,
    SegmentationNet,
)
from .zoo import ImageStandardize

SEG_CLASSES = ("background", *CLASSES)
SEG_INPUT_SIZE = 128
SEG_ZOO = ("fcn_seg", "nonlocal_seg", "ccnet_seg", "danet_seg", "gc_seg", "ocr_seg")
WIDTH = 64  # head channels


def build_seg(name: str, num_classes: int = len(SEG_CLASSES)) -> SegmentationNet:
    """A randomly initialised segmentation zoo model by name."""
    if name not in SEG_ZOO:
        raise ValueError(f"unknown segmentation zoo model {name!r}; valid names: {', '.join(SEG_ZOO)}")
    backbone = ResNetD8(BasicBlock, (1, 1, 1, 1), planes=(32, 64, 96, 128), stem_channels=32)
    cin = backbone.out_channels[-1]
    kw = dict(in_channels=cin, channels=WIDTH, num_classes=num_classes)
    ocr = None
    head: nn.Module
    if name == "fcn_seg":
        head = FCNHead(**kw)
    elif name == "nonlocal_seg":
        head = NLHead(**kw)
    elif name == "ccnet_seg":
        head = CCHead(**kw, recurrence=2)
    elif name == "danet_seg":
        head = DAHead(**kw, pam_channels=16)
    elif name == "gc_seg":
        head = GCHead(**kw)
    else:
        head = FCNHead(**kw, num_convs=1, concat_input=False)
        ocr = OCRHead(**kw, ocr_channels=32)
    return SegmentationNet(backbone, head, ocr_head=ocr, stem=ImageStandardize())
