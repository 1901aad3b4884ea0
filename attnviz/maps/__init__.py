"""Maps: capture records → per-pixel maps (CCNet reach, STN geometry, attributions) and their scores."""

from .attribution import grad_cam, integrated_gradients, occlusion
from .geometry import normalized_to_pixels, sampled_quad, upsample_map
from .metrics import (
    box_mask,
    js_divergence,
    mass_ratio,
    nearest_centroid_accuracy,
    pointing,
    quad_iou,
    query_dependence,
    same_class_mass,
    spearman,
    top_share,
    topk_iou,
)
from .reach import criss_cross_reach, uniform_criss_cross, uniform_reach
from .transformer import cls_maps, dino_mask, full_attention, mean_attention_distance, mean_row_distance, rollout, rollout_map
from .views import (
    VIEWS,
    ClickLayer,
    ablate,
    bypassed,
    cell_px,
    click_layers,
    click_map,
    feature_cell,
    module_for,
    on_image,
)

__all__ = [
    "VIEWS", "ClickLayer", "ablate", "box_mask", "bypassed", "cell_px", "click_layers", "click_map", "cls_maps", "criss_cross_reach", "dino_mask",
    "full_attention", "mean_attention_distance", "mean_row_distance", "rollout", "rollout_map",
    "feature_cell", "grad_cam", "integrated_gradients", "js_divergence", "mass_ratio", "module_for",
    "nearest_centroid_accuracy", "normalized_to_pixels", "occlusion", "on_image", "pointing", "quad_iou", "query_dependence",
    "same_class_mass", "sampled_quad", "spearman", "top_share", "topk_iou", "uniform_criss_cross", "uniform_reach", "upsample_map",
]
