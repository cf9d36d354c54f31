"""COCO-format detection data (Objects365, ODinW, user sets) read by detectron2's own loader.

`load_coco_json` does the work; this wrapper adds what the grounding mapper needs: clear errors
for missing files, the original's removal of boxes with non-positive size (counted, with a
warning), and a `dataset_name` tag on each record so mixed training sets find their class names
and prompt policy.
"""

import logging
import math
import os
from collections.abc import Callable
from numbers import Real

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from fiber_det.data.prompts import clean_name

logger = logging.getLogger(__name__)

PROMPT_POLICIES = ("all_classes_shuffled", "positives_negatives")


def check_boxes(records: list[dict], source: str) -> None:
    """An error naming the file, image and annotation of the first 'bbox' that is not four
    finite numbers [x, y, width, height]."""
    for record in records:
        for index, annotation in enumerate(record.get("annotations", [])):
            bbox = annotation.get("bbox")
            numbers = isinstance(bbox, list | tuple) and all(
                isinstance(v, Real) and not isinstance(v, bool) for v in bbox
            )
            if not (numbers and len(bbox) == 4 and all(math.isfinite(v) for v in bbox)):
                raise ValueError(
                    f"{source}: image id {record.get('image_id')} ({record['file_name']}), "
                    f"annotation {index}: field 'bbox' = {bbox!r} is not four finite numbers "
                    "[x, y, width, height]"
                )


def check_class_names(names: list[str], source: str) -> None:
    """An error naming the category whose name is empty once cleaned, or repeated."""
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        cleaned = clean_name(str(name))
        if not any(character.isalnum() for character in cleaned):
            raise ValueError(
                f"{source}: category {index} has the name {name!r}, which holds no letter or "
                f"digit once cleaned ({cleaned!r}): no token could stand for it"
            )
        if cleaned.lower() in seen:
            raise ValueError(
                f"{source}: categories {seen[cleaned.lower()]} and {index} share the name "
                f"{cleaned!r} (field 'name'): the prompt could not tell them apart"
            )
        seen[cleaned.lower()] = index


def drop_degenerate_boxes(records: list[dict], source: str) -> int:
    """Remove annotations whose width or height is <= 0 (xywh), in place; return the count."""
    dropped = 0
    for record in records:
        annotations = record.get("annotations", [])
        kept = [a for a in annotations if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        dropped += len(annotations) - len(kept)
        record["annotations"] = kept
    if dropped:
        logger.warning(f"{source}: dropped {dropped} box(es) with non-positive width/height")
    return dropped


def check_image_files(records: list[dict], source: str) -> None:
    """Raise FileNotFoundError naming the json and an example path when image files are missing."""
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if missing:
        raise FileNotFoundError(
            f"{source}: {len(missing)} image file(s) named by field 'file_name' do not exist, "
            f"e.g. {missing[0]}"
        )


def load_detection_json(
    json_file: str, image_root: str, dataset_name: str, check_images: bool = True
) -> list[dict]:
    """detectron2's load_coco_json (contiguous category ids, thing_classes set) plus checks."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{dataset_name}: annotation file {json_file} does not exist")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"{dataset_name}: image folder {image_root} does not exist")
    records = load_naming_the_file(
        load_coco_json, "COCO-format", json_file, image_root, dataset_name
    )
    check_class_names(list(MetadataCatalog.get(dataset_name).thing_classes), json_file)
    check_boxes(records, json_file)
    drop_degenerate_boxes(records, json_file)
    if check_images:
        check_image_files(records, json_file)
    for record in records:
        record["dataset_name"] = dataset_name
    return records


def load_naming_the_file(loader: Callable, kind: str, json_file: str, *args) -> list[dict]:
    """`loader(json_file, *args)` (detectron2's COCO or LVIS loader, reading `kind` files);
    a missing file or a malformed json (a missing key, a wrong type, an assertion of the
    loader) is an error naming `json_file`."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"annotation file {json_file} does not exist")
    try:
        return loader(json_file, *args)
    except (AssertionError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{json_file} is not a valid {kind} json: {type(exc).__name__}: {exc}"
        ) from exc


def register_detection_dataset(
    name: str,
    json_file: str,
    image_root: str,
    evaluator_type: str = "coco",
    prompt_policy: str = "all_classes_shuffled",
    loader: Callable[[], list[dict]] | None = None,
    **metadata,
) -> None:
    """Register a COCO-format json as detection-as-grounding data (lazy load).

    `prompt_policy` picks the training prompt (spec e.1): "all_classes_shuffled" (COCO
    fine-tuning) or "positives_negatives" (Objects365 pre-training). Optional metadata
    `caption_prompts` = [(prefix, suffix) per class] gives ODinW-style per-class prompts.
    `loader` replaces the default `load_detection_json(json_file, image_root, name)`.
    """
    if prompt_policy not in PROMPT_POLICIES:
        raise ValueError(f"{name}: prompt_policy {prompt_policy!r} not in {PROMPT_POLICIES}")
    DatasetCatalog.register(
        name, loader or (lambda: load_detection_json(json_file, image_root, name))
    )
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type=evaluator_type,
        prompt_policy=prompt_policy,
        **metadata,
    )
