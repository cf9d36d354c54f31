"""Grounding head outputs -> per-label detections (FIBER fine-grained spec f.1).

Per level: token probabilities are averaged over each label's tokens (SCORE_AGG MEAN), kept when
above the threshold, capped to the top-k per level by cls x centerness, decoded and clipped; the
score is sqrt(cls x centerness). Then class-wise NMS and the per-image cap over all levels.
"""

import torch
from detectron2.structures import Boxes, Instances
from torchvision.ops import batched_nms

from fiber_det.modeling.grounding.box_coder import BoxCoder, plus_one_to_continuous


def label_scores(token_probs: torch.Tensor, positive_map: torch.Tensor) -> torch.Tensor:
    """Mean probability over each label's tokens: (A, L) x (K, L) binary -> (A, K).

    A label whose row is empty (e.g. cut off by truncation) scores 0 everywhere.
    """
    weights = positive_map / positive_map.sum(dim=1, keepdim=True).clamp(min=1)
    return token_probs @ weights.T


def keep_top_by_kth_value(scores: torch.Tensor, max_detections: int) -> torch.Tensor:
    """Indices with score >= the `max_detections`-th largest (ties may keep more), as the
    original's kthvalue cap."""
    if max_detections <= 0 or len(scores) <= max_detections:
        return torch.arange(len(scores), device=scores.device)
    threshold = torch.kthvalue(scores.cpu(), len(scores) - max_detections + 1).values
    return torch.nonzero(scores >= threshold.to(scores.device)).flatten()


class GroundingPostProcessor:
    """Decode one (image, prompt) pair's per-level outputs into `Instances` (no parameters)."""

    def __init__(
        self,
        box_coder: BoxCoder,
        score_thresh: float = 0.05,
        pre_nms_topk: int = 1000,
        nms_thresh: float = 0.6,
        max_detections: int = 100,
    ):
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        self.pre_nms_topk = pre_nms_topk
        self.nms_thresh = nms_thresh
        self.max_detections = max_detections

    def _level(self, deltas, centerness, token_logits, anchors, positive_map):
        """One level: deltas (A, 4), centerness (A,), token_logits (A, L), anchors (A, 4),
        positive_map (K, L) -> "+1" boxes (n, 4), scores (n,), row indices (n,)."""
        cls = label_scores(token_logits.sigmoid(), positive_map)
        candidates = cls > self.score_thresh
        num_keep = min(int(candidates.sum()), self.pre_nms_topk)
        ranking = torch.where(candidates, cls * centerness.sigmoid()[:, None], -1.0).flatten()
        top_scores, top_index = ranking.topk(num_keep, sorted=False)
        location = top_index // cls.shape[1]
        boxes = self.box_coder.decode(deltas[location], anchors[location])
        return boxes, top_scores.sqrt(), top_index % cls.shape[1]

    def __call__(
        self,
        deltas: list[torch.Tensor],
        centerness: list[torch.Tensor],
        token_logits: list[torch.Tensor],
        anchors: list[torch.Tensor],
        positive_map: torch.Tensor,
        image_size: tuple[int, int],
    ) -> Instances:
        """Per level (A_l, 4), (A_l,), (A_l, L), (A_l, 4); positive_map (K, L); image_size (h, w)
        of the resized unpadded image -> Instances with continuous `pred_boxes`, `scores` and
        `pred_classes` = row of `positive_map`."""
        parts = [
            self._level(*level, positive_map)
            for level in zip(deltas, centerness, token_logits, anchors)
        ]
        boxes, scores, rows = (torch.cat(p) for p in zip(*parts))
        height, width = image_size
        limits = boxes.new_tensor([width - 1, height - 1, width - 1, height - 1])
        boxes = plus_one_to_continuous(boxes.clamp(min=0).minimum(limits))
        keep = batched_nms(boxes, scores, rows, self.nms_thresh)
        keep = keep[keep_top_by_kth_value(scores[keep], self.max_detections)]
        result = Instances(image_size)
        result.pred_boxes = Boxes(boxes[keep])
        result.scores = scores[keep]
        result.pred_classes = rows[keep]
        return result
