"""Grounding head: DyHead tower, then box, centerness and region-token alignment logits.

From the FIBER fine-grained spec (d.2, d.3) of microsoft/FIBER's VLDyHead. The original also
holds a frozen `cls_logits` conv whose outputs are never used (its loss is multiplied by 0 and
at test it only sizes the score tensor, spec h.5); it is left out here, and the checkpoint
converter drops its weights.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

from fiber_det.modeling.grounding.dyhead import DyHeadTower

GROUNDING_HEAD_REGISTRY = Registry("GROUNDING_HEAD")
GROUNDING_HEAD_REGISTRY.__doc__ = "Dense heads scoring every location against every text token."


@dataclass
class HeadOutputs:
    """Per-level raw outputs. box_regression (B, 4, H, W) already scaled per level;
    centerness (B, 1, H, W) logits; token_logits (B, H*W, L), locations row-major (h, w)."""

    box_regression: list[torch.Tensor]
    centerness: list[torch.Tensor]
    token_logits: list[torch.Tensor]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


@GROUNDING_HEAD_REGISTRY.register()
class GroundingHead(nn.Module):
    """DyHead tower + per-location box deltas, centerness and dot-product token logits."""

    @configurable
    def __init__(
        self,
        *,
        channels: int,
        num_levels: int,
        text_dim: int,
        num_blocks: int = 6,
        gn_groups: int = 16,
        prior_prob: float = 0.01,
        log_scale_init: float = 0.0,
        logit_clamp: float = 50000.0,
    ):
        super().__init__()
        self.tower = DyHeadTower(channels, num_blocks, gn_groups)
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=1)
        for conv in (self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        self.text_projection = nn.Linear(text_dim, channels)
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        self.bias0 = nn.Parameter(torch.tensor([-math.log((1 - prior_prob) / prior_prob)]))
        self.log_scale = nn.Parameter(torch.tensor([log_scale_init]))
        self.logit_clamp = logit_clamp

    @classmethod
    def from_config(cls, cfg, input_shapes: list[ShapeSpec], text_dim: int) -> dict:
        channels = {s.channels for s in input_shapes}
        if len(channels) != 1:
            raise ValueError(f"the head needs one channel count on all levels: {channels}")
        return {
            "channels": channels.pop(),
            "num_levels": len(input_shapes),
            "text_dim": text_dim,
            "num_blocks": cfg.MODEL.DYHEAD.NUM_BLOCKS,
            "gn_groups": cfg.MODEL.DYHEAD.GN_GROUPS,
            "prior_prob": cfg.MODEL.DYHEAD.PRIOR_PROB,
            "log_scale_init": cfg.MODEL.DYHEAD.LOG_SCALE,
            "logit_clamp": cfg.MODEL.DYHEAD.LOGIT_CLAMP,
        }

    def text_tokens(self, embedded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embedded (B, L, D), padded rows 0 -> token vectors (B, L, C), token bias (B, L)."""
        normalized = F.normalize(embedded, p=2, dim=-1)
        tokens = self.text_projection(normalized / 2.0)
        bias = normalized @ self.bias_lang + self.bias0
        return tokens, bias

    def forward(self, features: list[torch.Tensor], text_embedded: torch.Tensor) -> HeadOutputs:
        """features: list of (B, C, H_l, W_l); text_embedded (B, L, D) -> HeadOutputs."""
        tower, outputs = self.dense(features)
        outputs.token_logits = self.token_logits(tower, text_embedded)
        return outputs

    def dense(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], HeadOutputs]:
        """The text-independent part: the DyHead tower's levels (B, C, H_l, W_l) and the
        HeadOutputs' box regression and centerness (token_logits left empty)."""
        tower = self.tower(features)
        outputs = HeadOutputs([], [], [])
        for level, feature in enumerate(tower):
            outputs.box_regression.append(self.scales[level](self.bbox_pred(feature)))
            outputs.centerness.append(self.centerness(feature))
        return tower, outputs

    def token_logits(
        self, tower: list[torch.Tensor], text_embedded: torch.Tensor
    ) -> list[torch.Tensor]:
        """Tower levels (B, C, H_l, W_l) x text (B, L, D) -> per level logits (B, H_l*W_l, L)."""
        tokens, token_bias = self.text_tokens(text_embedded)
        logits = []
        for feature in tower:
            queries = feature.flatten(2).transpose(1, 2)
            level = queries @ tokens.transpose(1, 2) / self.log_scale.exp() + token_bias[:, None]
            logits.append(level.clamp(-self.logit_clamp, self.logit_clamp))
        return logits


def build_grounding_head(cfg, input_shapes: list[ShapeSpec], text_dim: int) -> nn.Module:
    """The head named by cfg.MODEL.DYHEAD.NAME, built from cfg."""
    return GROUNDING_HEAD_REGISTRY.get(cfg.MODEL.DYHEAD.NAME)(cfg, input_shapes, text_dim)
