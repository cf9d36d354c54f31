"""Models. Importing this package registers backbones and meta-architectures with detectron2."""

from fiber_det.modeling import (
    backbone,  # noqa: F401  (registers build_fiber_fpn_backbone)
    caption_model,  # noqa: F401  (registers FiberCaptionModel)
    grounding_detector,  # noqa: F401  (registers GroundingDetector)
    nlvr2_model,  # noqa: F401  (registers FiberNLVR2Model)
    pretrain_model,  # noqa: F401  (registers FiberPretrainModel)
    vqa_model,  # noqa: F401  (registers FiberVQAModel)
)
