"""The grounding detector: DyHead tower, region-word scores, ATSS, losses, inference."""

from fiber_det.modeling.grounding.detector import GroundingDetector  # noqa: F401  (registers)
