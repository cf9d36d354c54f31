"""Batching unpadded token tensors: what the detector (prompts) and the coarse-stage models
(captions, questions, statements) share."""

import torch
from torch import nn

# padding value of each per-text field; None: the tokenizer's pad id
FILL_VALUES = {"input_ids": None, "mlm_input_ids": None, "attention_mask": 0, "mlm_labels": -100}


def pad_texts(
    texts: list[dict], pad_id: int, keys: tuple[str, ...] = ("input_ids", "attention_mask")
) -> dict[str, torch.Tensor]:
    """Pad the 1-D tensors `keys` of each text to (N, L), L the longest: ids with `pad_id`,
    masks with 0, MLM labels with -100."""
    unknown = [key for key in keys if key not in FILL_VALUES]
    if unknown:
        raise ValueError(f"no padding value for text fields {unknown}")
    return {
        key: nn.utils.rnn.pad_sequence(
            [t[key] for t in texts],
            batch_first=True,
            padding_value=pad_id if FILL_VALUES[key] is None else FILL_VALUES[key],
        )
        for key in keys
    }
