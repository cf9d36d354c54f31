"""ATSS anchor assignment (Zhang et al. 2020) as the original FIBER / GLIP head uses it.

For each GT: per level, the `topk` anchors whose centres are nearest to the GT centre are
candidates; the IoU threshold is mean + std (unbiased) of the candidates' IoUs; a candidate is
positive when its IoU reaches the threshold and its centre lies strictly inside the GT
(min(l, t, r, b) > 0.01). An anchor positive for several GTs takes the one of highest IoU.
IoUs use the "+1" widths of the original (see box_coder.py); centres and edges do not.
"""

import torch

from fiber_det.modeling.grounding.box_coder import box_centers, pairwise_iou_plus_one

INSIDE_MARGIN = 0.01


class ATSSMatcher:
    """Assign each anchor of one image to a GT index or -1; no parameters, no Python loop
    over anchors or GTs (a loop over levels only)."""

    def __init__(self, topk: int = 9):
        self.topk = topk

    def _candidates(self, distances: torch.Tensor, num_per_level: list[int]) -> torch.Tensor:
        """(A, G) centre distances -> (C, G) anchor indices of the per-level nearest anchors."""
        candidates, start = [], 0
        for count in num_per_level:
            k = min(self.topk, count)
            _, nearest = distances[start : start + count].topk(k, dim=0, largest=False)
            candidates.append(nearest + start)
            start += count
        return torch.cat(candidates, dim=0)

    def __call__(
        self, anchors_per_level: list[torch.Tensor], gt_boxes: torch.Tensor
    ) -> torch.Tensor:
        """anchors: list of (A_l, 4); gt_boxes (G, 4), both "+1" xyxy -> (A,) int64 in [-1, G)."""
        anchors = torch.cat(anchors_per_level, dim=0)
        num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
        if num_gt == 0:
            return torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
        ious = pairwise_iou_plus_one(anchors, gt_boxes)
        anchor_centers = box_centers(anchors)
        gt_centers = box_centers(gt_boxes)
        distances = (anchor_centers[:, None, :] - gt_centers[None, :, :]).pow(2).sum(-1).sqrt()
        candidates = self._candidates(distances, [a.shape[0] for a in anchors_per_level])
        candidate_ious = ious.gather(0, candidates)
        threshold = candidate_ious.mean(dim=0) + candidate_ious.std(dim=0)
        centers = anchor_centers[candidates]  # (C, G, 2)
        edges = torch.stack(
            [
                centers[..., 0] - gt_boxes[:, 0],
                centers[..., 1] - gt_boxes[:, 1],
                gt_boxes[:, 2] - centers[..., 0],
                gt_boxes[:, 3] - centers[..., 1],
            ],
            dim=-1,
        )
        is_positive = (candidate_ious >= threshold) & (edges.min(dim=-1).values > INSIDE_MARGIN)
        gt_index = torch.arange(num_gt, device=anchors.device).expand_as(candidates)
        masked = torch.full_like(ious, -torch.inf)
        rows, cols = candidates[is_positive], gt_index[is_positive]
        masked[rows, cols] = ious[rows, cols]
        best_iou, best_gt = masked.max(dim=1)
        return torch.where(best_iou == -torch.inf, -1, best_gt)
