"""Maps: capture records → per-pixel maps (CCNet reach, STN geometry, attributions) and their scores."""

from .attribution import grad_cam
from .geometry import normalized_to_pixels, sampled_quad, upsample_map
from .metrics import box_mask, js_divergence, mass_ratio, nearest_centroid_accuracy, pointing, quad_iou
from .reach import criss_cross_reach

__all__ = [
    "box_mask", "criss_cross_reach", "grad_cam", "js_divergence", "mass_ratio", "nearest_centroid_accuracy",
    "normalized_to_pixels", "pointing", "quad_iou", "sampled_quad", "upsample_map",
]
