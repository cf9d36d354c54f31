#!/usr/bin/env python
"""Export a grounding detector to ONNX, with the prompt as an input or a fixed vocabulary.

    python tools/export.py --model output/quickstart/model --output output/onnx
    python tools/export.py --config-file CFG --weights model.pth --output DIR [KEY VALUE ...]
    python tools/export.py --model DIR --output DIR --names person bicycle car
    python tools/export.py --model DIR --names person car --output DIR INPUT.MIN_SIZE_TEST 640

The graph takes images (B, 3, H, W) normalised and padded to a multiple of 32, and, without
--names, input_ids / attention_mask (P, L); it returns the raw head outputs (see
fiber_det/export/graph.py). Run the export with fiber_det.export.load_onnx_predictor(DIR).
"""

import argparse
import logging
import time
from pathlib import Path

from fiber_det.config import get_fiber_cfg
from fiber_det.export.onnx_export import OPSET, export_cfg, export_onnx
from fiber_det.hub import resolve_model_directory
from fiber_det.predictor import GroundingPredictor
from fiber_det.pretrained import load_pretrained_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="saved-model dir, hub repo id or desco-fiber-base")
    source.add_argument("--config-file", help="a fiber_det config (with --weights)")
    parser.add_argument("--weights", default="", help="checkpoint for --config-file")
    parser.add_argument("--output", required=True, help="export directory")
    parser.add_argument("--names", nargs="+", help="fixed vocabulary: bake these class names in")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.config_file and not args.weights:
        parser.error("--config-file needs --weights")
    if any(option in args.opts for option in ("--names", "--output", "--opset")):
        parser.error(
            "options after KEY VALUE overrides are read as overrides: put the overrides last, "
            "after another option (--names a b --output DIR KEY VALUE)"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.model:  # the names tools/demo.py takes: a directory, a hub repo, desco-fiber-base
        cfg = load_pretrained_config(resolve_model_directory(args.model), "cpu")
    else:
        if not Path(args.weights).is_file():
            raise FileNotFoundError(f"--weights {args.weights}: no such file")
        cfg = get_fiber_cfg()
        cfg.merge_from_file(args.config_file)
        cfg.MODEL.WEIGHTS = args.weights
    cfg = export_cfg(cfg)
    cfg.merge_from_list(args.opts)
    print(f"exporting to {args.output} (minutes for FIBER-B: torch.export, then ONNX)")
    start = time.perf_counter()
    export_onnx(GroundingPredictor(cfg), args.output, args.names, args.opset)
    print(f"exported to {args.output} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
