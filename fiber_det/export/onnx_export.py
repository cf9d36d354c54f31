"""Export a grounding detector to ONNX: torch.export (non-strict), then the dynamo-based
ONNX exporter (torch.onnx.export(..., dynamo=True)).

The export directory holds model.onnx, export.json (what the runner needs besides the config),
config.yaml and the tokenizer files; fiber_det.export.onnx_runner.load_onnx_predictor runs it.
"""

import json
from pathlib import Path

import torch
from detectron2.config import CfgNode
from torch.export import Dim

from fiber_det.export.graph import OUTPUT_NAMES, FixedVocabularyGraph, GroundingGraph
from fiber_det.export.onnx_runner import CONFIG_NAME, EXPORT_INFO_NAME, ONNX_NAME
from fiber_det.modeling.text_padding import pad_texts
from fiber_det.predictor import GroundingPredictor
from fiber_det.pretrained import standalone_config

OPSET = 18
# Example sizes of the trace (distinct, so that torch.export gives each its own symbol); every
# dimension below is dynamic in the graph.
EXAMPLE_BATCH, EXAMPLE_PROMPTS, EXAMPLE_LENGTH = 2, 3, 8


def export_cfg(cfg: CfgNode) -> CfgNode:
    """`cfg` on the CPU with the attention computed by matmul + softmax (USE_SDPA off): the
    decomposition of SDPA gives strides that break timm's window-attention reshape."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.FIBER.USE_SDPA = False
    return cfg


def min_image_blocks(cfg: CfgNode) -> int:
    """The fewest `size_divisibility` blocks per image side of the graph: the last Swin stage
    (one cell per block) must hold at least two windows, or torch.export would specialise the
    graph to a one-window grid."""
    return cfg.MODEL.FIBER.SWIN.WINDOW_SIZE + 1


def dynamic_shapes(size_divisibility: int, min_blocks: int, fixed_vocabulary: bool) -> dict:
    """Dynamic batch, image height and width (multiples of `size_divisibility`, at least
    `min_blocks` of them), number of prompts and prompt length."""
    height = size_divisibility * Dim("height_blocks", min=min_blocks, max=256)
    width = size_divisibility * Dim("width_blocks", min=min_blocks, max=256)
    shapes = {"images": {0: Dim("batch", min=1, max=64), 2: height, 3: width}}
    if not fixed_vocabulary:
        text = {0: Dim("prompts", min=1, max=256), 1: Dim("length", min=2, max=512)}
        shapes.update(input_ids=text, attention_mask=text)
    return shapes


def export_onnx(
    predictor: GroundingPredictor,
    directory: str | Path,
    names: list[str] | None = None,
    opset: int = OPSET,
) -> Path:
    """Write `directory` (model.onnx, export.json, config.yaml, tokenizer) for `predictor`'s
    model (built with `export_cfg`). With `names`, the prompts of that vocabulary are baked in
    and the graph takes images only."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    detector = predictor.model.eval()
    divisor = detector.backbone.size_divisibility
    pad_id = detector.backbone.text_pad_token_id
    min_blocks = min_image_blocks(predictor.cfg)
    if predictor.cfg.INPUT.MIN_SIZE_TEST < min_blocks * divisor:
        raise ValueError(
            f"INPUT.MIN_SIZE_TEST {predictor.cfg.INPUT.MIN_SIZE_TEST} is below the smallest image "
            f"side this graph takes, {min_blocks * divisor} (MODEL.FIBER.SWIN.WINDOW_SIZE + 1 "
            f"blocks of {divisor}): export with INPUT.MIN_SIZE_TEST {min_blocks * divisor} or more"
        )
    images = torch.zeros(EXAMPLE_BATCH, 3, min_blocks * divisor, (min_blocks + 1) * divisor)
    info = {
        "size_divisibility": divisor,
        "min_image_size": min_blocks * divisor,
        "pad_token_id": pad_id,
        "opset": opset,
    }
    if names:
        text = pad_texts(predictor.prompts(names)[0], pad_id)
        graph = FixedVocabularyGraph(detector, text["input_ids"], text["attention_mask"])
        args = (images,)
        info.update(vocabulary=list(names), input_ids=text["input_ids"].tolist())
    else:
        graph = GroundingGraph(detector)
        ids = torch.full((EXAMPLE_PROMPTS, EXAMPLE_LENGTH), pad_id, dtype=torch.int64)
        args = (images, ids, torch.ones_like(ids))
    shapes = dynamic_shapes(divisor, min_blocks, fixed_vocabulary=bool(names))
    with torch.no_grad():
        exported = torch.export.export(graph, args, dynamic_shapes=shapes, strict=False)
        program = torch.onnx.export(
            exported,
            dynamo=True,
            opset_version=opset,
            input_names=list(shapes),
            output_names=list(OUTPUT_NAMES),
        )
    program.save(str(directory / ONNX_NAME))
    (directory / EXPORT_INFO_NAME).write_text(json.dumps(info, indent=1))
    predictor.tokenizer.save_pretrained(str(directory))
    (directory / CONFIG_NAME).write_text(standalone_config(predictor.cfg).dump())
    return directory
