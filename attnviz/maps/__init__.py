"""Maps: turning capture records into per-pixel maps (CCNet reach, STN geometry, upsampling)."""

from .geometry import sampled_quad, upsample_map
from .reach import criss_cross_reach

__all__ = ["criss_cross_reach", "sampled_quad", "upsample_map"]
