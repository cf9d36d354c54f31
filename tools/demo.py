#!/usr/bin/env python
"""Ground a text prompt in images with a saved fiber_det model or any grounding config + weights.

    python tools/demo.py --model output/quickstart/model \
        --input img1.jpg img2.png some_folder/ --prompt "red square. blue circle." \
        --output demo_out/ [--score-thresh 0.3]
    python tools/demo.py --model desco-fiber-base --input photo.jpg --prompt "cat. remote." ...
    python tools/demo.py --config-file configs/quickstart/grounding_tiny.yaml \
        --weights output/quickstart/grounding/model_final.pth ... [KEY VALUE ...]

With `--dataset NAME=path/to.json:path/images` (a COCO-format json) the prompt is the json's
category names and, without --input, the images are that folder's: a model trained with
`tools/train_net.py --dataset ...` is looked at on the same data without writing its class list.

--model takes a saved-model directory (GroundingPredictor.save_pretrained), a Hugging Face Hub
repository holding one, an official FIBER-layout detector checkpoint (converted once and
cached), or the alias desco-fiber-base. Without --model, --config-file and weights (--weights or
MODEL.WEIGHTS) are needed; --random-weights runs a randomly initialised model instead (its
detections mean nothing). A prompt with periods is a class list ("cat. remote control.": one
label per class, GLIP's detection prompt); a prompt without periods is a sentence, grounded as a
whole or, with `--phrases "red square" "blue circle"`, phrase by phrase (each phrase must occur
in it). Writes one annotated PNG per image (detectron2's Visualizer) and `predictions.json`:
{"prompt", "labels", "score_thresh", "images": [{"file_name", "output", "height", "width",
"detections": [{"box": [x1, y1, x2, y2], "score", "label", "class_id"}]}], "skipped":
[{"file_name", "error"}]}, boxes in the original image's pixels. An image that cannot be read
or predicted is reported and skipped; the others are written, and the exit status is 1.
"""

import argparse
import json
import sys
from pathlib import Path

import cv2
import torch
from detectron2.utils.visualizer import Visualizer

from fiber_det.config import get_fiber_cfg
from fiber_det.data.datasets.user import (
    add_dataset_argument,
    check_names_tokenize,
    dataset_class_names,
)
from fiber_det.data.prompts import SEPARATOR
from fiber_det.predictor import GroundingPredictor, GroundingResult
from fiber_det.runtime import keep_freed_memory

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="saved-model dir, hub repo id or desco-fiber-base")
    source.add_argument("--config-file", help="a fiber_det grounding config (with --weights)")
    parser.add_argument("--weights", default="", help="checkpoint (default: cfg MODEL.WEIGHTS)")
    parser.add_argument("--filename", help="with --model REPO_ID: an official checkpoint in it")
    parser.add_argument("--tokenizer", help="with --model: tokenizer dir for official checkpoints")
    parser.add_argument(
        "--random-weights", action="store_true", help="no weights: a random model (for testing)"
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: the config's, else cpu)")
    parser.add_argument("--input", nargs="+", help="image files and/or folders")
    parser.add_argument("--prompt", help='"cat. remote control." or a sentence')
    add_dataset_argument(parser)
    parser.add_argument("--phrases", nargs="*", default=None, help="phrases of a sentence prompt")
    parser.add_argument("--output", required=True, help="folder for the PNGs and the JSON")
    parser.add_argument("--score-thresh", type=float, default=0.3, help="keep scores >= this")
    parser.add_argument(
        "--vocabulary-cache",
        metavar="FILE",
        help="fast mode for a class list (fusion off): its text features are read from FILE, "
        "or computed once and saved there",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if len(args.dataset) > 1 or (args.dataset and args.prompt):
        parser.error("give one --dataset or a --prompt, not both")
    if not args.dataset and not (args.prompt and args.input):
        parser.error("--input and --prompt are required without --dataset")
    return args


def prediction_request(predictor: GroundingPredictor, args, names, caption, spans) -> dict:
    """The predictor's keyword arguments: the prompt, or with --vocabulary-cache the cached
    fast-mode vocabulary of the class names."""
    if not args.vocabulary_cache:
        return {"names": names, "caption": caption, "phrase_spans": spans}
    if names is None:
        raise ValueError("--vocabulary-cache needs class names ('a. b.'), not a sentence")
    return {"vocabulary": predictor.vocabulary(names, cache=args.vocabulary_cache)}


def list_images(inputs: list[str]) -> list[Path]:
    """The image files named or found (non-recursively, sorted) in the named folders."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"--input folder {path} holds no {IMAGE_SUFFIXES} image")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"--input {path}: no such file or folder")
    return paths


def parse_prompt(
    prompt: str, phrases: list[str] | None = None
) -> tuple[list[str] | None, str | None, list[list[tuple[int, int]]] | None]:
    """(class names, None, None) for "a. b." prompts, else (None, sentence, phrase spans)."""
    text = prompt.strip()
    if not text:
        raise ValueError("--prompt is empty")
    if "." in text and not phrases:
        names = [name.strip() for name in text.split(".") if name.strip()]
        if not names:
            raise ValueError(f"--prompt {prompt!r} names no class")
        return names, None, None
    if not phrases:
        return None, text, None
    spans = []
    for phrase in phrases:
        start = text.find(phrase)
        if start < 0:
            raise ValueError(f"--phrases {phrase!r} does not occur in --prompt {text!r}")
        spans.append([(start, start + len(phrase))])
    return None, text, spans


def build_predictor(args: argparse.Namespace) -> GroundingPredictor:
    """A GroundingPredictor from --model, or from --config-file (+ overrides) and weights; CPU
    when CUDA is absent."""
    if args.model:
        if args.opts or args.weights:
            raise ValueError("--model carries its config and weights: drop --weights / KEY VALUE")
        return GroundingPredictor.from_pretrained(
            args.model, args.filename, tokenizer=args.tokenizer, device=args.device
        )
    cfg = get_fiber_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.weights:
        if not Path(args.weights).is_file():
            raise FileNotFoundError(f"--weights {args.weights}: no such file")
        cfg.MODEL.WEIGHTS = args.weights
    if not cfg.MODEL.WEIGHTS and not args.random_weights:
        raise ValueError(
            "no weights: give --weights (or MODEL.WEIGHTS), use --model, or pass "
            "--random-weights to run a randomly initialised model"
        )
    if args.device:
        cfg.MODEL.DEVICE = args.device
    elif cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return GroundingPredictor(cfg, allow_random_weights=args.random_weights)


def detections(result: GroundingResult, score_thresh: float) -> list[dict]:
    """The JSON detections of one image with score >= score_thresh, best first."""
    instances = result.instances
    keep = (instances.scores >= score_thresh).nonzero().flatten().tolist()
    keep.sort(key=lambda i: -float(instances.scores[i]))
    return [
        {
            "box": [round(float(v), 2) for v in instances.pred_boxes.tensor[i].tolist()],
            "score": round(float(instances.scores[i]), 4),
            "label": result.labels[i],
            "class_id": int(instances.pred_classes[i]),
        }
        for i in keep
    ]


def draw(image_bgr, found: list[dict]):
    """An RGB uint8 picture of the image with each box and "label score" drawn on it."""
    visualizer = Visualizer(image_bgr[:, :, ::-1])
    if not found:
        return visualizer.output.get_image()
    boxes = [d["box"] for d in found]
    labels = [f"{d['label']} {d['score']:.2f}" for d in found]
    return visualizer.overlay_instances(boxes=boxes, labels=labels).get_image()


def run(args: argparse.Namespace) -> dict:
    """Predict, draw and write every image; an image that cannot be read or predicted is
    reported, listed under "skipped" and passed over. Returns the JSON document written."""
    if args.dataset:
        spec = args.dataset[0]
        names, caption, spans = dataset_class_names(spec.json_file), None, None
        images = list_images(args.input or [spec.image_root])
    else:
        names, caption, spans = parse_prompt(args.prompt, args.phrases)
        images = list_images(args.input)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--output {out_dir} is a file, not a folder")
    predictor = build_predictor(args)
    if args.dataset:
        check_names_tokenize(names, predictor.tokenizer, args.dataset[0].json_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "prompt": args.prompt or SEPARATOR.join(names),
        "score_thresh": args.score_thresh,
        "images": [],
    }
    document["labels"] = predictor.prompts(names, caption, spans)[1]
    document["skipped"] = []
    request = prediction_request(predictor, args, names, caption, spans)
    for index, path in enumerate(images):
        try:
            output = out_dir / f"{index:03d}_{path.stem}.png"
            entry = predict_one(predictor, path, output, request, args.score_thresh)
        except (ValueError, RuntimeError, cv2.error) as error:
            print(f"[demo] skipped {path}: {error}", file=sys.stderr)
            document["skipped"].append({"file_name": str(path), "error": str(error)})
            continue
        document["images"].append(entry)
        print(f"[demo] {path}: {len(entry['detections'])} detections -> {entry['output']}")
    (out_dir / "predictions.json").write_text(json.dumps(document, indent=1) + "\n")
    return document


def predict_one(
    predictor: GroundingPredictor, path: Path, output: Path, request: dict, score_thresh: float
) -> dict:
    """Read, predict (`request`: the predictor's keyword arguments) and draw one image; its
    entry of predictions.json."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    found = detections(predictor(image, **request), score_thresh)
    cv2.imwrite(str(output), draw(image, found)[:, :, ::-1])
    height, width = image.shape[:2]
    return {"file_name": str(path), "output": output.name, "height": height, "width": width} | {
        "detections": found
    }


def main(argv: list[str] | None = None) -> dict:
    keep_freed_memory()
    args = parse_args(argv)
    try:
        document = run(args)
    except (FileNotFoundError, NotADirectoryError, TypeError, ValueError) as exc:
        sys.exit(f"demo: {exc}")
    if document["skipped"]:
        skipped = ", ".join(entry["file_name"] for entry in document["skipped"])
        sys.exit(f"demo: {len(document['skipped'])} image(s) skipped (see above): {skipped}")
    return document


if __name__ == "__main__":
    main()
