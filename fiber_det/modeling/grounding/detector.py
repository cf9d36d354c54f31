"""GroundingDetector: fused FIBER trunk + FPN, DyHead grounding head, ATSS losses, inference.

Detectron2's contract: `list[dict]` in (see the data contract in the mapper), training returns
`{"loss_*": scalar}`, inference `[{"instances": Instances}]` in original image coordinates
with `pred_boxes`, `scores` and `pred_classes` (the prompts' `labels`).

Box convention: the head works in the original's "+1" geometry (box_coder.py). Here, and only
here, incoming `gt_boxes` become x2 - 1, y2 - 1 (as the original's COCO loader did) and the
post-processor returns x2 + 1, y2 + 1, so detectron2's COCO/LVIS evaluators measure what the
original's evaluator measured.

A vocabulary split into k prompt chunks is run as one batch: the trunk's text-independent
image prefix is computed once per image and repeated for the k chunks (image-major).

The backbone is any detectron2 Backbone with the `TextConditionedBackbone` interface below
(fiber_det's `FiberFPNBackbone` is the registered one).
"""

from typing import Protocol, runtime_checkable

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList, Instances
from torch import nn

from fiber_det.modeling.grounding.anchors import GridAnchors
from fiber_det.modeling.grounding.atss import ATSSMatcher
from fiber_det.modeling.grounding.box_coder import BoxCoder, continuous_to_plus_one
from fiber_det.modeling.grounding.decoding import (
    FlatOutputs,
    decode_row,
    flatten_head_outputs,
    merge_chunks,
    pad_columns,
)
from fiber_det.modeling.grounding.head import HeadOutputs, build_grounding_head
from fiber_det.modeling.grounding.inference import GroundingPostProcessor
from fiber_det.modeling.grounding.losses import GroundingLoss
from fiber_det.modeling.text_padding import pad_texts


@runtime_checkable
class TextConditionedBackbone(Protocol):
    """What the detector needs of its backbone besides detectron2's `output_shape()`.

    `forward(images (B, 3, H, W), input_ids (k*B, L), attention_mask (k*B, L))` returns an
    object with `features` ({name: (k*B, C, h, w)}) and `text` (`embedded` (k*B, L, D));
    `encode_image_prefix(images, prompts_per_image)` / `forward_from_prefix(prefix, input_ids,
    attention_mask)` split that forward at the first text-dependent block, so k prompts reuse
    one prefix (`prompts_per_image`, None when unknown, lets it skip work one prompt cannot
    amortise).
    `encode_image(images)` / `encode_text(input_ids, attention_mask)` run each tower alone
    (fusion off, the fast mode for fixed vocabularies).
    """

    size_divisibility: int
    text_hidden_size: int  # D of the text features (the head's projection input)
    text_pad_token_id: int  # prompts are padded with it

    def output_shape(self): ...

    def encode_image_prefix(self, images, prompts_per_image=None): ...

    def forward_from_prefix(self, prefix, input_ids, attention_mask=None): ...

    def encode_image(self, images): ...

    def encode_text(self, input_ids, attention_mask=None): ...


def check_inputs(batched_inputs: list[dict], training: bool) -> None:
    """Raise a ValueError naming the missing field of the data contract, if any."""
    required = ("image", "prompts", "instances") if training else ("image", "prompts")
    for index, x in enumerate(batched_inputs):
        missing = [key for key in required if key not in x]
        if missing or not x["prompts"]:
            raise ValueError(
                f"input {index} ({x.get('file_name', 'no file_name')}) lacks {missing or 'prompts'}"
                ": GroundingDetector expects GroundingDatasetMapper's dicts"
            )
        if training and not x["instances"].has("gt_positive_map"):
            raise ValueError(f"input {index}: instances need gt_positive_map (N, L)")


@META_ARCH_REGISTRY.register()
class GroundingDetector(nn.Module):
    """Boxes from text: every location scored against every prompt token (FIBER / GLIP)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        anchor_generator: GridAnchors,
        loss: GroundingLoss,
        postprocessor: GroundingPostProcessor,
        in_features: list[str],
        pixel_mean: list[float],
        pixel_std: list[float],
        prompts_per_pass: int = 1,
    ):
        super().__init__()
        if not isinstance(backbone, TextConditionedBackbone):
            raise TypeError(
                f"{type(backbone).__name__} lacks the TextConditionedBackbone interface the "
                "grounding detector needs (text_hidden_size, text_pad_token_id, prefix reuse)"
            )
        if prompts_per_pass < 0:
            raise ValueError(
                f"MODEL.GROUNDING.PROMPTS_PER_PASS={prompts_per_pass}: give the number of prompt "
                "chunks per fused pass (1 or more), or 0 for all of them in one pass"
            )
        self.backbone = backbone
        self.head = head
        self.anchor_generator = anchor_generator
        self.loss = loss
        self.postprocessor = postprocessor
        self.in_features = in_features
        self.prompts_per_pass = prompts_per_pass
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = build_backbone(cfg)
        grounding = cfg.MODEL.GROUNDING
        shapes = backbone.output_shape()
        missing = [f for f in grounding.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.GROUNDING.IN_FEATURES {missing} not in backbone {list(shapes)}"
            )
        in_shapes = [shapes[f] for f in grounding.IN_FEATURES]
        box_coder = BoxCoder()
        return {
            "backbone": backbone,
            "head": build_grounding_head(cfg, in_shapes, backbone.text_hidden_size),
            "anchor_generator": GridAnchors(grounding.ANCHOR_SIZES, [s.stride for s in in_shapes]),
            "loss": GroundingLoss(
                ATSSMatcher(grounding.ATSS_TOPK),
                box_coder,
                grounding.FOCAL_ALPHA,
                grounding.FOCAL_GAMMA,
                grounding.REG_LOSS_WEIGHT,
            ),
            "postprocessor": build_postprocessor(cfg),
            "in_features": list(grounding.IN_FEATURES),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "prompts_per_pass": grounding.PROMPTS_PER_PASS,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise and pad (to the backbone's size divisibility) -> ImageList (B, 3, H, W)."""
        return normalize_and_pad(
            [x["image"] for x in batched_inputs],
            self.pixel_mean,
            self.pixel_std,
            self.backbone.size_divisibility,
        )

    def _text_tensors(self, prompts: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded input_ids and attention_mask (P, L) on the model's device."""
        text = pad_texts(prompts, self.backbone.text_pad_token_id)
        return text["input_ids"].to(self.device), text["attention_mask"].to(self.device)

    def _head(self, backbone_output) -> tuple[HeadOutputs, list[torch.Tensor]]:
        """Head outputs on the backbone's features and text, and the anchors of every level."""
        features = [backbone_output.features[f] for f in self.in_features]
        head_outputs = self.head(features, backbone_output.text.embedded)
        sizes = [tuple(f.shape[-2:]) for f in features]
        return head_outputs, self.anchor_generator(sizes, self.device)

    def forward(self, batched_inputs: list[dict]):
        """Training: dict of losses. Inference: [{"instances": Instances}] per image."""
        check_inputs(batched_inputs, self.training)
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        if any(len(x["prompts"]) != 1 for x in batched_inputs):
            raise ValueError("training expects exactly one prompt per image in 'prompts'")
        input_ids, attention_mask = self._text_tensors([x["prompts"][0] for x in batched_inputs])
        outputs, anchors = self._head(self.backbone(images.tensor, input_ids, attention_mask))
        return self.losses(outputs, anchors, batched_inputs, attention_mask)

    def losses(self, outputs: HeadOutputs, anchors, batched_inputs, attention_mask) -> dict:
        """ATSS targets and the three losses; gt boxes converted to the head's "+1" geometry."""
        length = attention_mask.shape[1]
        gt_boxes, gt_maps = [], []
        for x in batched_inputs:
            instances = x["instances"].to(self.device)
            gt_boxes.append(continuous_to_plus_one(instances.gt_boxes.tensor))
            gt_maps.append(pad_columns(instances.gt_positive_map, length))
        return self.loss(outputs, anchors, gt_boxes, gt_maps, attention_mask)

    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        """[{"instances": Instances}] per input, in original image coordinates.

        Images are run in groups of equal padded size: the trunk attends over padded pixels and
        the DyHead pools globally (as the original, whose released weights expect it), so a
        mixed-size batch would otherwise depend on its composition. Results therefore equal
        batch-1 results whatever the batch.
        """
        return self._by_padded_size(batched_inputs, self._inference_same_size)

    def _by_padded_size(self, batched_inputs: list[dict], run) -> list[dict]:
        """`run` per group of equal padded size (see `run_by_padded_size`)."""
        return run_by_padded_size(batched_inputs, self.backbone.size_divisibility, run)

    def encode_vocabulary(self, prompts: list[dict]) -> torch.Tensor:
        """Fusion-off text features of P prompt chunks, (P, L, D) with padded tokens 0 (L the
        longest chunk): computed once per vocabulary (and cacheable) for `inference_unfused`."""
        return self.backbone.encode_text(*self._text_tensors(prompts)).embedded

    def inference_unfused(
        self, batched_inputs: list[dict], prompts: list[dict], text_embedded: torch.Tensor
    ) -> list[dict]:
        """Fast mode for a fixed vocabulary (fusion off: the paper's dual-encoder switch).

        The image tower and the DyHead tower run once per image; each of the P `prompts`
        (chunks) is then only scored: its tokens `text_embedded[k]` (from `encode_vocabulary`,
        (P, L, D)) against the shared tower, and decoded as the chunked inference decodes it.
        `batched_inputs` are image dicts (their "prompts", if any, are not read).
        """
        if text_embedded.shape[0] != len(prompts):
            raise ValueError(
                f"text features of {text_embedded.shape[0]} prompts for {len(prompts)} prompts"
            )
        text_embedded = text_embedded.to(self.device)

        def run(group: list[dict]) -> list[dict]:
            return self._inference_unfused_same_size(group, prompts, text_embedded)

        return self._by_padded_size(batched_inputs, run)

    def _inference_unfused_same_size(
        self, batched_inputs: list[dict], prompts: list[dict], text_embedded: torch.Tensor
    ) -> list[dict]:
        """`inference_unfused` for images of one padded size."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone.encode_image(images.tensor).features
        levels = [features[f] for f in self.in_features]
        tower, dense = self.head.dense(levels)
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in levels], self.device)
        detections: list[list[Instances]] = [[] for _ in batched_inputs]
        for k, prompt in enumerate(prompts):
            text = text_embedded[k : k + 1, : prompt["input_ids"].shape[0]]
            logits = self.head.token_logits(tower, text.expand(len(batched_inputs), -1, -1))
            flat = flatten_head_outputs(
                HeadOutputs(dense.box_regression, dense.centerness, logits), anchors
            )
            for index, size in enumerate(images.image_sizes):
                detections[index].append(decode_row(self.postprocessor, flat, index, prompt, size))
        return self._merge(batched_inputs, detections, images.image_sizes)

    def _inference_same_size(self, batched_inputs: list[dict]) -> list[dict]:
        """The image prefix once, then the prompt chunks `prompts_per_pass` at a time (one by
        default, all when 0) as one batch; per-chunk detections are concatenated, each chunk
        capped at TEST.DETECTIONS_PER_IMAGE like the original's separate chunked runs."""
        images = self.preprocess_image(batched_inputs)
        per_image = max(len(x["prompts"]) for x in batched_inputs)
        prefix = self.backbone.encode_image_prefix(images.tensor, per_image)
        step = self.prompts_per_pass or per_image
        detections: list[list[Instances]] = [[] for _ in batched_inputs]
        for first in range(0, per_image, step):
            ks = range(first, min(first + step, per_image))
            # Images with fewer prompts repeat their last one; the duplicates are not decoded.
            prompts = [
                x["prompts"][min(k, len(x["prompts"]) - 1)] for x in batched_inputs for k in ks
            ]
            flat = self.flat_outputs_from_prefix(prefix, *self._text_tensors(prompts))
            for index, x in enumerate(batched_inputs):
                for offset, k in enumerate(ks):
                    if k < len(x["prompts"]):
                        row = index * len(ks) + offset
                        size = images.image_sizes[index]
                        detections[index].append(
                            decode_row(self.postprocessor, flat, row, x["prompts"][k], size)
                        )
        return self._merge(batched_inputs, detections, images.image_sizes)

    @staticmethod
    def _merge(batched_inputs: list[dict], detections: list[list[Instances]], sizes) -> list:
        """Per input the chunks' detections concatenated, in original image coordinates."""
        results = []
        for x, chunks, size in zip(batched_inputs, detections, sizes):
            height, width = x.get("height", size[0]), x.get("width", size[1])
            results.append({"instances": merge_chunks(chunks, height, width)})
        return results

    def flat_outputs_from_prefix(
        self, prefix, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> FlatOutputs:
        """Image prefix of B images and (k*B, L) texts (image-major) -> FlatOutputs of k*B rows."""
        outputs, anchors = self._head(
            self.backbone.forward_from_prefix(prefix, input_ids, attention_mask)
        )
        return flatten_head_outputs(outputs, anchors)


def run_by_padded_size(batched_inputs: list[dict], divisor: int, run) -> list[dict]:
    """`run(inputs)` on each group of inputs whose images (3, H, W) pad to the same size (a
    multiple of `divisor`), results in input order."""
    divisor = max(divisor, 1)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, x in enumerate(batched_inputs):
        size = tuple(-(-side // divisor) * divisor for side in x["image"].shape[-2:])
        groups.setdefault(size, []).append(index)
    results: list[dict] = [{} for _ in batched_inputs]
    for indices in groups.values():
        outputs = run([batched_inputs[i] for i in indices])
        for index, output in zip(indices, outputs):
            results[index] = output
    return results


def build_postprocessor(cfg) -> GroundingPostProcessor:
    """The inference post-processor of cfg.MODEL.GROUNDING's test thresholds."""
    grounding = cfg.MODEL.GROUNDING
    return GroundingPostProcessor(
        BoxCoder(),
        grounding.SCORE_THRESH_TEST,
        grounding.PRE_NMS_TOPK_TEST,
        grounding.NMS_THRESH_TEST,
        cfg.TEST.DETECTIONS_PER_IMAGE,
    )


def normalize_and_pad(
    images: list[torch.Tensor], pixel_mean: torch.Tensor, pixel_std: torch.Tensor, divisor: int
) -> ImageList:
    """(3, H_i, W_i) pixel images -> normalised ImageList (B, 3, H, W) padded with zeros to a
    multiple of `divisor`; mean / std (3, 1, 1)."""
    normalized = [(x.to(pixel_mean.device) - pixel_mean) / pixel_std for x in images]
    return ImageList.from_tensors(normalized, divisor)
