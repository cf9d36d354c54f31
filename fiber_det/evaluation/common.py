"""Shared pieces of fiber_det's evaluators: gathering across processes, tables, json output."""

import itertools
import json
import logging
import os

import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

logger = logging.getLogger(__name__)


def gather_on_main(items: list) -> list | None:
    """All processes' items concatenated on the main process; None on the others."""
    if comm.get_world_size() > 1:
        comm.synchronize()
        gathered = comm.gather(items, dst=0)
        if not comm.is_main_process():
            return None
        return list(itertools.chain(*gathered))
    return list(items)


def report(title: str, metrics: dict[str, float], output_dir: str | None, file_name: str) -> None:
    """Log `metrics` as a table and write them to output_dir/file_name as json."""
    logger.info(f"{title}:\n" + create_small_table(metrics))
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, file_name)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(metrics, handle, indent=2)
        logger.info(f"Saved {title} to {path}")


def records_by_image_id(dataset_name: str) -> dict:
    """The dataset's ground-truth records (from DatasetCatalog), keyed by image_id."""
    return {record["image_id"]: record for record in DatasetCatalog.get(dataset_name)}


def gt_boxes_xyxy(annotations: list[dict]) -> torch.Tensor:
    """(N, 4) xyxy boxes from xywh annotations, x2 = x + w (MDETR's convention, no -1)."""
    if not annotations:
        return torch.zeros(0, 4)
    boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


class PerImageHitsEvaluator(DatasetEvaluator):
    """Base of the grounding evaluators: each image's detections are compared with its
    dataset record (read once, lazily) into a hits tensor; `evaluate` gathers them.
    Subclasses implement `image_hits(record, instances) -> torch.Tensor`."""

    def __init__(self, dataset_name: str, output_dir: str | None = None):
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self._records = None
        self._hits: list[torch.Tensor] = []

    def reset(self) -> None:
        self._hits = []

    def image_hits(self, record: dict, instances) -> torch.Tensor:
        raise NotImplementedError

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        if self._records is None:
            self._records = records_by_image_id(self.dataset_name)
        for item, output in zip(inputs, outputs, strict=True):
            record = self._records[item["image_id"]]
            self._hits.append(self.image_hits(record, output["instances"].to("cpu")))
