"""Pure renaming of official FIBER state dicts into fiber_det's parameter names.

No model is built here. A conversion is an ordered list of `RenameRule`s (regular expressions
anchored at the start of a key; the first rule that matches wins) plus `DropRule`s for keys
that are deliberately not carried over, each with its reason. Every key of an input state dict
is either renamed, dropped with a reason, or reported as unconverted.
"""

import re
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class RenameRule:
    """Rename keys matching `pattern` (a regex matched at the key's start) to `replacement`."""

    pattern: str
    replacement: str


@dataclass(frozen=True)
class DropRule:
    """Keys matching `pattern` are not carried over, for `reason`."""

    pattern: str
    reason: str


@dataclass
class ConversionResult:
    """What `rename_state_dict` produced: the renamed tensors and every key it did not map."""

    state_dict: dict[str, torch.Tensor]
    dropped: dict[str, str] = field(default_factory=dict)
    unconverted: list[str] = field(default_factory=list)


def rename_key(key: str, rules: list[RenameRule]) -> str | None:
    """The new name of `key` under the first matching rule, or None when no rule matches."""
    for rule in rules:
        new_key, count = re.subn(f"^(?:{rule.pattern})", rule.replacement, key, count=1)
        if count:
            return new_key
    return None


def rename_state_dict(
    state_dict: dict[str, torch.Tensor],
    rules: list[RenameRule],
    drops: list[DropRule] = (),
) -> ConversionResult:
    """Apply `drops` then `rules` to every key; collisions of two keys on one name raise."""
    result = ConversionResult(state_dict={})
    for key, tensor in state_dict.items():
        reason = next((d.reason for d in drops if re.match(d.pattern, key)), None)
        if reason is not None:
            result.dropped[key] = reason
            continue
        new_key = rename_key(key, rules)
        if new_key is None:
            result.unconverted.append(key)
            continue
        if new_key in result.state_dict:
            raise ValueError(f"two checkpoint keys map onto '{new_key}' (the second is '{key}')")
        result.state_dict[new_key] = tensor
    return result


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove `prefix` (e.g. 'module.') from every key that starts with it."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


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


def interpolate_relative_position_bias(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """((2w-1)^2, heads) table -> ((2w'-1)^2, heads) by bicubic resampling of the (2w-1)^2
    grid, as the original FIBER / Swin loaders do (align_corners=False)."""
    old_side = round(table.shape[0] ** 0.5)
    if old_side**2 != table.shape[0]:
        raise ValueError(f"relative position table of {table.shape[0]} rows is not square")
    new_side = 2 * window_size - 1
    if new_side == old_side:
        return table
    heads = table.shape[1]
    grid = table.T.reshape(1, heads, old_side, old_side).float()
    grid = torch.nn.functional.interpolate(grid, size=(new_side, new_side), mode="bicubic")
    return grid[0].permute(1, 2, 0).reshape(new_side * new_side, heads).to(table.dtype)


SWIN_DROPS = TRUNK_BUFFER_DROPS + [
    DropRule(r"head\.", "the ImageNet classifier, unused by the trunk"),
]


def convert_swin_checkpoint(
    checkpoint: dict, window_size: int | None = None, final_norm: bool = True
) -> ConversionResult:
    """A Swin classification checkpoint (microsoft/Swin-Transformer's `{'model': ...}` or timm's
    layout) -> FusedSwin keys; relative position tables resampled to `window_size` if given.
    `final_norm=False` drops the classifier's last LayerNorm (per-stage output norms)."""
    state_dict = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    timm_layout = "layers.0.downsample.reduction.weight" not in state_dict and any(
        k.startswith("layers.1.downsample.") for k in state_dict
    )
    rules = [RenameRule(r"norm\.", "final_norm."), RenameRule(r"(patch_embed\.|layers\.)", r"\1")]
    if timm_layout:  # timm merges patches at the start of stage i + 1 (timm checkpoint_filter_fn)
        rules = [
            RenameRule(rf"layers\.{i}\.downsample\.", f"layers.{i - 1}.downsample.")
            for i in range(1, 8)
        ] + rules
    drops = SWIN_DROPS
    if not final_norm:
        drops = drops + [DropRule(r"norm\.", "the classifier's final norm (per-stage norms used)")]
    result = rename_state_dict(state_dict, rules, drops)
    if window_size is not None:
        for key, tensor in result.state_dict.items():
            if key.endswith("relative_position_bias_table"):
                result.state_dict[key] = interpolate_relative_position_bias(tensor, window_size)
    return result


ROBERTA_RULES = [
    RenameRule(r"(?:roberta\.)?encoder\.layer\.(\d+)\.", r"layers.\1."),
    RenameRule(r"(?:roberta\.)?embeddings\.", "embeddings."),
]
ROBERTA_DROPS = TRUNK_BUFFER_DROPS + [
    DropRule(r"(roberta\.)?pooler\.", "the pooler is unused (FIBER builds RoBERTa without it)"),
    DropRule(r"lm_head\.", "the masked-LM head is not part of the trunk"),
]


def convert_roberta_state_dict(state_dict: dict[str, torch.Tensor]) -> ConversionResult:
    """A transformers RoBERTa state dict (RobertaModel or RobertaForMaskedLM) -> FusedRoberta."""
    return rename_state_dict(state_dict, ROBERTA_RULES, ROBERTA_DROPS)


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
    trunk_prefix: str = "trunk.",
    window_size: int | None = None,
) -> ConversionResult:
    """Rename an official coarse checkpoint (a Lightning `{"state_dict": ...}` or the bare dict)
    onto FiberPretrainModel. `first_fused_layer`: index of the first text layer with
    cross-attention (FIBER-B: 6). `window_size`: resample Swin relative position tables, as
    the original does when the image size changes (coarse_grained_spec.md a.1)."""
    state_dict = strip_prefix(state_dict.get("state_dict", state_dict), "module.")
    rules = trunk_rename_rules("vit_model.", "text_transformer.", trunk_prefix) + COARSE_HEAD_RULES
    drops = COARSE_DROPS + coarse_unused_gate_drops(first_fused_layer)
    result = rename_state_dict(state_dict, rules, drops)
    if window_size is not None:
        for key, tensor in result.state_dict.items():
            if key.endswith("relative_position_bias_table"):
                result.state_dict[key] = interpolate_relative_position_bias(tensor, window_size)
    return result


def is_coarse_checkpoint(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for a coarse-stage checkpoint (official or fiber_det's FiberPretrainModel)."""
    state_dict = state_dict.get("state_dict", state_dict.get("model", state_dict))
    return any(k.startswith(("vit_model.", "cross_modal_")) for k in state_dict)


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


COARSE_TO_DETECTOR_DROPS = [
    DropRule(r"queue\.", "fiber_det's ITC feature queue (coarse training state)"),
]


def convert_coarse_for_detector(
    state_dict: dict[str, torch.Tensor], first_fused_layer: int = 6
) -> ConversionResult:
    """A coarse checkpoint (official, or fiber_det's FiberPretrainModel) onto GroundingDetector:
    the trunk under `backbone.trunk.`; coarse-only tensors (heads, temp, the final Swin norm,
    the i2t query LayerNorm) keep a name the detector lacks, so loading reports them unused."""
    state_dict = strip_prefix(state_dict.get("state_dict", state_dict), "module.")
    if any(k.startswith("vit_model.") for k in state_dict):
        return convert_coarse(state_dict, first_fused_layer, trunk_prefix="backbone.trunk.")
    rules = [RenameRule(r"trunk\.", "backbone.trunk."), RenameRule(r"", "")]
    return rename_state_dict(state_dict, rules, COARSE_TO_DETECTOR_DROPS)
