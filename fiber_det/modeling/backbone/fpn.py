"""The registered backbone: FiberTrunk + detectron2's own FPN with LastLevelP6P7 on res3..res5.

detectron2's `FPN` is composed, not forked: its bottom-up network is `TrunkFeatures`, a
parameter-free Backbone that hands the trunk's already computed res features to it. P6 comes
from P5 (in_channels = out_channels, the original's `use_P5`), P7 from ReLU(P6)
(fine_grained_spec.md c). detectron2 initialises the convs with c2_xavier_fill, i.e.
kaiming_uniform(a=1) and zero bias, the original's init. The original's training-only
DropBlock is not reproduced. Continued from an image prefix, the FPN's text-independent levels
are computed once per image (fpn_prefix.py), with detectron2's own modules.
"""

from dataclasses import dataclass, field

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from fiber_det.modeling.backbone.fiber import FiberTrunk, ImagePrefix, TextFeatures, TrunkOutput
from fiber_det.modeling.backbone.fpn_prefix import (
    FpnPrefix,
    encode_fpn_prefix,
    fpn_from_prefix,
    output_conv_is_linear,
)

FPN_IN_FEATURES = ("res3", "res4", "res5")


@dataclass
class FiberBackboneOutput:
    """`features`: "p3".."p7" -> (B, C, H, W); `text`: the trunk's final text features;
    `res`: the trunk's "res2".."res5" features the FPN was computed from."""

    features: dict[str, torch.Tensor]
    text: TextFeatures | None
    res: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class BackbonePrefix:
    """The text-independent part of the backbone for B images: the trunk's prefix and, when
    the FPN's output convs are linear, its text-independent levels (see fpn_prefix.py)."""

    trunk: ImagePrefix
    fpn: FpnPrefix | None


class TrunkFeatures(Backbone):
    """Bottom-up stand-in for detectron2's FPN: returns the res features it is given."""

    def __init__(self, channels: dict[str, int], strides: dict[str, int]):
        super().__init__()
        self._out_features = list(channels)
        self._out_feature_channels = dict(channels)
        self._out_feature_strides = dict(strides)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return features


class FiberFPNBackbone(Backbone):
    """Fused trunk + FPN. `forward(images, input_ids, attention_mask) -> FiberBackboneOutput`."""

    def __init__(self, trunk: FiberTrunk, out_channels: int = 256, norm: str = "", fuse_type="sum"):
        super().__init__()
        self.trunk = trunk
        bottom_up = TrunkFeatures(trunk.image_channels, trunk.image_strides)
        top_block = LastLevelP6P7(out_channels, out_channels, in_feature="p5")
        self.fpn = FPN(bottom_up, list(FPN_IN_FEATURES), out_channels, norm, top_block, fuse_type)
        self.fpn_splits_at_prefix = output_conv_is_linear(norm, fuse_type)

    @property
    def size_divisibility(self) -> int:
        return self.trunk.size_divisibility

    @property
    def text_hidden_size(self) -> int:
        """Width D of the text features the backbone returns."""
        return self.trunk.text_hidden_size

    @property
    def text_pad_token_id(self) -> int:
        """The id prompts are padded with."""
        return self.trunk.text_pad_token_id

    def output_shape(self) -> dict[str, ShapeSpec]:
        return self.fpn.output_shape()

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> FiberBackboneOutput:
        """images (B, 3, H, W) normalised and padded to 32; ids / mask (k * B, L)."""
        return self._with_fpn(self.trunk(images, input_ids, attention_mask))

    def encode_image(self, images: torch.Tensor) -> FiberBackboneOutput:
        """The image tower alone (fusion off, dual-encoder mode): FPN features, `text` None."""
        return self._with_fpn(self.trunk(images))

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> TextFeatures:
        """The text tower alone (fusion off): ids / mask (P, L) -> TextFeatures (P, L, D)."""
        return self.trunk.encode_text(input_ids, attention_mask)

    def text_tower_state_dict(self) -> dict[str, torch.Tensor]:
        """The text tower's weights: all that `encode_text` depends on."""
        return self.trunk.text_tower_state_dict()

    def encode_image_prefix(
        self, images: torch.Tensor, prompts_per_image: int | None = None
    ) -> BackbonePrefix:
        """The text-independent prefix of the trunk and FPN, to reuse across prompts.

        `prompts_per_image`: how many prompts will continue it (None: unknown, several). With
        one the FPN stays whole: its split does more work than it saves for a single prompt.
        """
        trunk_prefix = self.trunk.encode_image_prefix(images)
        fpn_prefix = None
        if self.fpn_splits_at_prefix and prompts_per_image != 1:
            fpn_prefix = encode_fpn_prefix(self.fpn, trunk_prefix.features)
        return BackbonePrefix(trunk_prefix, fpn_prefix)

    def forward_from_prefix(
        self,
        prefix: BackbonePrefix,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> FiberBackboneOutput:
        """Same result as `forward` on the prefix's images (repeated k times for k * B texts)."""
        output = self.trunk.forward_fused(prefix.trunk, input_ids, attention_mask)
        repeats = input_ids.shape[0] // prefix.trunk.tokens.shape[0]
        return self._with_fpn(output, prefix.fpn, repeats)

    def _with_fpn(
        self, output: TrunkOutput, fpn_prefix: FpnPrefix | None = None, repeats: int = 1
    ) -> FiberBackboneOutput:
        """The trunk's output with the FPN levels on top; with `fpn_prefix`, the FPN continues
        it for `repeats` prompts per image (fpn_prefix.py)."""
        features = {name: output.image[name] for name in FPN_IN_FEATURES}
        if fpn_prefix is None:
            levels = self.fpn(features)
        else:
            levels = fpn_from_prefix(self.fpn, fpn_prefix, features, repeats)
        return FiberBackboneOutput(levels, output.text, output.image)


@BACKBONE_REGISTRY.register()
def build_fiber_fpn_backbone(cfg, input_shape: ShapeSpec) -> FiberFPNBackbone:
    """MODEL.BACKBONE.NAME = "build_fiber_fpn_backbone": MODEL.FIBER trunk + MODEL.FPN sizes."""
    if input_shape.channels != 3:
        raise ValueError(f"the FIBER trunk takes 3-channel images, got {input_shape.channels}")
    return FiberFPNBackbone(
        FiberTrunk(cfg),
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
