"""NLVR2 dataset dicts (fiber_det.data.datasets.nlvr2) -> tensors for `FiberNLVR2Model`.

Output of `NLVR2DatasetMapper` for one statement:
- "images": [left, right], each uint8 (3, S, S) in cfg.INPUT.FORMAT (bicubic resize, or in
  training with MODEL.PRETRAIN.AUGMENT `albef_randaug`, drawn independently for each image as
  the original does; its flip ignores "left" / "right" in the text, spec f.17);
- "input_ids", "attention_mask": (L,) the statement, <s> ... </s>, at most max_text_len tokens;
- "identifier"; "label" (1 = True) where the record has one.
"""

from fiber_det.data.datasets.nlvr2 import read_nlvr2_images
from fiber_det.data.image_text_mapper import ImageTextDatasetMapper

__all__ = ["NLVR2DatasetMapper"]


class NLVR2DatasetMapper(ImageTextDatasetMapper):
    """Callable turning an NLVR2 statement dict into FiberNLVR2Model's input (module doc)."""

    def __call__(self, record: dict) -> dict:
        identifier = record.get("identifier")
        if not isinstance(record.get("sentence"), str):
            raise ValueError(f"NLVR2 record {identifier} has no 'sentence' string")
        if self.is_train and "label" not in record:
            raise ValueError(f"NLVR2 record {identifier} has no 'label': it cannot train")
        if "image_files" not in record and "arrow_file" not in record:
            raise ValueError(f"NLVR2 record {identifier} has no 'image_files' or 'arrow_file'")
        images = list(read_nlvr2_images(record))
        text = self.tokenize(record["sentence"], with_mlm=False)
        mapped = {
            "images": [self.transform_image(image) for image in images],
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "identifier": identifier,
        }
        if "label" in record:
            mapped["label"] = int(record["label"])
        return mapped
