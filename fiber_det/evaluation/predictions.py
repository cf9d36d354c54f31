"""Score a saved predictions file with a registered dataset's own evaluator.

The file is a COCO results list, `[{"image_id", "bbox": [x, y, w, h], "score", ...}]`, in the
original image's pixels, as detectron2's COCOEvaluator writes `coco_instances_results.json`:
- detection sets (evaluator "coco", "odinw", "lvis"): `category_id` is the json's category id;
- Flickr30k Entities ("flickr"): `phrase_id` is the 0-based index of the phrase in the
  caption's `tokens_positive_eval`;
- referring expressions ("refexp"): one expression per image id, no class field.
Each image of the dataset becomes one `Instances` (empty when the file has nothing for it) and
goes through the same `process` / `evaluate` calls as a model's outputs, so the numbers follow
the dataset's protocol exactly (COCO, LVIS + Fixed AP, ODinW, Flickr R@k, RefCOCO P@k).
"""

import json
from collections import defaultdict

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from fiber_det.evaluation.build import build_fiber_evaluator

CLASS_FIELDS = {"coco": "category_id", "odinw": "category_id", "lvis": "category_id"}
CLASS_FIELDS.update(flickr="phrase_id", refexp=None)


def read_predictions(path: str) -> list[dict]:
    """The results list of `path`; errors name the file and the first malformed entry."""
    with open(path, encoding="utf-8") as handle:
        try:
            predictions = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid json: {exc}") from exc
    if not isinstance(predictions, list):
        raise ValueError(f"{path}: expected a list of results (COCO results format)")
    for index, entry in enumerate(predictions):
        missing = [f for f in ("image_id", "bbox", "score") if f not in entry]
        if missing or len(entry.get("bbox", ())) != 4:
            raise ValueError(f"{path}: entry {index} lacks {missing or 'a 4-number bbox'}")
    return predictions


def class_indices(values: list[int], evaluator_type: str, dataset_name: str) -> list[int]:
    """Model class indices: contiguous ids for detection sets, phrase ids for Flickr, 0 for
    referring expressions."""
    if evaluator_type == "refexp":
        return [0] * len(values)
    if evaluator_type == "flickr":
        return [int(v) for v in values]
    mapping = MetadataCatalog.get(dataset_name).get("thing_dataset_id_to_contiguous_id")
    if mapping is None:  # detectron2's LVIS loader: contiguous id = LVIS id - 1
        return [int(v) - 1 for v in values]
    unknown = sorted({int(v) for v in values} - set(mapping))
    if unknown:
        raise ValueError(f"category_id(s) {unknown} are not categories of {dataset_name!r}")
    return [mapping[int(v)] for v in values]


def predictions_as_outputs(
    predictions: list[dict], dataset_name: str, evaluator_type: str
) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as a model's evaluation loop gives them, one pair per dataset image."""
    records = DatasetCatalog.get(dataset_name)
    class_field = CLASS_FIELDS[evaluator_type]
    by_image = defaultdict(list)
    for entry in predictions:
        if class_field and class_field not in entry:
            raise ValueError(f"{dataset_name} ({evaluator_type}) results need '{class_field}'")
        by_image[entry["image_id"]].append(entry)
    unknown = set(by_image) - {record["image_id"] for record in records}
    if unknown:
        raise ValueError(f"image_id(s) {sorted(unknown)[:5]} are not images of {dataset_name!r}")
    inputs, outputs = [], []
    for record in records:
        entries = by_image.get(record["image_id"], [])
        instances = Instances((record["height"], record["width"]))
        boxes = torch.tensor([e["bbox"] for e in entries], dtype=torch.float32).reshape(-1, 4)
        instances.pred_boxes = Boxes(BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        instances.scores = torch.tensor([float(e["score"]) for e in entries])
        labels = [e.get(class_field, 0) for e in entries] if class_field else [0] * len(entries)
        classes = class_indices(labels, evaluator_type, dataset_name)
        instances.pred_classes = torch.tensor(classes, dtype=torch.long)
        inputs.append({key: record[key] for key in ("image_id", "file_name", "height", "width")})
        outputs.append({"instances": instances})
    return inputs, outputs


def score_predictions(
    cfg: CfgNode, predictions: list[dict], dataset_name: str, output_dir: str | None = None
) -> dict:
    """The metrics of `dataset_name`'s evaluator (build_fiber_evaluator) on `predictions`."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type not in CLASS_FIELDS:
        raise ValueError(
            f"{dataset_name!r} has evaluator_type {evaluator_type!r}; a predictions file is "
            f"scored for {sorted(CLASS_FIELDS)}"
        )
    evaluator = build_fiber_evaluator(cfg, dataset_name, output_dir)
    evaluator.reset()
    inputs, outputs = predictions_as_outputs(predictions, dataset_name, evaluator_type)
    for item, output in zip(inputs, outputs, strict=True):
        evaluator.process([item], [output])
    return evaluator.evaluate()
