"""Box geometry of the original head (maskrcnn_benchmark's "+1" pixel convention).

Inside the grounding head every width is `x2 - x1 + 1` (microsoft/FIBER, GLIP: TO_REMOVE = 1):
anchor and GT areas in the ATSS IoU, and the box coder. The released regression weights and the
original ATSS assignment depend on it, so the head keeps it. The only conversions to and from
detectron2's continuous convention (`x2 = x + w`) are `continuous_to_plus_one` (incoming
`gt_boxes`: x2 - 1, y2 - 1, as the original's COCO loader did) and `plus_one_to_continuous`
(outgoing predictions: x2 + 1, y2 + 1), both called by `GroundingDetector` only.
"""

import math

import torch

BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
MAX_LOG_SIZE_RATIO = math.log(1000.0 / 16)


def continuous_to_plus_one(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) detectron2 xyxy (x2 = x + w) -> (N, 4) inclusive "+1" xyxy (x2 = x + w - 1)."""
    return boxes - boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def plus_one_to_continuous(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) inclusive "+1" xyxy -> (N, 4) detectron2 continuous xyxy."""
    return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])


def box_centers(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) xyxy -> (N, 2) plain centres (x1 + x2) / 2, (y1 + y2) / 2 (no +1)."""
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def pairwise_iou_plus_one(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU (N, M) of (N, 4) and (M, 4) xyxy boxes with +1 widths, as maskrcnn_benchmark's."""
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


class BoxCoder:
    """Anchor-relative box deltas with weights (10, 10, 5, 5) and +1 widths (GLIP's BoxCoder)."""

    def __init__(self, weights: tuple[float, float, float, float] = BOX_CODER_WEIGHTS):
        self.weights = weights

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Deltas (N, 4) taking `anchors` (N, 4) to `boxes` (N, 4)."""
        wx, wy, ww, wh = self.weights
        anchor_w = anchors[:, 2] - anchors[:, 0] + 1
        anchor_h = anchors[:, 3] - anchors[:, 1] + 1
        anchor_cx = (anchors[:, 2] + anchors[:, 0]) / 2
        anchor_cy = (anchors[:, 3] + anchors[:, 1]) / 2
        box_w = boxes[:, 2] - boxes[:, 0] + 1
        box_h = boxes[:, 3] - boxes[:, 1] + 1
        box_cx = (boxes[:, 2] + boxes[:, 0]) / 2
        box_cy = (boxes[:, 3] + boxes[:, 1]) / 2
        return torch.stack(
            [
                wx * (box_cx - anchor_cx) / anchor_w,
                wy * (box_cy - anchor_cy) / anchor_h,
                ww * torch.log(box_w / anchor_w),
                wh * torch.log(box_h / anchor_h),
            ],
            dim=1,
        )

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes (N, 4) from `deltas` (N, 4) relative to `anchors` (N, 4); dw, dh clamped."""
        wx, wy, ww, wh = self.weights
        anchors = anchors.to(deltas.dtype)
        anchor_w = anchors[:, 2] - anchors[:, 0] + 1
        anchor_h = anchors[:, 3] - anchors[:, 1] + 1
        anchor_cx = (anchors[:, 2] + anchors[:, 0]) / 2
        anchor_cy = (anchors[:, 3] + anchors[:, 1]) / 2
        cx = deltas[:, 0] / wx * anchor_w + anchor_cx
        cy = deltas[:, 1] / wy * anchor_h + anchor_cy
        w = torch.exp((deltas[:, 2] / ww).clamp(max=MAX_LOG_SIZE_RATIO)) * anchor_w
        h = torch.exp((deltas[:, 3] / wh).clamp(max=MAX_LOG_SIZE_RATIO)) * anchor_h
        return torch.stack(
            [cx - 0.5 * (w - 1), cy - 0.5 * (h - 1), cx + 0.5 * (w - 1), cy + 0.5 * (h - 1)], dim=1
        )
