"""A tiny GroundingDetector config and synthetic scenes shared by the detector tests."""

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.structures import Boxes, Instances

from fiber_det.config import get_fiber_cfg
from tests.conftest import REPO_ROOT

COLORS_BGR = {
    "red": (0, 0, 255),
    "green": (0, 200, 0),
    "blue": (255, 0, 0),
    "yellow": (0, 230, 230),
}


def tiny_grounding_cfg(vocab_size: int) -> CfgNode:
    """FIBER wiring at toy widths: 5 Swin blocks (last 2 fused), 3 text layers, 1 DyHead block."""
    cfg = get_fiber_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "Base-FIBER-Grounding.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    swin = cfg.MODEL.FIBER.SWIN
    swin.EMBED_DIM, swin.DEPTHS, swin.NUM_HEADS = 16, [1, 1, 2, 1], [1, 2, 2, 4]
    swin.WINDOW_SIZE, swin.DROP_PATH_RATE = 4, 0.0
    text = cfg.MODEL.FIBER.TEXT
    text.VOCAB_SIZE, text.HIDDEN_SIZE, text.NUM_LAYERS, text.NUM_HEADS = vocab_size, 32, 3, 2
    text.INTERMEDIATE_SIZE, text.MAX_POSITION_EMBEDDINGS, text.DROPOUT = 64, 260, 0.0
    cfg.MODEL.FIBER.FUSION.NUM_LAYERS = 2
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.DYHEAD.NUM_BLOCKS = 1
    cfg.MODEL.DYHEAD.GN_GROUPS = 8
    cfg.MODEL.GROUNDING.ANCHOR_SIZES = [24, 48, 96, 192, 384]
    cfg.INPUT.TEXT.MAX_QUERY_LEN = 256
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 256
    return cfg


def draw_scene(height: int, width: int, objects: list[tuple[str, tuple[int, int, int, int]]]):
    """A grey BGR uint8 image with filled rectangles: objects = [(colour, (x1, y1, x2, y2))]."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    for color, (x1, y1, x2, y2) in objects:
        image[y1:y2, x1:x2] = COLORS_BGR[color]
    return image


def training_input(image: np.ndarray, objects, prompt: dict, names: list[str]) -> dict:
    """A mapped training dict of the data contract for `draw_scene` objects."""
    boxes = torch.tensor([box for _, box in objects], dtype=torch.float32).reshape(-1, 4)
    classes = torch.tensor([names.index(color) for color, _ in objects], dtype=torch.long)
    label_rows = {int(label): row for row, label in enumerate(prompt["labels"])}
    instances = Instances(image.shape[:2])
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = classes
    rows = [label_rows[int(c)] for c in classes]
    instances.gt_positive_map = prompt["positive_map"][torch.tensor(rows, dtype=torch.long)]
    return {
        "image": torch.as_tensor(image.transpose(2, 0, 1).copy()),
        "height": image.shape[0],
        "width": image.shape[1],
        "prompts": [prompt],
        "instances": instances,
    }


NAMES = ["red", "green", "blue", "yellow"]
SCENES = [
    [("red", (10, 12, 50, 60)), ("blue", (70, 70, 120, 110))],
    [("green", (20, 60, 70, 120)), ("yellow", (80, 10, 115, 50)), ("red", (60, 60, 90, 90))],
]
TRAIN_ITERATIONS = 150


def build_tiny_detector(tokenizer):
    """A freshly initialised tiny detector (seeded) and its config."""
    from detectron2.modeling import build_model

    cfg = tiny_grounding_cfg(len(tokenizer))
    torch.manual_seed(0)
    return build_model(cfg), cfg


_TRAINED: dict = {}


def trained_tiny_detector(tokenizer):
    """The tiny detector overfit on the two SCENES (128x128), cached per test session.

    Returns (model in eval mode, cfg, per-iteration token + GIoU loss). One thread: the tiny
    convolutions run several times faster than with threads competing on a shared machine.
    """
    key = id(tokenizer)
    if key not in _TRAINED:
        from fiber_det.data.prompts import build_detection_prompts

        model, cfg = build_tiny_detector(tokenizer)
        prompt = build_detection_prompts(NAMES, tokenizer)[0]
        inputs = [training_input(draw_scene(128, 128, s), s, prompt, NAMES) for s in SCENES]
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        history = []
        try:
            model.train()
            for _ in range(TRAIN_ITERATIONS):
                losses = model(inputs)
                optimizer.zero_grad()
                sum(losses.values()).backward()
                optimizer.step()
                history.append((losses["loss_dot_product_token"] + losses["loss_reg"]).item())
        finally:
            torch.set_num_threads(threads)
        _TRAINED[key] = (model.eval(), cfg, history)
    return _TRAINED[key]
