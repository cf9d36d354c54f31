"""Head outputs flattened over the pyramid levels, and their decoding into detections.

The one decoding path shared by the detector's inference and the ONNX runner
(fiber_det.export): both produce `FlatOutputs` (the exported graph returns exactly its tensors)
and both decode them here, so post-processing cannot drift between the two.
"""

from dataclasses import dataclass

import torch
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances
from torch import nn

from fiber_det.modeling.grounding.head import HeadOutputs
from fiber_det.modeling.grounding.inference import GroundingPostProcessor


@dataclass
class FlatOutputs:
    """N = rows of the batch (image-major: image 0's prompts first), A = anchors of all levels.

    box_regression (N, A, 4) scaled deltas; centerness (N, A) logits; token_logits (N, A, L);
    anchors (A, 4) "+1" boxes; anchor_levels (A,) int64 pyramid level of each anchor.
    """

    box_regression: torch.Tensor
    centerness: torch.Tensor
    token_logits: torch.Tensor
    anchors: torch.Tensor
    anchor_levels: torch.Tensor


def flatten_head_outputs(outputs: HeadOutputs, anchors: list[torch.Tensor]) -> FlatOutputs:
    """Per-level head outputs and anchors (A_l, 4) -> one FlatOutputs (levels concatenated,
    locations row-major within a level)."""
    # zeros_like keeps the length symbolic in an exported graph (torch.full would bake it in)
    levels = [
        torch.zeros_like(a[:, 0], dtype=torch.int64) + level for level, a in enumerate(anchors)
    ]
    return FlatOutputs(
        torch.cat([b.permute(0, 2, 3, 1).flatten(1, 2) for b in outputs.box_regression], 1),
        torch.cat([c.flatten(1) for c in outputs.centerness], 1),
        torch.cat(outputs.token_logits, 1),
        torch.cat(anchors),
        torch.cat(levels),
    )


def pad_columns(positive_map: torch.Tensor, length: int) -> torch.Tensor:
    """(K, L') binary map -> (K, length) with zero columns for padded tokens."""
    if positive_map.shape[1] > length:
        raise ValueError(f"positive map has {positive_map.shape[1]} columns for {length} tokens")
    return nn.functional.pad(positive_map.float(), (0, length - positive_map.shape[1]))


def decode_row(
    postprocessor: GroundingPostProcessor,
    flat: FlatOutputs,
    row: int,
    prompt: dict,
    image_size: tuple[int, int],
) -> Instances:
    """Detections of batch row `row` for `prompt` (its `positive_map` (K, L') and `labels` (K,));
    pred_classes = prompt["labels"][k]. image_size: (h, w) of the resized unpadded image."""
    counts = torch.bincount(flat.anchor_levels).tolist()
    device = flat.token_logits.device
    positive_map = pad_columns(prompt["positive_map"], flat.token_logits.shape[-1]).to(device)
    instances = postprocessor(
        flat.box_regression[row].split(counts),
        flat.centerness[row].split(counts),
        flat.token_logits[row].split(counts),
        flat.anchors.split(counts),
        positive_map,
        image_size,
    )
    instances.pred_classes = prompt["labels"].to(device)[instances.pred_classes]
    return instances


def merge_chunks(chunks: list[Instances], height: int, width: int) -> Instances:
    """The detections of an image's prompt chunks, concatenated and rescaled to its original
    (height, width)."""
    return detector_postprocess(Instances.cat(chunks), height, width)
