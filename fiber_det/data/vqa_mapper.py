"""VQAv2 dataset dicts (fiber_det.data.datasets.vqa) -> tensors for `FiberVQAModel`.

Output of `VQADatasetMapper` for one question:
- "image": uint8 (3, S, S) in cfg.INPUT.FORMAT: the COCO image (or arrow row) resized bicubic
  to S x S, or in training with MODEL.PRETRAIN.AUGMENT through `albef_randaug` (spec d.2);
- "input_ids", "attention_mask": (L,) the question, <s> ... </s>, at most max_text_len tokens;
- "question_id", "image_id";
- "vqa_labels": LongTensor (n,) and "vqa_scores": FloatTensor (n,), the soft targets (n may be
  0; empty for unannotated splits, which cannot train).
"""

import torch

from fiber_det.data.image_text_mapper import ImageTextDatasetMapper

__all__ = ["VQADatasetMapper"]


class VQADatasetMapper(ImageTextDatasetMapper):
    """Callable turning a VQA question dict into FiberVQAModel's input (see module doc)."""

    def __call__(self, record: dict) -> dict:
        question_id = record.get("question_id")
        if not isinstance(record.get("question"), str):
            raise ValueError(f"VQA record question_id {question_id} has no 'question' string")
        if self.is_train and "answer_labels" not in record:
            raise ValueError(
                f"VQA record question_id {question_id} has no 'answer_labels': an unannotated "
                "split cannot train"
            )
        image = self.transform_image(self.load_image(record))
        text = self.tokenize(record["question"], with_mlm=False)
        labels = record.get("answer_labels", [])
        scores = record.get("answer_scores", [])
        if len(labels) != len(scores):
            raise ValueError(
                f"VQA record question_id {question_id}: {len(labels)} answer_labels but "
                f"{len(scores)} answer_scores"
            )
        return {
            "image": image,
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "question_id": question_id,
            "image_id": record.get("image_id"),
            "vqa_labels": torch.tensor(labels, dtype=torch.long),
            "vqa_scores": torch.tensor(scores, dtype=torch.float32),
        }
