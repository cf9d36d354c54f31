"""Rename tables of the official FIBER checkpoints (microsoft/FIBER; DesCo-FIBER uses the
fine-grained layout) onto fiber_det's parameter names, and the conversion of a coarse-stage
checkpoint's trunk into detector weights. Pure: no model is built, nothing is read here.
"""

import re

import torch

from fiber_det.checkpoint.position_tables import resample_tables_to_window
from fiber_det.checkpoint.rename import (
    ConversionResult,
    DropRule,
    RenameRule,
    rename_state_dict,
    strip_prefix,
)

OFFICIAL_FORMATS = ("fine", "coarse", "coarse-trunk")


# The grounding head (`rpn.*` of the official fine-grained checkpoint) -> GroundingDetector.head.
_TOWER = r"rpn\.head\.dyhead_tower\.(\d+)\."

FINE_HEAD_RULES = [
    RenameRule(_TOWER + r"DyConv\.0\.conv\.", r"head.tower.blocks.\1.conv_coarser."),
    RenameRule(_TOWER + r"DyConv\.0\.bn\.", r"head.tower.blocks.\1.conv_coarser.norm."),
    RenameRule(_TOWER + r"DyConv\.1\.conv\.", r"head.tower.blocks.\1.conv_same."),
    RenameRule(_TOWER + r"DyConv\.1\.bn\.", r"head.tower.blocks.\1.conv_same.norm."),
    RenameRule(_TOWER + r"DyConv\.2\.conv\.", r"head.tower.blocks.\1.conv_finer."),
    RenameRule(_TOWER + r"DyConv\.2\.bn\.", r"head.tower.blocks.\1.conv_finer.norm."),
    RenameRule(_TOWER + r"AttnConv\.1\.", r"head.tower.blocks.\1.scale_attention."),
    RenameRule(_TOWER + r"relu\.fc\.0\.", r"head.tower.blocks.\1.task_attention.fc1."),
    RenameRule(_TOWER + r"relu\.fc\.2\.", r"head.tower.blocks.\1.task_attention.fc2."),
    RenameRule(_TOWER + r"offset\.", r"head.tower.blocks.\1.offset."),
    RenameRule(r"rpn\.head\.dot_product_projection_text\.", "head.text_projection."),
    RenameRule(
        r"rpn\.head\.(bbox_pred\.|centerness\.|scales\.|bias_lang$|bias0$|log_scale$)", r"head.\1"
    ),
]

FINE_HEAD_DROPS = [
    DropRule(
        r"rpn\.head\.cls_logits\.",
        "the original's frozen, unused classification conv (its loss is x0; fiber_det sizes "
        "scores from the prompt's positive map instead)",
    ),
    DropRule(
        r"rpn\.anchor_generator\.cell_anchors\.",
        "anchor buffers, recomputed from MODEL.GROUNDING.ANCHOR_SIZES and the feature strides",
    ),
]


def convert_fine_head(state_dict: dict[str, torch.Tensor]) -> ConversionResult:
    """Rename the `rpn.*` keys of an official fine-grained checkpoint onto the detector's head."""
    rpn_only = {k: v for k, v in state_dict.items() if k.startswith("rpn.")}
    return rename_state_dict(rpn_only, FINE_HEAD_RULES, FINE_HEAD_DROPS)


# The fused trunk. fiber_det names: FiberFPNBackbone.trunk.{image_backbone,text_backbone}.*
# (FusedSwin / FusedRoberta) and FiberFPNBackbone.fpn.* (detectron2's FPN). The Swin layout
# (`layers.i.downsample` at the end of stage i) is the original's, so most keys keep their tail.
TRUNK_BUFFER_DROPS = [
    DropRule(r".*\.relative_position_index$", "recomputed from the window size (timm buffer)"),
    DropRule(r".*\.attn_mask$", "shifted-window masks are computed for each input size"),
    DropRule(r".*embeddings\.(position_ids|token_type_ids)$", "transformers' constant buffers"),
]


def trunk_rename_rules(image_prefix: str, text_prefix: str, target: str) -> list[RenameRule]:
    """Rules mapping a FIBER trunk's keys (Swin under `image_prefix`, RoBERTa under
    `text_prefix`, plain strings) onto FiberTrunk's names prefixed by `target`."""
    image, text = re.escape(image_prefix), re.escape(text_prefix)
    block = image + r"layers\.(\d+)\.blocks\.(\d+)\.attn\."
    i2t = target + r"image_backbone.layers.\1.blocks.\2.i2t."
    layer = text + r"encoder\.layer\.(\d+)\."
    t2i = target + r"text_backbone.layers.\1.t2i."
    return [
        RenameRule(block + r"alpha_i2t$", i2t + "gate"),
        RenameRule(block + r"qkv_i2t\.", i2t + "query."),
        RenameRule(block + r"qkv_text_i2t\.", i2t + "key_value."),
        RenameRule(block + r"proj_i2t\.", i2t + "out."),
        RenameRule(block + r"norm_i2t_i\.", i2t + "query_norm."),
        RenameRule(image + r"norm(\d+)\.", target + r"image_backbone.stage_norms.\1."),
        RenameRule(image + r"norm\.", target + "image_backbone.final_norm."),
        RenameRule(image + r"(patch_embed\.|layers\.)", target + r"image_backbone.\1"),
        RenameRule(layer + r"alpha_t2i$", t2i + "gate"),
        RenameRule(layer + r"crossattention_t2i\.self\.(query|key|value)\.", t2i + r"\2."),
        RenameRule(layer + r"crossattention_t2i\.output\.dense\.", t2i + "out."),
        RenameRule(layer, target + r"text_backbone.layers.\1."),
        RenameRule(text + r"embeddings\.", target + "text_backbone.embeddings."),
    ]


# The original FPN names its levels by input index (C2 absent: inner2 is C3); detectron2 by
# stride (fpn_lateral3 for stride 8). P6 / P7 live in `top_blocks` vs `top_block`.
FINE_FPN_RULES = [
    RenameRule(
        rf"fusion_backbone\.backbone\.fpn\.fpn_{kind}{index}\.", f"fpn.fpn_{new}{index + 1}."
    )
    for index in (2, 3, 4)
    for kind, new in (("inner", "lateral"), ("layer", "output"))
] + [RenameRule(r"fusion_backbone\.backbone\.fpn\.top_blocks\.(p6|p7)\.", r"fpn.top_block.\1.")]

FINE_TRUNK_RULES = (
    trunk_rename_rules(
        "fusion_backbone.backbone.body.", "fusion_backbone.language_backbone.body.model.", "trunk."
    )
    + FINE_FPN_RULES
)


def convert_fine_trunk(state_dict: dict[str, torch.Tensor]) -> ConversionResult:
    """Rename the `fusion_backbone.*` keys of an official fine-grained checkpoint onto
    FiberFPNBackbone (`trunk.*`, `fpn.*`); other keys are left out."""
    trunk_only = {k: v for k, v in state_dict.items() if k.startswith("fusion_backbone.")}
    return rename_state_dict(trunk_only, FINE_TRUNK_RULES, TRUNK_BUFFER_DROPS)


# The coarse image-text model (microsoft/FIBER coarse_grained FIBERTransformerSS) ->
# FiberPretrainModel and the downstream task models: the trunk under `trunk.`, the heads keep
# their names (coarse spec a.7, c.1, c.2, c.4).
COARSE_HEAD_RULES = [
    RenameRule(r"(cross_modal_(text|image)_(transform|pooler)(_itc)?\.)", r"\1"),
    RenameRule(r"(itm_score\.fc\.|mlm_score\.)", r"\1"),
    RenameRule(r"((vqa|nlvr2)_classifier\.|cross_modal_att_layers\.)", r"\1"),
    RenameRule(r"temp$", "temp"),
]

COARSE_DROPS = TRUNK_BUFFER_DROPS + [
    DropRule(
        r"(image_queue|text_queue|image_input_queue|text_input_queue|text_input_mask_queue"
        r"|queue_ptr|queue_total)$",
        "ITC queue state of a past run (the original pops it on load too)",
    ),
    DropRule(r"rank_output\.", "a view of itm_score.fc row 1; fiber_det reads itm_logits[:, 1]"),
    DropRule(r"text_transformer\.pooler\.", "RoBERTa's pooler, never used by the original"),
    DropRule(
        r"text_transformer\.encoder\.layer\.\d+\.crossattention_t2i\.output\.LayerNorm\.",
        "never applied by the original (its text->image update is normed by the attention LN)",
    ),
]


def coarse_unused_gate_drops(first_fused_layer: int) -> list[DropRule]:
    """`alpha_t2i` exists in every original text layer; those below the fused ones are unused."""
    layers = "|".join(str(i) for i in range(first_fused_layer))
    if not layers:
        return []
    return [
        DropRule(
            rf"text_transformer\.encoder\.layer\.({layers})\.alpha_t2i$",
            "gate of a text layer without cross-attention (never used by the original)",
        )
    ]


def convert_coarse(
    state_dict: dict[str, torch.Tensor],
    first_fused_layer: int = 6,
    window_size: int | None = None,
) -> ConversionResult:
    """Rename an official coarse checkpoint (a Lightning `{"state_dict": ...}` or the bare dict)
    onto FiberPretrainModel. `first_fused_layer`: index of the first text layer with
    cross-attention (FIBER-B: 6). `window_size`: resample Swin relative position tables, as
    the original does when the image size changes (coarse_grained_spec.md a.1)."""
    state_dict = strip_prefix(state_dict.get("state_dict", state_dict), "module.")
    rules = trunk_rename_rules("vit_model.", "text_transformer.", "trunk.") + COARSE_HEAD_RULES
    drops = COARSE_DROPS + coarse_unused_gate_drops(first_fused_layer)
    result = rename_state_dict(state_dict, rules, drops)
    if window_size is not None:
        resample_tables_to_window(result.state_dict, window_size)
    return result


def convert_fine_grained_detector(state_dict: dict[str, torch.Tensor]) -> ConversionResult:
    """A whole official fine-grained checkpoint (`fusion_backbone.*` + `rpn.*`) onto
    GroundingDetector (`backbone.*` = FiberFPNBackbone, `head.*`)."""
    trunk = convert_fine_trunk(state_dict)
    head = convert_fine_head(state_dict)
    others = [k for k in state_dict if not k.startswith(("fusion_backbone.", "rpn."))]
    return ConversionResult(
        state_dict={**{f"backbone.{k}": v for k, v in trunk.state_dict.items()}, **head.state_dict},
        dropped={**trunk.dropped, **head.dropped},
        unconverted=trunk.unconverted + head.unconverted + others,
    )


def coarse_trunk_drops(query_norm: bool) -> list[DropRule]:
    """What a coarse-stage checkpoint holds that the detector does not take."""
    drops = [
        DropRule(
            r"trunk\.image_backbone\.final_norm\.",
            "the coarse Swin's final norm (the detector has a norm per stage)",
        ),
        DropRule(r"(?!trunk\.)", "coarse-stage head or training state, not part of the detector"),
    ]
    if not query_norm:
        query_norm_drop = DropRule(
            r"trunk\..*\.i2t\.query_norm\.",
            "the coarse fusion's query LayerNorm (the detector has FUSION.QUERY_NORM False)",
        )
        drops.insert(0, query_norm_drop)
    return drops


def convert_coarse_for_detector(
    state_dict: dict[str, torch.Tensor], first_fused_layer: int = 6, query_norm: bool = False
) -> ConversionResult:
    """A coarse checkpoint (official `vit_model.*`, or fiber_det's FiberPretrainModel `trunk.*`)
    -> the detector's initial weights: the trunk under `backbone.trunk.`, everything else
    dropped with its reason (`coarse_trunk_drops`). `query_norm`: the detector's
    MODEL.FIBER.FUSION.QUERY_NORM."""
    state_dict = strip_prefix(state_dict.get("state_dict", state_dict), "module.")
    official = any(k.startswith("vit_model.") for k in state_dict)
    first = convert_coarse(state_dict, first_fused_layer) if official else None
    tensors = first.state_dict if first else state_dict
    result = rename_state_dict(
        tensors, [RenameRule(r"trunk\.", "backbone.trunk.")], coarse_trunk_drops(query_norm)
    )
    if first:
        result.dropped = {**first.dropped, **result.dropped}
        result.unconverted = first.unconverted + result.unconverted
    return result


def detect_official_format(state_dict: dict[str, torch.Tensor]) -> str:
    """'fine' (`fusion_backbone.*`, with or without the `rpn.*` head) or 'coarse'
    (`vit_model.*`)."""
    if any(k.startswith("fusion_backbone.") for k in state_dict):
        return "fine"
    if any(k.startswith("vit_model.") for k in state_dict):
        return "coarse"
    raise ValueError(
        "not an official FIBER checkpoint: no 'fusion_backbone.*' (fine-grained) or "
        f"'vit_model.*' (coarse) keys; first keys: {list(state_dict)[:5]}"
    )


def convert_official(
    state_dict: dict[str, torch.Tensor],
    kind: str,
    window_size: int | None = None,
    first_fused_layer: int = 6,
    query_norm: bool = False,
) -> ConversionResult:
    """Rename a state dict of format `kind`: 'fine' -> GroundingDetector (trunk-only files
    included); 'coarse' -> FiberPretrainModel (Swin tables resampled to `window_size`);
    'coarse-trunk' -> the detector's initial weights from a coarse checkpoint
    (`convert_coarse_for_detector`)."""
    if kind == "fine":
        return convert_fine_grained_detector(state_dict)
    if kind == "coarse":
        return convert_coarse(state_dict, first_fused_layer, window_size=window_size)
    if kind == "coarse-trunk":
        return convert_coarse_for_detector(state_dict, first_fused_layer, query_norm)
    raise ValueError(f"unknown checkpoint format '{kind}' (expected one of {OFFICIAL_FORMATS})")


def official_source_names(
    keys: list[str], kind: str, first_fused_layer: int = 6, query_norm: bool = False
) -> dict[str, str]:
    """{converted name: official name} for `keys`, by running the same rules on the names."""
    names = {key: key for key in keys}
    result = convert_official(names, kind, None, first_fused_layer, query_norm)  # type: ignore[arg-type]
    return result.state_dict
