"""GroundingDatasetMapper: detectron2 dataset dicts -> the tensors GroundingDetector consumes.

Detection records (COCO-format, `thing_classes` in their metadata) become prompts over class
names with the training policy of fine_grained_spec.md e.1; grounding records (MDETR format,
with a `caption`) keep their caption and map each box's `tokens_positive` spans to tokens.
Augmentation is the original's: shorter side from cfg.INPUT.MIN_SIZE_TRAIN (choice among
480..800), longer side <= 1333, horizontal flip 0.5, none for referring expressions. Like the
original, the flip does not swap "left"/"right" in captions: spans stay on the same words.
"""

import copy
import json
import logging
import random
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances
from transformers import PreTrainedTokenizerBase

from fiber_det.data.dropped_boxes import DroppedBoxCounter
from fiber_det.data.prompts import (
    TrainingPrompt,
    build_detection_prompts,
    build_grounding_prompt,
    positives_plus_negatives_prompt,
    shuffled_all_classes_prompt,
)
from fiber_det.data.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

__all__ = ["GroundingDatasetMapper"]


def load_caption_prompts(path: str) -> dict[str, list[dict]]:
    """Read {dataset_name: [{"prefix", "name", "suffix"} per class]} (GLIP's CAPTION_PROMPT)."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"INPUT.TEXT.CAPTION_PROMPT_FILE {path} cannot be read: {exc}") from exc
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected {{dataset_name: [per-class prompt, ...]}}")
    return content


def _distinct_span_sets(annotations: Sequence[dict]) -> tuple[list[list], list[int]]:
    """Group boxes by their tokens_positive: (distinct span lists, row index of each box)."""
    rows: dict[tuple, int] = {}
    for ann in annotations:
        rows.setdefault(tuple(tuple(span) for span in ann["tokens_positive"]), len(rows))
    keys = list(rows)
    index = [rows[tuple(tuple(span) for span in ann["tokens_positive"])] for ann in annotations]
    return [list(key) for key in keys], index


class GroundingDatasetMapper:
    """Read, augment and tokenize one record into the data contract of the grounding detector.

    Output: image uint8 (3, H, W); height/width (original size); image_id; file_name;
    prompts (list of dicts: input_ids (L,), attention_mask (L,), positive_map (K, L),
    labels (K,), caption); for training, instances with gt_boxes (xyxy), gt_classes and
    gt_positive_map (N, L) over prompts[0]'s tokens.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list,
        image_format: str,
        tokenizer_name: str,
        max_query_len: int = 256,
        default_dataset: str | None = None,
        detection_prompt: str = "all_classes_shuffled",
        max_negatives: int = 85,
        negative_control_probs: tuple[float, float, float] = (0.05, 0.05, 0.5),
        chunk_size: int = 0,
        caption_prompts: dict[str, list[dict]] | None = None,
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.augmentations_no_flip = T.AugmentationList(
            [aug for aug in augmentations if not isinstance(aug, T.RandomFlip)]
        )
        self.image_format = image_format
        self.tokenizer_name = tokenizer_name
        self.max_query_len = max_query_len
        self.default_dataset = default_dataset
        self.detection_prompt = detection_prompt
        self.max_negatives = max_negatives
        self.negative_control_probs = tuple(negative_control_probs)
        self.chunk_size = chunk_size
        self.caption_prompts = caption_prompts or {}
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._eval_prompts: dict[str, list[dict]] = {}
        self.dropped_boxes = DroppedBoxCounter(max_query_len)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: str | None = None) -> dict:
        return {
            "is_train": is_train,
            "augmentations": utils.build_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "tokenizer_name": cfg.INPUT.TEXT.TOKENIZER,
            "max_query_len": cfg.INPUT.TEXT.MAX_QUERY_LEN,
            "default_dataset": dataset_name,
            "detection_prompt": cfg.INPUT.TEXT.DETECTION_PROMPT,
            "max_negatives": cfg.INPUT.TEXT.MAX_NEGATIVES,
            "negative_control_probs": cfg.INPUT.TEXT.NEGATIVE_CONTROL_PROBS,
            "chunk_size": cfg.TEST.CHUNK_SIZE,
            "caption_prompts": load_caption_prompts(cfg.INPUT.TEXT.CAPTION_PROMPT_FILE),
        }

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """Loaded on first use (never at import or construction)."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def __call__(self, dataset_dict: dict) -> dict:
        record = copy.deepcopy(dataset_dict)
        image = self._read_image(record)
        is_refexp = record.get("task") == "refexp"
        augmentations = self.augmentations_no_flip if is_refexp else self.augmentations
        aug_input = T.AugInput(image)
        transforms = augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        out = {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": record["height"],
            "width": record["width"],
            "image_id": record["image_id"],
            "file_name": record["file_name"],
        }
        if not self.is_train:
            out["prompts"] = self._eval_prompts_for(record)
            return out
        annotations = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        boxes, annotations = self._transform_boxes(annotations, transforms, image_shape)
        if "caption" in record:
            training = self._grounding_training_prompt(record["caption"], annotations)
        else:
            training = self._detection_training_prompt(record, annotations)
        instances = Instances(image_shape)
        keep = training.keep
        self._count_dropped(record, keep)
        instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32)[keep])
        instances.gt_classes = self._gt_classes(record, annotations)[keep]
        instances.gt_positive_map = training.gt_positive_map[keep]
        out["prompts"] = [training.prompt]
        out["instances"] = instances
        return out

    def _count_dropped(self, record: dict, keep: torch.Tensor) -> None:
        dataset = record.get("dataset_name", self.default_dataset) or "training data"
        where = f"image {record.get('file_name')}"
        self.dropped_boxes.add(dataset, len(keep), int((~keep).sum()), where)

    def _read_image(self, record: dict) -> np.ndarray:
        try:
            image = utils.read_image(record["file_name"], format=self.image_format)
        except OSError as exc:
            raise FileNotFoundError(
                f"image file {record['file_name']} (field 'file_name' of image_id "
                f"{record.get('image_id')}) cannot be read: {exc}"
            ) from exc
        utils.check_image_size(record, image)
        return image

    @staticmethod
    def _transform_boxes(
        annotations: list[dict], transforms: T.TransformList, image_shape: tuple[int, int]
    ) -> tuple[np.ndarray, list[dict]]:
        """Boxes (N, 4) xyxy after augmentation and clipping; empty ones drop with their ann."""
        if not annotations:
            return np.zeros((0, 4), dtype=np.float32), []
        boxes = np.stack(
            [
                BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
                for a in annotations
            ]
        ).astype(np.float64)
        boxes = transforms.apply_box(boxes)
        height, width = image_shape
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[keep], [ann for ann, kept in zip(annotations, keep, strict=True) if kept]

    def _gt_classes(self, record: dict, annotations: list[dict]) -> torch.Tensor:
        if "caption" in record:
            return torch.as_tensor(_distinct_span_sets(annotations)[1], dtype=torch.long)
        return torch.as_tensor([a["category_id"] for a in annotations], dtype=torch.long)

    def _grounding_training_prompt(self, caption: str, annotations: list[dict]) -> TrainingPrompt:
        """Rows are the distinct phrases (span sets) of the boxes; cut-off phrases drop boxes."""
        span_sets, rows = _distinct_span_sets(annotations)
        prompt = build_grounding_prompt(caption, span_sets, self.tokenizer, self.max_query_len)
        row_index = torch.as_tensor(rows, dtype=torch.long)
        gt_map = (
            prompt["positive_map"][row_index] if rows else torch.zeros(0, len(prompt["input_ids"]))
        )
        return TrainingPrompt(prompt, gt_map, gt_map.sum(1) > 0)

    def _dataset_of(self, record: dict) -> str:
        """The dataset whose metadata (thing_classes, prompt_policy) a detection record uses."""
        name = record.get("dataset_name", self.default_dataset)
        if name is None:
            raise ValueError(
                f"detection record {record.get('file_name')} has no field 'dataset_name' and the "
                "mapper no default dataset (load training data with get_tagged_dataset_dicts)"
            )
        return name

    def _detection_training_prompt(self, record: dict, annotations: list[dict]) -> TrainingPrompt:
        metadata = MetadataCatalog.get(self._dataset_of(record))
        classes = torch.as_tensor([a["category_id"] for a in annotations], dtype=torch.long)
        policy = metadata.get("prompt_policy", self.detection_prompt)
        if policy == "positives_negatives":
            return positives_plus_negatives_prompt(
                metadata.thing_classes,
                classes,
                self.tokenizer,
                self.max_query_len,
                self.max_negatives,
                self.negative_control_probs,
                rng=random.Random(random.getrandbits(32)),
            )
        return shuffled_all_classes_prompt(
            metadata.thing_classes, classes, self.tokenizer, self.max_query_len
        )

    def _eval_prompts_for(self, record: dict) -> list[dict]:
        if "caption" in record:
            phrases = (
                record.get("phrase_spans") or _distinct_span_sets(record.get("annotations", []))[0]
            )
            prompt = build_grounding_prompt(
                record["caption"], phrases, self.tokenizer, self.max_query_len
            )
            cut = (prompt["positive_map"].sum(1) == 0).nonzero().flatten().tolist()
            if cut:
                logger.warning(
                    f"image {record.get('file_name')}: phrase(s) {cut} of the caption fall past "
                    f"INPUT.TEXT.MAX_QUERY_LEN={self.max_query_len} tokens (or cover no token) "
                    "and count as misses"
                )
            return [prompt]
        dataset_name = self._dataset_of(record)
        if dataset_name not in self._eval_prompts:
            names = list(MetadataCatalog.get(dataset_name).thing_classes)
            affixes = None
            if dataset_name in self.caption_prompts:
                entries = self.caption_prompts[dataset_name]
                names = [
                    entry.get("name", name) for entry, name in zip(entries, names, strict=True)
                ]
                affixes = [(e.get("prefix", ""), e.get("suffix", "")) for e in entries]
            self._eval_prompts[dataset_name] = build_detection_prompts(
                names, self.tokenizer, self.max_query_len, self.chunk_size or None, affixes
            )
        return self._eval_prompts[dataset_name]
