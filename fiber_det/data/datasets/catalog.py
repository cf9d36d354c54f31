"""Training dicts of several registered datasets, each record tagged with its dataset name."""

import difflib
import logging

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import filter_images_with_only_crowd_annotations

logger = logging.getLogger(__name__)


def check_dataset_name(name: str) -> None:
    """Raise KeyError naming an unregistered dataset and the closest registered names."""
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise KeyError(f"unknown dataset name {name!r}{hint} (see datasets/README.md)")


def get_tagged_dataset_dicts(
    names: list[str] | tuple[str, ...], filter_empty: bool = True
) -> list[dict]:
    """Concatenate the dicts of `names`; each record gets `dataset_name` (its class names and
    prompt policy come from that dataset's metadata). Images without boxes are dropped when
    `filter_empty`, as detectron2's get_detection_dataset_dicts does."""
    if not names:
        raise ValueError("no dataset names given (cfg.DATASETS.TRAIN is empty)")
    records = []
    for name in names:
        check_dataset_name(name)
        dicts = DatasetCatalog.get(name)
        if not dicts:
            raise ValueError(f"dataset {name!r} is empty")
        for record in dicts:
            record.setdefault("dataset_name", name)
            record.setdefault("annotations", [])
        if filter_empty and not any(record["annotations"] for record in dicts):
            source = MetadataCatalog.get(name).get("json_file", name)
            raise ValueError(
                f"dataset {name!r} ({source}): no image has a box to train on (field "
                "'annotations' missing or empty)"
            )
        records.extend(dicts)
    if filter_empty:
        records = filter_images_with_only_crowd_annotations(records)
    logger.info(f"{len(records)} training records from {list(names)}")
    return records
