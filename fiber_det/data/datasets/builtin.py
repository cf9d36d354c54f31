"""Builtin datasets under $DETECTRON2_DATASETS (default ./datasets), registered on import: the
one place where fiber_det registers datasets, behind one guard.

COCO 2017 and LVIS v1 train/val are detectron2's own registrations (coco_2017_*, lvis_v1_*);
this module adds what FIBER evaluates and trains on beyond them (grounding, Objects365, LVIS
minival, ODinW-13, caption corpora, VQAv2, NLVR2) and the quickstart's synthetic world
(`synthetic_*`, fiber_det.quickstart). The expected tree is in datasets/README.md. Nothing is
read until a dataset is first used.
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import get_lvis_instances_meta, load_lvis_json

from fiber_det.data.datasets.detection import load_naming_the_file, register_detection_dataset
from fiber_det.data.datasets.grounding import register_grounding_dataset
from fiber_det.data.datasets.image_text import register_all_image_text
from fiber_det.data.datasets.nlvr2 import register_all_nlvr2
from fiber_det.data.datasets.odinw import register_odinw13
from fiber_det.data.datasets.vqa import register_all_vqav2
from fiber_det.quickstart.register import DEFAULT_PREFIX, register_synthetic_world

MDETR_DIR = "mdetr_annotations"

# name -> (json under mdetr_annotations/, image folder, evaluator_type, task, merged_boxes)
_GROUNDING = {
    **{
        f"flickr30k_entities_{split}": (
            f"final_flickr_separateGT_{split}.json",
            f"flickr30k/flickr30k_images/{split}",
            "flickr",
            "grounding",
            False,
        )
        for split in ("train", "val", "test")
    },
    **{
        f"flickr30k_entities_merged_{split}": (
            f"final_flickr_mergedGT_{split}.json",
            f"flickr30k/flickr30k_images/{split}",
            "flickr",
            "grounding",
            True,
        )
        for split in ("train", "val", "test")
    },
    **{
        f"{dataset}_{partition}_{split}": (
            f"finetune_{dataset}_{split}.json",
            "coco/train2014",
            "refexp",
            "refexp",
            False,
        )
        for dataset, partition, splits in (
            ("refcoco", "unc", ("train", "val", "testA", "testB")),
            ("refcoco+", "unc", ("train", "val", "testA", "testB")),
            ("refcocog", "umd", ("train", "val", "test")),
        )
        for split in splits
    },
}

# GoldG without COCO (MDETR): images come from COCO train2014 or Visual Genome (GQA folder)
_MIXED = ("mixed_train_no_coco", "final_mixed_train_no_coco.json")

# name -> (COCO-format json, image folder)
_OBJECTS365 = {
    "objects365_v2_train": ("objects365/zhiyuan_objv2_train.json", "objects365/train"),
    "objects365_v2_val": ("objects365/zhiyuan_objv2_val.json", "objects365/val"),
}

# MDETR / GLIP's 5,000-image LVIS v1 minival (images from COCO 2017, found via coco_url)
_LVIS_MINIVAL = ("lvis_v1_minival", "lvis/lvis_v1_minival_inserted_image_name.json", "coco/")


def register_all_fiber_datasets(root: str) -> None:
    """Register every builtin FIBER dataset with paths under `root`."""
    for name, (json_name, images, evaluator_type, task, merged) in _GROUNDING.items():
        register_grounding_dataset(
            name,
            os.path.join(root, MDETR_DIR, json_name),
            os.path.join(root, images),
            evaluator_type=evaluator_type,
            task=task,
            merged_boxes=merged,
        )
    mixed_name, mixed_json = _MIXED
    register_grounding_dataset(
        mixed_name,
        os.path.join(root, MDETR_DIR, mixed_json),
        {"coco": os.path.join(root, "coco/train2014"), "vg": os.path.join(root, "gqa/images")},
        evaluator_type="",
    )
    for name, (json_file, images) in _OBJECTS365.items():
        register_detection_dataset(
            name,
            os.path.join(root, json_file),
            os.path.join(root, images),
            prompt_policy="positives_negatives",
        )
    register_lvis_naming_the_file(root, *_LVIS_MINIVAL)
    register_odinw13(os.path.join(root, "odinw"))
    register_all_image_text(root)
    register_all_vqav2(root)
    register_all_nlvr2(root)
    register_synthetic_world(os.path.join(root, DEFAULT_PREFIX))


def register_lvis_naming_the_file(root: str, name: str, json_file: str, images: str) -> None:
    """detectron2's LVIS registration, with loading errors naming the json."""
    json_file, images = os.path.join(root, json_file), os.path.join(root, images)
    DatasetCatalog.register(
        name, lambda: load_naming_the_file(load_lvis_json, "LVIS-format", json_file, images, name)
    )
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=images,
        evaluator_type="lvis",
        **get_lvis_instances_meta("lvis_v1"),
    )


def _registered_already() -> bool:
    return "flickr30k_entities_val" in DatasetCatalog.list()


if not _registered_already():
    register_all_fiber_datasets(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
