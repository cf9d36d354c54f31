"""FiberNLVR2Model: NLVR2 (is the statement true of the image pair?) on the fused trunk
(coarse_grained_spec.md c.2).

The original runs two independent fused passes, (statement, image_0) and (statement, image_1),
with the same weights (no image-type embedding), concatenates their `cls_feats` as
[image_0 pass | image_1 pass] (B, 4H) and classifies with `nlvr2_classifier`
(4H -> 2H -> LayerNorm -> GELU -> 2) under cross-entropy. Here both passes are one fused pass of
2B pairs: one image prefix for the 2B images, the statements repeated.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from fiber_det.modeling.backbone.fiber import FiberTrunk
from fiber_det.modeling.text_padding import pad_texts
from fiber_det.modeling.vision_language.classifier_heads import (
    ClassifierHead,
    freeze_unreached_parameters,
)
from fiber_det.modeling.vision_language.image_text_model import (
    FiberImageTextModel,
    image_text_config,
)

__all__ = ["FiberNLVR2Model"]


@META_ARCH_REGISTRY.register()
class FiberNLVR2Model(FiberImageTextModel):
    """NLVR2 classifier. Input per statement (NLVR2DatasetMapper): "images" [uint8 (3, S, S)
    x 2], "input_ids" / "attention_mask" (L,), in training "label" (1 = True). Training:
    {"loss_nlvr2"}; eval: [{"nlvr2_logits": (2,)}] (index 1 = "True")."""

    @configurable
    def __init__(
        self,
        *,
        trunk: FiberTrunk,
        hidden_size: int,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
    ) -> None:
        super().__init__(
            trunk=trunk, hidden_size=hidden_size, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        self.nlvr2_classifier = ClassifierHead(4 * hidden_size, 2 * hidden_size, 2)
        self.init_heads()
        freeze_unreached_parameters(self)

    @classmethod
    def from_config(cls, cfg) -> dict:
        return image_text_config(cfg)

    def pair_cls_feats(
        self, images_0: torch.Tensor, images_1: torch.Tensor, input_ids, mask
    ) -> torch.Tensor:
        """(B, 4H) = [cls_feats of (text, image_0) | cls_feats of (text, image_1)] from
        normalised images (B, 3, H, W) x 2 and statements (B, L), in one fused pass."""
        batch = images_0.shape[0]
        cls_feats = self.fused_cls_feats(
            torch.cat([images_0, images_1]), input_ids.repeat(2, 1), mask.repeat(2, 1)
        )
        return torch.cat([cls_feats[:batch], cls_feats[batch:]], dim=-1)

    def nlvr2_logits(
        self, images_0: torch.Tensor, images_1: torch.Tensor, input_ids, mask
    ) -> torch.Tensor:
        """(B, 2) logits, column 1 = "True"."""
        return self.nlvr2_classifier(self.pair_cls_feats(images_0, images_1, input_ids, mask))

    def forward(self, batched_inputs: list[dict]):
        """Training: {"loss_nlvr2"}; eval: one {"nlvr2_logits": (2,)} per statement."""
        for x in batched_inputs:
            if len(x["images"]) != 2:
                raise ValueError(
                    f"NLVR2 input {x.get('identifier')} has {len(x['images'])} images, not 2"
                )
        images = self.normalize_images(
            [x["images"][0] for x in batched_inputs] + [x["images"][1] for x in batched_inputs]
        )
        batch = len(batched_inputs)
        text = pad_texts(batched_inputs, self.text_pad_token_id)
        logits = self.nlvr2_logits(
            images[:batch],
            images[batch:],
            text["input_ids"].to(self.device),
            text["attention_mask"].to(self.device),
        )
        if not self.training:
            return [{"nlvr2_logits": row} for row in logits]
        unlabelled = [x.get("identifier") for x in batched_inputs if "label" not in x]
        if unlabelled:
            raise ValueError(f"NLVR2 training inputs without 'label': identifier {unlabelled[:5]}")
        labels = torch.tensor([int(x["label"]) for x in batched_inputs], device=self.device)
        return {"loss_nlvr2": F.cross_entropy(logits, labels)}
