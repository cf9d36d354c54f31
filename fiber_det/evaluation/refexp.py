"""RefCOCO / RefCOCO+ / RefCOCOg: Precision@1/5/10 (fine_grained_spec.md f.6, h.7).

MDETR's refexp evaluator, used by microsoft/FIBER, ranks all predicted boxes of an expression
by score and counts a hit at k when one of the top k has GIoU >= 0.5 with the single ground-truth
box (xywh -> (x, y, x + w, y + h), no -1). Standard RefCOCO accuracy uses IoU >= 0.5, slightly
more lenient; both are reported, the GIoU numbers under the original's names.
"""

import torch
from torchvision.ops import box_iou, generalized_box_iou

from fiber_det.evaluation.common import (
    PerImageHitsEvaluator,
    gather_on_main,
    gt_boxes_xyxy,
    report,
)

PRECISION_KS = (1, 5, 10)
THRESHOLD = 0.5


def expression_hits(
    pred_boxes: torch.Tensor, scores: torch.Tensor, gt_box: torch.Tensor
) -> torch.Tensor:
    """(2, len(PRECISION_KS)) booleans: row 0 GIoU >= 0.5 within top-k, row 1 IoU >= 0.5."""
    ranked = pred_boxes[scores.argsort(descending=True, stable=True)]
    hits = torch.zeros(2, len(PRECISION_KS), dtype=torch.bool)
    if len(ranked) == 0:
        return hits
    for row, overlap in enumerate((generalized_box_iou, box_iou)):
        good = (overlap(ranked, gt_box[None])[:, 0] >= THRESHOLD).cummax(0).values
        for column, k in enumerate(PRECISION_KS):
            hits[row, column] = good[min(k, len(ranked)) - 1]
    return hits


class RefExpEvaluator(PerImageHitsEvaluator):
    """Precision@1/5/10 (percent) of one referring-expression split, GIoU and IoU criteria."""

    def image_hits(self, record: dict, instances) -> torch.Tensor:
        """(2, len(PRECISION_KS)) hits of one expression (GIoU row, IoU row)."""
        if not record.get("annotations"):
            raise ValueError(
                f"{self.dataset_name}: image id {record['image_id']} has no ground-truth box "
                "(field 'annotations')"
            )
        gt_box = gt_boxes_xyxy(record["annotations"][:1])[0]
        return expression_hits(instances.pred_boxes.tensor, instances.scores, gt_box)

    def evaluate(self) -> dict:
        hits = gather_on_main(self._hits)
        if hits is None:
            return {}
        if not hits:
            return {"refexp": {}}
        precision = torch.stack(hits).float().mean(0).mul(100)
        metrics = {f"P@{k}": precision[0, i].item() for i, k in enumerate(PRECISION_KS)}
        metrics.update({f"P@{k}_iou": precision[1, i].item() for i, k in enumerate(PRECISION_KS)})
        metrics["num_expressions"] = float(len(hits))
        report(
            f"Referring expressions {self.dataset_name} (P@k: GIoU >= 0.5; _iou: IoU >= 0.5)",
            metrics,
            self.output_dir,
            f"refexp_{self.dataset_name}.json",
        )
        return {"refexp": metrics}
