"""The pictures of `make demo` (tools/run_demo.py): loss curves, a grid of test images with
each object's best phrase, and zero-shot grounding of held-out colour-shape pairs on freshly
drawn scenes with a free-form caption."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from fiber_det.quickstart import SyntheticConfig, build_world
from fiber_det.quickstart.render import render_scene

TOOLS = Path(__file__).resolve().parent


def load_tool(name: str):
    """Import tools/NAME.py (the tools folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plot_losses(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """One panel per stage: raw total loss and its 20-iteration moving average, log y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: points for name, points in curves.items() if points}
    figure, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for axis, (name, points) in zip(axes[0], curves.items(), strict=True):
        iters, losses = zip(*points, strict=True)
        window = torch.ones(min(20, len(losses))) / min(20, len(losses))
        smooth = torch.nn.functional.conv1d(
            torch.tensor(losses)[None, None], window[None, None]
        ).flatten()
        axis.plot(iters, losses, alpha=0.35, label="total loss")
        axis.plot(iters[len(iters) - len(smooth) :], smooth.tolist(), label="moving average")
        axis.set(title=f"{name} stage", xlabel="iteration", ylabel="loss (log scale)")
        axis.set_yscale("log")  # the first steps' losses are far above the rest
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def best_label_per_object(found: list[dict], iou: float = 0.5) -> list[dict]:
    """Detections (best first) minus those overlapping a better one by IoU > `iou` whatever
    their class: one box and its top label per object, for pictures."""
    from torchvision.ops import nms

    if not found:
        return found
    boxes = torch.tensor([d["box"] for d in found], dtype=torch.float32)
    scores = torch.tensor([d["score"] for d in found], dtype=torch.float32)
    return [found[i] for i in nms(boxes, scores, iou).tolist()]


def draw_grid(predictor, prefix: str, path: Path, per_row: int = 4, tile: int = 320) -> None:
    """Test images (seen-class prompt, top row) and held-out images (held-out prompt, bottom
    row) with the predicted boxes (score >= 0.3), each object with its top-scoring phrase,
    tiled into one PNG."""
    demo = load_tool("demo")
    rows = []
    for split in ("test", "heldout"):
        names = MetadataCatalog.get(f"{prefix}_{split}").thing_classes
        tiles = []
        for record in DatasetCatalog.get(f"{prefix}_{split}")[:per_row]:
            image = cv2.imread(record["file_name"], cv2.IMREAD_COLOR)
            found = best_label_per_object(demo.detections(predictor(image, names=names), 0.3))
            scale = np.array([tile / image.shape[1], tile / image.shape[0]] * 2)
            for item in found:
                item["box"] = (np.array(item["box"]) * scale).tolist()
            tiles.append(demo.draw(cv2.resize(image, (tile, tile)), found))
        rows.append(np.concatenate(tiles, axis=1))
    cv2.imwrite(str(path), np.concatenate(rows, axis=0)[:, :, ::-1])


def heldout_caption(pairs: list[tuple[str, str]]) -> tuple[str, list[list[tuple[int, int]]]]:
    """A free-form caption naming each (colour, shape) pair once, and each phrase's span:
    [("red", "circle"), ("blue", "star")] -> "find the red circle and a blue star"."""
    caption, spans = "find", []
    for index, (colour, shape) in enumerate(pairs):
        caption += " and" if index else ""
        article = " the " if index % 2 == 0 else " a "
        start = len(caption) + len(article)
        caption += f"{article}{colour} {shape}"
        spans.append([(start, len(caption))])
    return caption, spans


def best_box_per_phrase(found: list[dict]) -> list[dict]:
    """The top-scoring detection of each phrase (`class_id`), detections given best first."""
    best: dict[int, dict] = {}
    for detection in found:
        best.setdefault(detection["class_id"], detection)
    return list(best.values())


def draw_zero_shot(predictor, path: Path, seed: int, count: int = 4, tile: int = 320) -> None:
    """Freshly drawn scenes (never seen in training), each holding two held-out colour-shape
    pairs among other objects, grounded with a free-form caption that names the held-out
    pairs; each phrase keeps its best box. One row of tiles with the caption under each."""
    demo = load_tool("demo")
    defaults = SyntheticConfig()
    world = build_world(defaults.num_colours, defaults.num_shapes, defaults.num_heldout)
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(count):
        chosen = rng.choice(len(world.heldout), size=min(2, len(world.heldout)), replace=False)
        pairs = [world.heldout[int(i)] for i in chosen]
        scene = render_scene(rng, world.all_combinations(), (224, 224), 5, tuple(pairs))
        caption, spans = heldout_caption(pairs)
        result = predictor(scene.image, caption=caption, phrase_spans=spans)
        best = best_box_per_phrase(demo.detections(result, 0.0))
        for item in best:
            item["box"] = [v * tile / 224 for v in item["box"]]
        picture = demo.draw(cv2.resize(scene.image, (tile, tile)), best)
        band = np.full((28, tile, 3), 255, np.uint8)
        cv2.putText(band, caption, (4, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1)
        tiles.append(np.concatenate([picture, band], axis=0))
    cv2.imwrite(str(path), np.concatenate(tiles, axis=1)[:, :, ::-1])
