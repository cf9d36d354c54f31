"""The coarse-stage image-text models on the fused trunk: pre-training (ITC / ITM / MLM),
retrieval, VQAv2, NLVR2 and captioning."""

from fiber_det.modeling.vision_language.caption_model import FiberCaptionModel  # noqa: F401
from fiber_det.modeling.vision_language.nlvr2_model import FiberNLVR2Model  # noqa: F401
from fiber_det.modeling.vision_language.pretrain_model import FiberPretrainModel  # noqa: F401
from fiber_det.modeling.vision_language.vqa_model import FiberVQAModel  # noqa: F401
