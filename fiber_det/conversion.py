"""Official FIBER / DesCo-FIBER checkpoints renamed by fiber_det.checkpoint's tables and checked
against the model a config builds (on the meta device: no memory spent). Used by
tools/convert_checkpoint.py, the quickstart's coarse-to-detector hand-off and from_pretrained's
one-line DesCo-FIBER path."""

import torch
from detectron2.modeling import build_model

from fiber_det.checkpoint import (
    ConversionResult,
    LoadCheck,
    check_against_model,
    conversion_errors,
    convert_official,
    official_source_names,
)

# model state the checkpoint does not carry: the coarse model's ITC feature queue starts empty
# (the original pops its queue buffers on load too); a coarse trunk has no FPN, head or
# per-stage norms
MAY_LACK = {
    "fine": [],
    "coarse": [r"queue\."],
    "coarse-trunk": [
        r"backbone\.fpn\.",
        r"head\.",
        r"backbone\.trunk\.image_backbone\.stage_norms\.",
    ],
}


def model_shapes(cfg) -> dict[str, tuple]:
    """{state_dict key: shape} of the model `cfg` builds, built on the meta device."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def is_trunk_only(state_dict: dict[str, torch.Tensor], kind: str) -> bool:
    """A fine-grained file without the head (`fusion_backbone.*` alone)."""
    return kind == "fine" and not any(k.startswith("rpn.") for k in state_dict)


def convert_and_check(
    state_dict: dict[str, torch.Tensor], kind: str, cfg, allow_missing: list[str] = ()
) -> tuple[ConversionResult, LoadCheck, list[str]]:
    """Rename `state_dict` (official format `kind`) and compare it with cfg's model; the last
    item lists one error line per offending key (empty when the result loads strictly).
    Model keys matching a regex of `allow_missing` may be absent from the checkpoint."""
    fiber = cfg.MODEL.FIBER
    layout = {
        "first_fused_layer": fiber.TEXT.NUM_LAYERS - fiber.FUSION.NUM_LAYERS,
        "query_norm": fiber.FUSION.QUERY_NORM,
    }
    window_size = fiber.SWIN.WINDOW_SIZE if kind == "coarse" else None
    result = convert_official(state_dict, kind, window_size, **layout)
    shapes = model_shapes(cfg)
    if is_trunk_only(state_dict, kind):
        shapes = {k: v for k, v in shapes.items() if k.startswith("backbone.")}
    check = check_against_model(result.state_dict, shapes, MAY_LACK[kind] + list(allow_missing))
    sources = official_source_names(list(state_dict), kind, **layout)
    return result, check, conversion_errors(result, check, sources)
