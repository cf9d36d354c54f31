"""Flickr30k Entities phrase grounding: Recall@1/5/10 and upper bound (fine_grained_spec.md f.5).

Protocol of MDETR's flickr_eval, used by GLIP and microsoft/FIBER: predictions are grouped by
phrase (pred_classes = phrase index) and sorted by score; a dummy [0, 0, 0, 0] box is appended
to every phrase; a phrase is a hit at k when one of its top-k boxes has IoU >= 0.5 with ANY
ground-truth box of the phrase ("any-box", separateGT). The upper bound uses all its boxes.
With merged boxes the ground truth of a phrase is the box enclosing all its boxes.

Ground truth comes from the MDETR json itself: the phrases are `tokens_positive_eval` and the
boxes of a phrase are the annotations whose `tokens_positive` overlap the phrase's spans.
"""

import torch
from detectron2.data import MetadataCatalog
from torchvision.ops import box_iou

from fiber_det.evaluation.common import (
    PerImageHitsEvaluator,
    gather_on_main,
    gt_boxes_xyxy,
    report,
)

RECALL_KS = (1, 5, 10)
IOU_THRESHOLD = 0.5


def phrase_gt_boxes(record: dict, merged: bool) -> list[torch.Tensor]:
    """Ground-truth boxes (G, 4) of each phrase of one (image, caption) record."""
    annotations = record.get("annotations", [])
    boxes = gt_boxes_xyxy(annotations)
    result = []
    for spans in record.get("phrase_spans", []):
        mask = torch.tensor(
            [
                any(b < pe and e > pb for b, e in ann["tokens_positive"] for pb, pe in spans)
                for ann in annotations
            ],
            dtype=torch.bool,
        )
        phrase_boxes = boxes[mask] if annotations else boxes
        if merged and len(phrase_boxes):
            phrase_boxes = torch.cat(
                [phrase_boxes[:, :2].min(0).values, phrase_boxes[:, 2:].max(0).values]
            )[None]
        result.append(phrase_boxes)
    return result


def phrase_hits(
    pred_boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, gt: list[torch.Tensor]
) -> torch.Tensor:
    """(P, len(RECALL_KS) + 1) booleans: hit at each k, then the upper bound, for P phrases."""
    hits = torch.zeros(len(gt), len(RECALL_KS) + 1, dtype=torch.bool)
    order = scores.argsort(descending=True, stable=True)
    pred_boxes, labels = pred_boxes[order], labels[order]
    for phrase, gt_boxes in enumerate(gt):
        if len(gt_boxes) == 0:
            continue
        boxes = torch.cat([pred_boxes[labels == phrase], torch.zeros(1, 4)])
        best = box_iou(boxes, gt_boxes).max(1).values >= IOU_THRESHOLD  # (B,) per ranked box
        cumulative = best.cummax(0).values
        for column, k in enumerate(RECALL_KS):
            hits[phrase, column] = cumulative[min(k, len(boxes)) - 1]
        hits[phrase, -1] = cumulative[-1]
    return hits


class FlickrRecallEvaluator(PerImageHitsEvaluator):
    """Recall@1/5/10 and upper bound over all phrases of a Flickr30k Entities split (percent)."""

    def __init__(
        self, dataset_name: str, output_dir: str | None = None, merged: bool | None = None
    ):
        super().__init__(dataset_name, output_dir)
        metadata = MetadataCatalog.get(dataset_name)
        self.merged = metadata.get("merged_boxes", False) if merged is None else merged

    def image_hits(self, record: dict, instances) -> torch.Tensor:
        """(phrases with a box, len(RECALL_KS) + 1) hits of one image."""
        if not record.get("phrase_spans"):
            json_file = MetadataCatalog.get(self.dataset_name).get("json_file", self.dataset_name)
            raise ValueError(
                f"{json_file}: image id {record.get('image_id')} ({record.get('file_name')}) has "
                "no phrases to evaluate (field 'tokens_positive_eval' missing or empty)"
            )
        gt = phrase_gt_boxes(record, self.merged)
        hits = phrase_hits(
            instances.pred_boxes.tensor, instances.scores, instances.pred_classes, gt
        )
        return hits[[len(g) > 0 for g in gt]]

    def evaluate(self) -> dict:
        hits = gather_on_main(self._hits)
        if hits is None:
            return {}
        stacked = torch.cat(hits) if hits else torch.zeros(0, len(RECALL_KS) + 1, dtype=torch.bool)
        recalls = stacked.float().mean(0).mul(100).tolist() if len(stacked) else [0.0] * 4
        protocol = "merged" if self.merged else "any_box"
        names = [f"R@{k}" for k in RECALL_KS] + ["upper_bound"]
        metrics = dict(zip(names, recalls, strict=True))
        metrics["num_phrases"] = float(len(stacked))
        report(
            f"Flickr30k Entities {self.dataset_name} ({protocol})",
            metrics,
            self.output_dir,
            f"flickr_{self.dataset_name}_{protocol}.json",
        )
        return {f"flickr_{protocol}": metrics}
