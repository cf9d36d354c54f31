#!/usr/bin/env python
"""Score a predictions json against a registered dataset with that dataset's protocol.

    python tools/evaluate.py --predictions coco_instances_results.json --against trees_val \
        --dataset trees_val=val.json:images [--output DIR] [--config-file CFG] [KEY VALUE ...]

--against names a builtin dataset (lvis_v1_minival, flickr30k_entities_val, refcocog_umd_val,
odinw_*, ...) or one registered here with --dataset (a COCO-format detection json or an
MDETR-format grounding json). The predictions are a COCO results list in the original image's
pixels: `category_id` for detection sets, `phrase_id` (0-based phrase index) for Flickr30k
Entities, none for referring expressions (fiber_det/evaluation/predictions.py). The metrics are
printed as json and, with --output, written there by the evaluator. The config (default: the
fiber_det defaults) only matters for LVIS: TEST.DETECTIONS_PER_IMAGE and TEST.FIXED_AP_TOPK.
"""

import argparse
import json
import sys

import fiber_det  # noqa: F401  (registers the builtin datasets)
from fiber_det.config import get_fiber_cfg
from fiber_det.data.datasets.catalog import check_dataset_name
from fiber_det.data.datasets.user import add_dataset_argument, register_dataset_specs
from fiber_det.evaluation.predictions import read_predictions, score_predictions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", required=True, help="COCO results list (json)")
    parser.add_argument("--against", help="dataset name (default: the one --dataset given)")
    add_dataset_argument(parser)
    parser.add_argument("--output", default=None, help="folder for the evaluator's files")
    parser.add_argument("--config-file", default="", help="a fiber_det config (LVIS settings)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if not args.against:
        if len(args.dataset) != 1:
            parser.error("--against NAME is needed unless exactly one --dataset is given")
        args.against = args.dataset[0].name
    return args


def run(args: argparse.Namespace) -> dict:
    """Register the --dataset values, score the predictions; returns the evaluator's dict."""
    cfg = get_fiber_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_dataset_specs(args.dataset)
    check_dataset_name(args.against)
    results = score_predictions(cfg, read_predictions(args.predictions), args.against, args.output)
    print(json.dumps(results, indent=1))
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        sys.exit(f"evaluate: {exc}")


if __name__ == "__main__":
    main()
