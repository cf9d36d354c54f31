"""Image-caption dataset dicts (e.g. COCO Karpathy records with "captions") -> tensors for
`FiberCaptionModel`.

Output of `CaptionDatasetMapper` for one image:
- "image": uint8 (3, S, S) in cfg.INPUT.FORMAT: resized bicubic to S x S, or in training with
  MODEL.PRETRAIN.AUGMENT through `albef_randaug` (spec d.2);
- "image_id";
- "reference_ids": list of LongTensor (L_i,), every reference caption tokenised <s> ... </s>
  (the rewards of CIDEr optimisation; empty when the record has no captions, test mode only).
  They are the record's "reference_captions" when present, else every caption of its image_id
  in `reference_captions` (CIDEr optimisation: built from DATASETS.TRAIN, because the Karpathy
  train loaders give one caption per record), else its "captions";
- training only: "input_ids", "attention_mask" (L,): one random caption of "captions",
  <s> ... </s>, at most MODEL.PRETRAIN.MAX_TEXT_LEN tokens (the model pads and shifts it).
"""

import random
from collections.abc import Iterable

import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog
from transformers import PreTrainedTokenizerBase

from fiber_det.data.image_text_mapper import ImageTextDatasetMapper

__all__ = ["CaptionDatasetMapper", "captions_by_image"]


def captions_by_image(datasets: Iterable[list[dict]]) -> dict:
    """image_id -> every distinct caption of that image over the records of `datasets`
    ("reference_captions" where present, else "captions"), in order of appearance."""
    documents: dict = {}
    for records in datasets:
        for record in records:
            captions = record.get("reference_captions") or record.get("captions") or []
            document = documents.setdefault(record.get("image_id"), [])
            document.extend(c for c in captions if c not in document)
    return documents


class CaptionDatasetMapper(ImageTextDatasetMapper):
    """Callable turning an image-captions dict into FiberCaptionModel's input (see module doc).

    `mask_token_id`: the model's MODEL.PRETRAIN.CAPTION.MASK_TOKEN_ID, checked against the
    tokenizer (None: not checked). `reference_captions`: image_id -> all its captions."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int = 576,
        image_format: str = "RGB",
        max_text_len: int = 50,
        augment: bool = False,
        mask_token_id: int | None = None,
        reference_captions: dict | None = None,
    ) -> None:
        if mask_token_id is not None and tokenizer.mask_token_id != mask_token_id:
            raise ValueError(
                f"MODEL.PRETRAIN.CAPTION.MASK_TOKEN_ID is {mask_token_id} but the tokenizer's "
                f"<mask> id is {tokenizer.mask_token_id}: set the config key to it"
            )
        super().__init__(
            is_train,
            tokenizer=tokenizer,
            image_size=image_size,
            image_format=image_format,
            max_text_len=max_text_len,
            augment=augment,
        )
        self.reference_captions = reference_captions or {}

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        uses_cider = is_train and cfg.MODEL.PRETRAIN.CAPTION.OBJECTIVE != "mle"
        arguments = super().from_config(cfg, is_train)
        del arguments["mlm_probability"]
        return {
            **arguments,
            "mask_token_id": cfg.MODEL.PRETRAIN.CAPTION.MASK_TOKEN_ID,
            "reference_captions": (
                captions_by_image(DatasetCatalog.get(n) for n in cfg.DATASETS.TRAIN)
                if uses_cider
                else None
            ),
        }

    def reference_ids(self, captions: list[str]) -> list[torch.Tensor]:
        """Every caption tokenised as the training captions are: (L_i,) ids each."""
        return [self.tokenize(c, with_mlm=False)["input_ids"] for c in captions]

    def reference_corpus(self, records: list[dict]) -> list[list[list[int]]]:
        """The document-frequency corpus of the caption model's TokenCiderReward (CIDEr-D
        rewards): one document per image_id, the token ids of all its captions (per-caption
        records of one image are merged; "reference_captions" count where present)."""
        return [
            [ids.tolist() for ids in self.reference_ids(captions)]
            for captions in captions_by_image([records]).values()
        ]

    def __call__(self, record: dict) -> dict:
        captions = record.get("captions") or []
        if self.is_train and not captions:
            raise ValueError(f"caption record image_id {record.get('image_id')} has no captions")
        if not all(isinstance(c, str) for c in captions + record.get("reference_captions", [])):
            raise ValueError(
                f"caption record image_id {record.get('image_id')}: 'captions' must be strings"
            )
        image = self.transform_image(self.load_image(record))
        references = (
            record.get("reference_captions")
            or self.reference_captions.get(record.get("image_id"))
            or captions
        )
        mapped = {
            "image": image,
            "image_id": record.get("image_id"),
            "reference_ids": self.reference_ids(references),
        }
        if self.is_train:
            text = self.tokenize(random.choice(captions), with_mlm=False)
            mapped["input_ids"] = text["input_ids"]
            mapped["attention_mask"] = text["attention_mask"]
        return mapped
