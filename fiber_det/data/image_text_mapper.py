"""Image-caption dataset dicts -> tensors for `FiberPretrainModel` (coarse stage).

Output of `ImageTextDatasetMapper` for one dict:
- "image": uint8 (3, S, S) in cfg.INPUT.FORMAT, resized to S x S with bicubic interpolation and
  no aspect preservation (the original's `albef` transform, coarse_grained_spec.md d.2; in
  training with MODEL.PRETRAIN.AUGMENT, `albef_randaug` first, as the retrieval fine-tunes; the
  model normalises with MODEL.PIXEL_MEAN / PIXEL_STD);
- "image_id", "height", "width" (of the source image);
- "texts": list of dicts {"input_ids": (L,), "attention_mask": (L,), "caption": str}; one random
  caption in training (with "mlm_input_ids" / "mlm_labels" (L,)), every caption at test.
Text is tokenized with <s> ... </s>, truncated to max_text_len, unpadded (the model pads).
"""

import copy
import random

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils
from PIL import Image
from transformers import PreTrainedTokenizerBase

from fiber_det.data.datasets.image_text import read_arrow_image
from fiber_det.data.tokenizer import build_tokenizer
from fiber_det.data.transforms import albef_randaug

__all__ = ["ImageTextDatasetMapper", "mask_tokens_for_mlm"]


def mask_tokens_for_mlm(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: select `probability` of the non-special tokens; of those 80 % -> <mask>,
    10 % -> a random id in [0, vocab_size), 10 % unchanged (HF DataCollatorForLanguageModeling).

    input_ids, special_tokens_mask: (..., L). Returns (masked ids, labels) with labels = the
    original id at selected positions and -100 everywhere else.
    """
    probabilities = torch.full(input_ids.shape, probability)
    probabilities.masked_fill_(special_tokens_mask.bool(), 0.0)
    selected = torch.bernoulli(probabilities, generator=generator).bool()
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool()
    to_mask &= selected
    to_random = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool()
    to_random &= selected & ~to_mask
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    masked[to_random] = random_ids[to_random]
    return masked, labels


class ImageTextDatasetMapper:
    """Callable turning an image-caption dict into the coarse model's input (see module doc)."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int = 384,
        image_format: str = "BGR",
        max_text_len: int = 40,
        mlm_probability: float = 0.15,
        augment: bool = False,
    ) -> None:
        if tokenizer.mask_token_id is None:
            raise ValueError("the coarse-stage tokenizer needs a <mask> token for MLM")
        self.is_train = is_train
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.image_format = image_format
        self.max_text_len = max_text_len
        self.mlm_probability = mlm_probability
        self.augmentation = albef_randaug(image_size) if is_train and augment else None

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        return {
            "is_train": is_train,
            "tokenizer": build_tokenizer(cfg.INPUT.TEXT.TOKENIZER),
            "image_size": cfg.MODEL.PRETRAIN.IMAGE_SIZE,
            "image_format": cfg.INPUT.FORMAT,
            "max_text_len": cfg.MODEL.PRETRAIN.MAX_TEXT_LEN,
            "mlm_probability": cfg.MODEL.PRETRAIN.MLM_PROBABILITY,
            "augment": cfg.MODEL.PRETRAIN.AUGMENT,
        }

    def load_image(self, record: dict) -> Image.Image:
        """The record's RGB image, from its file or its arrow row."""
        if "arrow_file" in record:
            return read_arrow_image(record["arrow_file"], record["arrow_row"])
        if "file_name" not in record:
            raise ValueError(f"image-text record {record.get('image_id')} has no 'file_name'")
        return Image.open(record["file_name"]).convert("RGB")

    def transform_image(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 (3, S, S): `albef_randaug` first when augmenting."""
        if self.augmentation is not None:
            image = self.augmentation(image)
        return self.image_tensor(image)

    def image_tensor(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> uint8 (3, S, S) in the configured format (bicubic, no crop)."""
        resized = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        array = detection_utils.convert_PIL_to_numpy(resized, self.image_format)
        return torch.as_tensor(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def tokenize(self, caption: str, with_mlm: bool) -> dict:
        """One caption -> {"input_ids", "attention_mask", "caption"} (+ MLM fields)."""
        encoded = self.tokenizer(
            caption,
            truncation=True,
            max_length=self.max_text_len,
            return_special_tokens_mask=True,
        )
        text = {
            "input_ids": torch.tensor(encoded["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(encoded["attention_mask"], dtype=torch.long),
            "caption": caption,
        }
        if with_mlm:
            text["mlm_input_ids"], text["mlm_labels"] = mask_tokens_for_mlm(
                text["input_ids"],
                torch.tensor(encoded["special_tokens_mask"]),
                self.tokenizer.mask_token_id,
                len(self.tokenizer),
                self.mlm_probability,
            )
        return text

    def __call__(self, dataset_dict: dict) -> dict:
        record = copy.deepcopy(dataset_dict)
        captions = record.pop("captions", None)
        if not captions:
            raise ValueError(f"image-text record {record.get('image_id')} has no captions")
        image = self.load_image(record)
        record["width"], record["height"] = image.size
        record["image"] = self.transform_image(image)
        if self.is_train:
            record["texts"] = [self.tokenize(random.choice(captions), with_mlm=True)]
        else:
            record["texts"] = [self.tokenize(caption, with_mlm=False) for caption in captions]
        return record
