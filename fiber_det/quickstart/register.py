"""Register a generated synthetic world like any other dataset (lazy: nothing is read here).

Names, for SPLIT in train / val / test / heldout (PREFIX defaults to "synthetic"):
  PREFIX_SPLIT            COCO detection (evaluator "coco"; heldout = held-out classes only)
  PREFIX_grounding_SPLIT  MDETR Flickr-style grounding (evaluator "flickr")
  PREFIX_refcoco_SPLIT    MDETR RefCOCO-style referring expressions (evaluator "refexp")
  PREFIX_captions_SPLIT   Karpathy image-caption pairs, train / val / test (evaluator "retrieval")
and for SPLIT in train / val / test:
  PREFIX_captioning_SPLIT the same Karpathy images, one dict per image with all its captions
                          (evaluator "caption")
  PREFIX_vqa_SPLIT        VQAv2 questions (evaluator "vqa"; the answer vocabulary is built from
                          the train + val annotations, train drops unanswerable questions)
  PREFIX_nlvr2_SPLIT      NLVR2 statements about image pairs (evaluator "nlvr2")
"""

import functools
import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from fiber_det.data.datasets.detection import register_detection_dataset
from fiber_det.data.datasets.grounding import register_grounding_dataset
from fiber_det.data.datasets.image_text import (
    KARPATHY_SPLITS,
    load_karpathy_json,
    register_image_text_dataset,
)
from fiber_det.data.datasets.nlvr2 import load_nlvr2_jsonl
from fiber_det.data.datasets.vqa import load_vqav2_split
from fiber_det.quickstart import downstream
from fiber_det.quickstart.generate import SPLITS

DEFAULT_PREFIX = "synthetic"


def register_synthetic_world(root: str, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Register the world written by `generate_synthetic_dataset(root)`; returns the names."""
    annotations, names = os.path.join(root, "annotations"), []
    for split in SPLITS:
        images = os.path.join(root, "images", split)
        register_detection_dataset(
            f"{prefix}_{split}", os.path.join(annotations, f"instances_{split}.json"), images
        )
        register_grounding_dataset(
            f"{prefix}_grounding_{split}",
            os.path.join(annotations, f"final_flickr_separateGT_{split}.json"),
            images,
            evaluator_type="flickr",
            task="grounding",
            merged_boxes=False,
            flickr_gt_dir=os.path.join(root, "flickr30k_entities"),
            split=split,
        )
        register_grounding_dataset(
            f"{prefix}_refcoco_{split}",
            os.path.join(annotations, f"finetune_refcoco_{split}.json"),
            images,
            evaluator_type="refexp",
            task="refexp",
        )
        names += [f"{prefix}_{split}", f"{prefix}_grounding_{split}", f"{prefix}_refcoco_{split}"]
    for split in KARPATHY_SPLITS:
        loader = functools.partial(
            load_karpathy_json,
            os.path.join(annotations, "dataset_coco.json"),
            os.path.join(root, "images"),
            split,
            split == "train",
        )
        register_image_text_dataset(f"{prefix}_captions_{split}", loader)
        names.append(f"{prefix}_captions_{split}")
    return names + _register_downstream(root, prefix)


def load_synthetic_vqa(root: str, split: str, drop_unanswerable: bool) -> list[dict]:
    """`load_vqav2_split` of a synthetic split, "file_name" pointing at images/SPLIT/ID.*
    (the official loader names COCO files, which the synthetic world does not write)."""
    vocabulary_files = tuple(downstream.vqa_annotation_file(root, s) for s in ("train", "val"))
    image_dir = os.path.join(root, "images", split)
    records = load_vqav2_split(
        downstream.vqa_question_file(root, split),
        downstream.vqa_annotation_file(root, split),
        image_dir,
        vocabulary_files,
        drop_unanswerable,
    )
    with open(os.path.join(root, "meta.json"), encoding="utf-8") as handle:
        extension = json.load(handle)["config"]["image_format"]
    for record in records:
        record["file_name"] = os.path.join(image_dir, f"{record['image_id']}.{extension}")
    return records


def _register_downstream(root: str, prefix: str) -> list[str]:
    """PREFIX_captioning_SPLIT, PREFIX_vqa_SPLIT and PREFIX_nlvr2_SPLIT (see the module doc)."""
    annotations, names = os.path.join(root, "annotations", "dataset_coco.json"), []
    vocabulary_files = [downstream.vqa_annotation_file(root, s) for s in ("train", "val")]
    for split in downstream.DOWNSTREAM_SPLITS:
        captioning = functools.partial(
            load_karpathy_json, annotations, os.path.join(root, "images"), split, False
        )
        vqa = functools.partial(load_synthetic_vqa, root, split, split == "train")
        nlvr2 = functools.partial(
            load_nlvr2_jsonl,
            downstream.nlvr2_json_file(root, split),
            downstream.nlvr2_image_dir(root, split),
        )
        for task, loader, metadata in (
            ("captioning", captioning, {"evaluator_type": "caption"}),
            ("vqa", vqa, {"evaluator_type": "vqa", "answer_vocabulary_files": vocabulary_files}),
            ("nlvr2", nlvr2, {"evaluator_type": "nlvr2"}),
        ):
            name = f"{prefix}_{task}_{split}"
            DatasetCatalog.register(name, loader)
            MetadataCatalog.get(name).set(**metadata)
            names.append(name)
    return names
