"""FiberVQAModel: VQAv2 as answer classification on the fused pooled features (coarse spec c.1).

One fused pass on (image, question) gives `cls_feats` (B, 2H) = [text pooled, image pooled];
`vqa_classifier` (2H -> 2H -> LayerNorm -> GELU -> A) scores the A answers of the vocabulary.
The loss is the original's `BCEWithLogits(mean) x A` against the dense soft-target matrix
(scores 0.3 / 0.6 / 0.9 / 1.0 of the answers annotators gave): a sum over answers averaged over
the batch. The model has no ITM / MLM head and no temperature, as the released VQA checkpoints.
"""

from collections.abc import Sequence

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

__all__ = ["FiberVQAModel", "vqa_soft_targets", "vqa_loss"]


def vqa_soft_targets(
    labels: Sequence[Sequence[int] | torch.Tensor],
    scores: Sequence[Sequence[float] | torch.Tensor],
    num_answers: int,
) -> torch.Tensor:
    """Dense (B, A) soft targets: row b holds scores[b] at the columns labels[b], 0 elsewhere
    (the original's `vqa_targets`). A question may have no label (an all-zero row)."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} label lists but {len(scores)} score lists")
    labels = [torch.as_tensor(row, dtype=torch.long).reshape(-1) for row in labels]
    scores = [torch.as_tensor(row, dtype=torch.float32).reshape(-1) for row in scores]
    counts = [row.numel() for row in labels]
    for row, (count, row_scores) in enumerate(zip(counts, scores, strict=True)):
        if count != row_scores.numel():
            raise ValueError(
                f"question {row}: {count} vqa_labels but {row_scores.numel()} vqa_scores"
            )
    rows = torch.repeat_interleave(torch.arange(len(labels)), torch.tensor(counts))
    columns = torch.cat(labels)
    outside = (columns < 0) | (columns >= num_answers)
    if outside.any():
        row = int(rows[outside][0])
        raise ValueError(
            f"question {row}: vqa_labels {labels[row].tolist()} outside [0, {num_answers})"
        )
    targets = torch.zeros(len(labels), num_answers)
    targets[rows, columns] = torch.cat(scores)
    return targets


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCEWithLogits(mean) x A of (B, A) logits and soft targets (the original's scaling)."""
    return F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]


@META_ARCH_REGISTRY.register()
class FiberVQAModel(FiberImageTextModel):
    """VQAv2 classifier on the fused trunk. Input per question (VQADatasetMapper): "image"
    uint8 (3, S, S), "input_ids" / "attention_mask" (L,), in training "vqa_labels" (n,) and
    "vqa_scores" (n,). Training: {"loss_vqa"}; eval: [{"vqa_logits": (A,)}]."""

    @configurable
    def __init__(
        self,
        *,
        trunk: FiberTrunk,
        hidden_size: int,
        num_answers: int,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
    ) -> None:
        super().__init__(
            trunk=trunk, hidden_size=hidden_size, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        self.num_answers = num_answers
        self.vqa_classifier = ClassifierHead(2 * hidden_size, 2 * hidden_size, num_answers)
        self.init_heads()
        freeze_unreached_parameters(self)

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {**image_text_config(cfg), "num_answers": cfg.MODEL.PRETRAIN.NUM_ANSWERS}

    def vqa_logits(
        self, images: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Answer logits (B, A) of B (normalised image (B, 3, H, W), question (B, L)) pairs."""
        return self.vqa_classifier(self.fused_cls_feats(images, input_ids, mask))

    def forward(self, batched_inputs: list[dict]):
        """Training: {"loss_vqa"}; eval: one {"vqa_logits": (A,)} per question."""
        images = self.normalize_images([x["image"] for x in batched_inputs])
        text = pad_texts(batched_inputs, self.text_pad_token_id)
        logits = self.vqa_logits(
            images, text["input_ids"].to(self.device), text["attention_mask"].to(self.device)
        )
        if not self.training:
            return [{"vqa_logits": row} for row in logits]
        missing = [x.get("question_id") for x in batched_inputs if "vqa_labels" not in x]
        if missing:
            raise ValueError(f"VQA training inputs without 'vqa_labels': question_id {missing[:5]}")
        targets = vqa_soft_targets(
            [x["vqa_labels"] for x in batched_inputs],
            [x["vqa_scores"] for x in batched_inputs],
            self.num_answers,
        )
        return {"loss_vqa": vqa_loss(logits, targets.to(self.device))}
