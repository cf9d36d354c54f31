"""`benchmark.py export`: export a (random-weight) detector to ONNX, then onnxruntime vs PyTorch
on the CPU: the largest output difference, whether the detections agree, latency per image."""

import json
import tempfile
import time

import numpy as np
import torch
from benchmark_common import subcommand, time_calls
from benchmark_fine import detector_config
from detectron2.modeling import build_model

from fiber_det.data.tokenizer import train_byte_level_bpe
from fiber_det.export import export_onnx, load_onnx_predictor
from fiber_det.export.graph import GroundingGraph
from fiber_det.export.onnx_export import export_cfg
from fiber_det.modeling.text_padding import pad_texts
from fiber_det.predictor import GroundingPredictor

WORDS = ["red", "small", "wooden", "striped", "metal", "round", "tall", "old", "blue", "big"]
NAMES = [f"{WORDS[i % 10]} object{i}" for i in range(20)]


def output_difference(predictor: GroundingPredictor, session, image, names) -> float:
    """Largest |onnxruntime - PyTorch| over the graph's float outputs for one image."""
    prompts = predictor.prompts(names)[0]
    text = pad_texts(prompts, predictor.model.backbone.text_pad_token_id)
    images = predictor.model.preprocess_image([predictor._input(image, prompts)]).tensor
    with torch.no_grad():
        expected = GroundingGraph(predictor.model)(images, *text.values())
    got = session.run(None, {"images": images.numpy(), **{k: v.numpy() for k, v in text.items()}})
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got[:4], expected[:4]))


def same_detections(got, want) -> bool:
    """Same labels in the same order, scores within 1e-4 and boxes within 1e-3 pixels."""
    if got.labels != want.labels:
        return False
    scores = got.instances.scores - want.instances.scores
    boxes = got.instances.pred_boxes.tensor - want.instances.pred_boxes.tensor
    return bool((scores.abs() <= 1e-4).all() and (boxes.abs() <= 1e-3).all())


@subcommand(
    "export",
    "ONNX export (torch.export + dynamo exporter) and onnxruntime vs PyTorch on the CPU",
    [
        (["--model"], {"default": "tiny", "help": "tiny or fiber-b (random weights)"}),
        (["--sizes"], {"nargs": "+", "default": ["480x640", "640x480"]}),
        (["--iters"], {"type": int, "default": 3}),
    ],
)
def benchmark_export(args) -> None:
    """One JSON line for the export, then one per (image size, prompt): max |diff| of the
    outputs, detections equal or not, median latency per image of each runtime."""
    torch.manual_seed(0)
    cfg = export_cfg(detector_config(args.model))
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 480, 800
    cfg.MODEL.GROUNDING.SCORE_THRESH_TEST = 0.0  # random weights score low: keep the top 100
    with tempfile.TemporaryDirectory() as work:
        tokenizer = train_byte_level_bpe(NAMES, f"{work}/tokenizer", vocab_size=400)
        predictor = GroundingPredictor(cfg, tokenizer, model=build_model(cfg).eval())
        start = time.perf_counter()
        export_onnx(predictor, f"{work}/onnx")
        print(json.dumps({"model": args.model, "export_s": round(time.perf_counter() - start)}))
        threads = torch.get_num_threads()
        runner = load_onnx_predictor(f"{work}/onnx", threads=threads)
        generator = np.random.default_rng(0)
        for size in args.sizes:
            height, width = (int(v) for v in size.split("x"))
            image = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for names in (NAMES[:1], NAMES):
                result = compare(predictor, runner, image, names, args.iters)
                print(json.dumps({"size": size, **result, "threads": threads}), flush=True)


def compare(predictor: GroundingPredictor, runner: GroundingPredictor, image, names, iters):
    """The comparison of one (image, class list) case; latencies are medians per image."""
    with torch.no_grad():
        want = predictor(image, names=names)
    got = runner(image, names=names)
    torch_ms = time_calls(lambda: predictor(image, names=names), iters, 1, "cpu")
    onnx_ms = time_calls(lambda: runner(image, names=names), iters, 1, "cpu")
    return {
        "classes": len(names),
        "max_abs_diff": output_difference(predictor, runner.model.session, image, names),
        "detections": len(want.labels),
        "same_detections": same_detections(got, want),
        "pytorch_ms": round(sorted(torch_ms)[len(torch_ms) // 2]),
        "onnxruntime_ms": round(sorted(onnx_ms)[len(onnx_ms) // 2]),
    }
