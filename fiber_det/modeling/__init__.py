"""Models. Importing this package registers backbones and meta-architectures with detectron2:
the fused trunk (`backbone/`), the grounding detector (`grounding/`) and the coarse-stage
image-text models (`vision_language/`)."""

from fiber_det.modeling import (  # noqa: F401  (registration on import)
    backbone,
    grounding,
    vision_language,
)
