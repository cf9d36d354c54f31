"""Run an exported grounding graph in onnxruntime behind `GroundingPredictor`.

`OnnxGroundingModel` keeps the detector's inference contract (`list[dict]` with `image` and
`prompts` in, `[{"instances": Instances}]` out), so `GroundingPredictor` does tokenization,
prompt chunking and resizing exactly as for the PyTorch model, and the detections are decoded
by the detector's own functions (normalize_and_pad, pad_texts, decode_row, merge_chunks).
"""

import json
from pathlib import Path

import torch
from detectron2.config import CfgNode

from fiber_det.config import get_fiber_cfg
from fiber_det.data.tokenizer import build_tokenizer
from fiber_det.modeling.grounding.decoding import FlatOutputs, decode_row, merge_chunks
from fiber_det.modeling.grounding.detector import (
    build_postprocessor,
    normalize_and_pad,
    run_by_padded_size,
)
from fiber_det.modeling.text_padding import pad_texts
from fiber_det.predictor import GroundingPredictor

ONNX_NAME = "model.onnx"
EXPORT_INFO_NAME = "export.json"
CONFIG_NAME = "config.yaml"


class OnnxGroundingModel:
    """An exported graph with the detector's inference contract. `info` is export.json:
    size_divisibility, min_image_size, pad_token_id, and for a fixed-vocabulary graph its baked
    `input_ids`."""

    def __init__(self, session, cfg: CfgNode, info: dict):
        self.session = session
        self.info = info
        self.postprocessor = build_postprocessor(cfg)
        self.pixel_mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
        self.pixel_std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)

    def eval(self) -> "OnnxGroundingModel":
        return self

    def __call__(self, batched_inputs: list[dict]) -> list[dict]:
        """[{"instances": Instances}] per input; inputs are grouped by padded size like the
        detector's inference, and must share one list of prompts (as the predictor gives)."""
        return run_by_padded_size(batched_inputs, self.info["size_divisibility"], self._run)

    def _run(self, batched_inputs: list[dict]) -> list[dict]:
        prompts = batched_inputs[0]["prompts"]
        if any(x["prompts"] is not prompts for x in batched_inputs):
            raise ValueError("OnnxGroundingModel runs one list of prompts for all images")
        images = normalize_and_pad(
            [x["image"] for x in batched_inputs],
            self.pixel_mean,
            self.pixel_std,
            self.info["size_divisibility"],
        )
        smallest = self.info["min_image_size"]
        if min(images.tensor.shape[-2:]) < smallest:
            raise ValueError(
                f"this graph takes images of at least {smallest}x{smallest} pixels after "
                f"resizing and padding; got {tuple(images.tensor.shape[-2:])}: raise "
                "INPUT.MIN_SIZE_TEST or export again with a smaller MODEL.FIBER.SWIN.WINDOW_SIZE"
            )
        feeds = {"images": images.tensor.numpy()}
        text = pad_texts(prompts, self.info["pad_token_id"])
        baked = self.info.get("input_ids")
        if baked is None:
            feeds.update({k: v.numpy() for k, v in text.items()})
        elif text["input_ids"].tolist() != baked:
            raise ValueError(
                f"this graph was exported for the vocabulary {self.info['vocabulary']}: call "
                "the predictor with exactly those names (or export without --names)"
            )
        outputs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        rows = outputs[0].shape[1]
        flat = FlatOutputs(*(o.flatten(0, 1) for o in outputs[:3]), *outputs[3:])
        results = []
        for index, x in enumerate(batched_inputs):
            size = images.image_sizes[index]
            chunks = [
                decode_row(self.postprocessor, flat, index * rows + k, p, size)
                for k, p in enumerate(prompts)
            ]
            height, width = x.get("height", size[0]), x.get("width", size[1])
            results.append({"instances": merge_chunks(chunks, height, width)})
        return results


def load_onnx_predictor(
    directory: str | Path, batch_size: int = 8, threads: int = 0
) -> GroundingPredictor:
    """A GroundingPredictor running `directory`/model.onnx (written by tools/export.py) in
    onnxruntime on the CPU; `threads` 0 lets onnxruntime choose."""
    import onnxruntime

    directory = Path(directory)
    cfg = get_fiber_cfg()
    cfg.merge_from_file(str(directory / CONFIG_NAME))
    info = json.loads((directory / EXPORT_INFO_NAME).read_text())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        str(directory / ONNX_NAME), options, providers=["CPUExecutionProvider"]
    )
    model = OnnxGroundingModel(session, cfg, info)
    return GroundingPredictor(cfg, build_tokenizer(str(directory)), batch_size, model=model)
