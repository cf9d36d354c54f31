"""Convert a released FIBER checkpoint (fine-grained maskrcnn_benchmark or coarse Lightning format,
DesCo-FIBER included) into a file that detectron2's DetectionCheckpointer loads into fiber_det,
or a coarse-stage checkpoint's trunk into the grounding detector's initial weights.

    python tools/convert_checkpoint.py fiber_coco.pth fiber_b_coco.pth --format fine
    python tools/convert_checkpoint.py fiber_pretrain.ckpt fiber_b_coarse.pth --format coarse
    python tools/convert_checkpoint.py coarse.pth detector_init.pth --format coarse-trunk \
        --config configs/fine_grained/fiber_b.yaml
    python tools/convert_checkpoint.py fiber_coco.pth out.pth --verify dog.jpg \
        --prompt "dog. ball" --tokenizer ~/roberta-base --opts MODEL.DEVICE cpu

Every key is renamed by fiber_det.checkpoint's tables or dropped with a printed reason. The result
is checked against the model that --config builds (on the meta device, no memory spent): any
unconverted, missing or unexpected key or shape mismatch is printed and fails the run, and
nothing is written. Trunk-only files (`fusion_backbone.*` alone) are checked against the
detector's backbone only. `coarse-trunk` takes an official coarse file or fiber_det's own
coarse-stage checkpoint; the detector's FPN, head and per-stage norms stay at initialisation.
--verify loads the written file and prints the top detections.
"""

import argparse
import sys
from pathlib import Path

import torch

from fiber_det.checkpoint import (
    OFFICIAL_EMA_KEY,
    OFFICIAL_FORMATS,
    ConversionResult,
    LoadCheck,
    detect_official_format,
    load_official_state_dict,
    save_converted_checkpoint,
)
from fiber_det.config import get_fiber_cfg
from fiber_det.conversion import convert_and_check, is_trunk_only

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = {
    "fine": REPO_ROOT / "configs" / "fine_grained" / "fiber_b.yaml",
    "coarse": REPO_ROOT / "configs" / "coarse_grained" / "pretrain_mlm_itm_itc.yaml",
    "coarse-trunk": REPO_ROOT / "configs" / "fine_grained" / "fiber_b.yaml",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="official checkpoint (.pth / .ckpt / .pt)")
    parser.add_argument("output", help="where to write the converted checkpoint")
    parser.add_argument("--format", choices=(*OFFICIAL_FORMATS, "auto"), default="auto")
    parser.add_argument("--config", help="config of the target model (default: per format)")
    parser.add_argument(
        "--ema", action="store_true", help=f"convert the EMA weights ('{OFFICIAL_EMA_KEY}')"
    )
    parser.add_argument(
        "--allow-pickle", action="store_true", help="unpickle non-tensor objects (trusted files)"
    )
    parser.add_argument(
        "--allow-missing",
        metavar="REGEX",
        action="append",
        default=[],
        help="model keys the checkpoint may lack (kept at init), e.g. 'itm_score\\.' for an "
        "ITC-only retrieval fine-tune; repeatable",
    )
    parser.add_argument("--verify", metavar="IMAGE", help="run the converted detector on IMAGE")
    parser.add_argument("--prompt", help="with --verify: class names separated by '.'")
    parser.add_argument("--tokenizer", help="with --verify: tokenizer dir (default: the config's)")
    parser.add_argument("--top-k", type=int, default=10, help="with --verify: detections shown")
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="last: config overrides KEY VALUE ..."
    )
    return parser


def load_config(args: argparse.Namespace, kind: str):
    cfg = get_fiber_cfg()
    cfg.merge_from_file(str(args.config or DEFAULT_CONFIGS[kind]))
    cfg.merge_from_list(args.opts)
    return cfg


def print_report(result: ConversionResult, check: LoadCheck) -> None:
    reasons: dict[str, int] = {}
    for reason in result.dropped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    print(f"converted {len(result.state_dict)} tensors; dropped {len(result.dropped)}:")
    for reason, count in reasons.items():
        print(f"  {count:4d} x {reason}")
    for title, keys in (
        ("unconverted", result.unconverted),
        ("missing", check.missing),
        ("unexpected", check.unexpected),
        ("wrong shape", [f"{k} {list(a)} vs model {list(b)}" for k, a, b in check.wrong_shapes]),
    ):
        print(f"{title} keys: {len(keys)}")
        for key in keys:
            print(f"  {key}")


def verify(cfg, weights: str, image_path: str, prompt: str, tokenizer: str | None, top_k: int):
    """Run the converted detector on one image through GroundingPredictor; print detections."""
    import cv2

    from fiber_det.data.tokenizer import build_tokenizer
    from fiber_det.predictor import GroundingPredictor

    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    image = cv2.imread(image_path)
    if image is None:
        raise FileNotFoundError(f"--verify: cannot read image {image_path}")
    names = [name.strip() for name in prompt.split(".") if name.strip()]
    if not names:
        raise ValueError(f"--prompt '{prompt}' names no class (separate names with '.')")
    predictor = GroundingPredictor(cfg, build_tokenizer(tokenizer or cfg.INPUT.TEXT.TOKENIZER))
    result = predictor(image, names=names)
    order = result.instances.scores.argsort(descending=True)[:top_k].tolist()
    print(f"top {len(order)} of {len(result.instances)} detections in {image_path}:")
    for index in order:
        box = [round(v, 1) for v in result.instances.pred_boxes.tensor[index].tolist()]
        score = float(result.instances.scores[index])
        print(f"  {result.labels[index]:<24s} {score:.3f}  {box}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verify and not args.prompt:
        raise SystemExit("--verify needs --prompt")
    state_dict = load_official_state_dict(args.input, args.ema, args.allow_pickle)
    kind = detect_official_format(state_dict) if args.format == "auto" else args.format
    if args.verify and kind != "fine":
        raise SystemExit("--verify runs the grounding detector: fine-grained checkpoints only")
    cfg = load_config(args, kind)
    result, check, errors = convert_and_check(state_dict, kind, cfg, args.allow_missing)
    scope = ", trunk only: checked against the backbone" if is_trunk_only(state_dict, kind) else ""
    print(f"{args.input}: format '{kind}', {len(state_dict)} tensors{scope}")
    print_report(result, check)
    if errors:
        print(f"{args.input}: conversion failed, nothing written:", file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        return 1
    save_converted_checkpoint(result.state_dict, args.output, source=str(args.input), format=kind)
    print(f"wrote {args.output}")
    if args.verify:
        verify(cfg, args.output, args.verify, args.prompt, args.tokenizer, args.top_k)
    return 0


if __name__ == "__main__":
    sys.exit(main())
