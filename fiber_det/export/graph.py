"""What the ONNX export traces: the grounding detector from normalised images and token ids to
its raw head outputs (fiber_det.modeling.grounding.decoding.FlatOutputs, rows unflattened).

In the graph: the whole fused trunk (Swin + text tower + fusion), the FPN, the DyHead (its
deformable convs through the grid_sample path), the grounding head and the anchors. Outside:
tokenization, prompt chunking, resizing, normalisation and padding, score aggregation over each
label's tokens, thresholds, top-k, box decoding, NMS (fiber_det.export.onnx_runner, which calls
the detector's own code for all of it).
"""

import torch
from torch import nn

OUTPUT_NAMES = ("box_regression", "centerness", "token_logits", "anchors", "anchor_levels")


class GroundingGraph(nn.Module):
    """images (B, 3, H, W) normalised and padded to the backbone's size divisibility;
    input_ids, attention_mask (P, L): the P prompts every image is run with. Returns
    box_regression (B, P, A, 4), centerness (B, P, A), token_logits (B, P, A, L), anchors (A, 4)
    and anchor_levels (A,)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector.eval()

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        batch, prompts = images.shape[0], input_ids.shape[0]
        prefix = self.detector.backbone.encode_image_prefix(images)
        flat = self.detector.flat_outputs_from_prefix(
            prefix, input_ids.repeat(batch, 1), attention_mask.repeat(batch, 1)
        )
        rows = (batch, prompts)
        return (
            flat.box_regression.unflatten(0, rows),
            flat.centerness.unflatten(0, rows),
            flat.token_logits.unflatten(0, rows),
            flat.anchors,
            flat.anchor_levels,
        )


class FixedVocabularyGraph(GroundingGraph):
    """`GroundingGraph` with its prompts baked in as constants: images (B, 3, H, W) only."""

    def __init__(self, detector: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        super().__init__(detector)
        self.register_buffer("input_ids", input_ids.clone())
        self.register_buffer("attention_mask", attention_mask.clone())

    def forward(self, images: torch.Tensor):
        return super().forward(images, self.input_ids, self.attention_mask)
