"""Training losses of the grounding head (FIBER fine-grained spec d.5-d.6).

- `loss_dot_product_token`: binary sigmoid focal loss over (anchor, real token) pairs, summed
  and divided by the number of positive anchors (averaged over processes, at least 1).
- `loss_reg`: GIoU between decoded predicted and target boxes, weighted by the centerness
  targets, divided by their (process-averaged) sum, times REG_LOSS_WEIGHT.
- `loss_centerness`: BCE with logits on positive anchors, divided by the number of positives.

Differences from microsoft/FIBER (spec h.2, h.5), on purpose: unmatched anchors get all-zero
token targets instead of a one-hot on the last token index (the "no-object" token, which
becomes a real target whenever a caption fills all 256 tokens); the frozen `cls_logits` conv
and its `0 x focal` loss are gone. The golden losses are identical either way.
"""

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torchvision.ops import sigmoid_focal_loss

from fiber_det.modeling.grounding.atss import ATSSMatcher
from fiber_det.modeling.grounding.box_coder import BoxCoder, box_centers
from fiber_det.modeling.grounding.head import HeadOutputs

GIOU_EPS = 1e-7


def flatten_outputs(outputs: HeadOutputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate levels: deltas (B, A, 4), centerness logits (B, A), token logits (B, A, L)."""
    boxes = torch.cat([b.permute(0, 2, 3, 1).flatten(1, 2) for b in outputs.box_regression], 1)
    centerness = torch.cat([c.flatten(1) for c in outputs.centerness], dim=1)
    return boxes, centerness, torch.cat(outputs.token_logits, dim=1)


def token_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, text_mask: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Sum of the focal loss over real tokens: logits, targets (B, A, L); text_mask (B, L)."""
    keep = (text_mask > 0)[:, None, :].expand_as(logits)
    return sigmoid_focal_loss(logits[keep], targets[keep], alpha, gamma, reduction="sum")


def centerness_targets(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of the anchor centres: (N,)."""
    centers = box_centers(anchors)
    left_right = torch.stack([centers[:, 0] - boxes[:, 0], boxes[:, 2] - centers[:, 0]], dim=1)
    top_bottom = torch.stack([centers[:, 1] - boxes[:, 1], boxes[:, 3] - centers[:, 1]], dim=1)
    ratio_x = left_right.min(dim=1).values / left_right.max(dim=1).values
    ratio_y = top_bottom.min(dim=1).values / top_bottom.max(dim=1).values
    return torch.sqrt(ratio_x * ratio_y)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sum of weight * (1 - GIoU) over (N, 4) box pairs; no +1 here, as in the original."""
    pred = torch.cat([pred[:, :2], torch.max(pred[:, :2], pred[:, 2:])], dim=1)
    area_pred = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_target = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    inter_wh = torch.min(pred[:, 2:], target[:, 2:]) - torch.max(pred[:, :2], target[:, :2])
    inter = torch.where((inter_wh > 0).all(dim=1), inter_wh[:, 0] * inter_wh[:, 1], 0.0)
    hull_wh = torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])
    hull = hull_wh[:, 0] * hull_wh[:, 1] + GIOU_EPS
    union = area_pred + area_target - inter + GIOU_EPS
    giou = inter / union - (hull - union) / hull
    return ((1 - giou) * weight).sum()


def mean_over_processes(value: torch.Tensor) -> float:
    """The sum of a scalar over all processes divided by their number (the original's rule)."""
    world_size = comm.get_world_size()
    if world_size > 1:
        value = value.detach().clone()
        torch.distributed.all_reduce(value)
    return value.item() / world_size


class GroundingLoss:
    """ATSS targets + the three losses for a batch; no parameters."""

    def __init__(
        self,
        matcher: ATSSMatcher,
        box_coder: BoxCoder,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        reg_loss_weight: float = 2.0,
    ):
        self.matcher = matcher
        self.box_coder = box_coder
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.reg_loss_weight = reg_loss_weight

    def targets(
        self,
        anchors_per_level: list[torch.Tensor],
        gt_boxes: list[torch.Tensor],
        gt_positive_maps: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Matched GT per anchor (B, A) (-1: negative), token targets (B, A, L) (all zero for
        negatives) and matched GT boxes (B, A, 4) ("+1" xyxy, zero rows for negatives)."""
        matched, token_targets, boxes = [], [], []
        for boxes_i, map_i in zip(gt_boxes, gt_positive_maps):
            match = self.matcher(anchors_per_level, boxes_i)
            token_targets.append(torch.cat([map_i.new_zeros(1, map_i.shape[1]), map_i])[match + 1])
            boxes.append(torch.cat([boxes_i.new_zeros(1, 4), boxes_i])[match + 1])
            matched.append(match)
        return torch.stack(matched), torch.stack(token_targets), torch.stack(boxes)

    def __call__(
        self,
        outputs: HeadOutputs,
        anchors_per_level: list[torch.Tensor],
        gt_boxes: list[torch.Tensor],
        gt_positive_maps: list[torch.Tensor],
        text_mask: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Losses for B images: gt_boxes[i] (G_i, 4) "+1" xyxy, gt_positive_maps[i] (G_i, L)
        binary, text_mask (B, L)."""
        deltas, centerness, logits = flatten_outputs(outputs)
        matched, token_targets, matched_boxes = self.targets(
            anchors_per_level, gt_boxes, gt_positive_maps
        )
        positive = matched >= 0
        num_pos = max(mean_over_processes(positive.sum().float()), 1.0)
        loss_token = token_focal_loss(
            logits.float(), token_targets, text_mask, self.focal_alpha, self.focal_gamma
        )
        anchors = torch.cat(anchors_per_level, dim=0).expand_as(deltas)[positive]
        pred_deltas, pred_ctr = deltas[positive].float(), centerness[positive].float()
        target_deltas = self.box_coder.encode(matched_boxes[positive], anchors)
        target_boxes = self.box_coder.decode(target_deltas, anchors)
        ctr_targets = centerness_targets(target_boxes, anchors)
        ctr_sum = mean_over_processes(ctr_targets.sum())
        if positive.any():
            pred_boxes = self.box_coder.decode(pred_deltas, anchors)
            loss_reg = giou_loss(pred_boxes, target_boxes, ctr_targets) / ctr_sum
            loss_ctr = F.binary_cross_entropy_with_logits(pred_ctr, ctr_targets, reduction="sum")
        else:
            loss_reg, loss_ctr = pred_deltas.sum(), pred_ctr.sum()
        return {
            "loss_reg": self.reg_loss_weight * loss_reg,
            "loss_centerness": loss_ctr / num_pos,
            "loss_dot_product_token": loss_token / num_pos,
        }
