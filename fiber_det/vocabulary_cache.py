"""The fast mode's text cache: fusion-off text features of a class list, saved once, reloaded.

With cross-attention off (the paper's dual-encoder switch) the text features of a vocabulary
do not depend on the image, so a fixed class list is encoded once. The file is a safetensors
file: `text_embedded` (P, L, D), P prompt chunks padded to the longest L, and string metadata
recording what the features depend on (class list, chunking, tokenizer, text-tower weights).
Loading checks each; a file built for anything else is refused with the fields that differ.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedTokenizerBase

from fiber_det.checkpoint import atomic_save_safetensors

FORMAT = "fiber_det.vocabulary_text.v1"
TENSOR_NAME = "text_embedded"


@dataclass
class Vocabulary:
    """A class list ready for the fast mode: its prompt chunks (the data contract's dicts)
    and their fusion-off text features `text_embedded` (P, L, D)."""

    names: list[str]
    prompts: list[dict]
    text_embedded: torch.Tensor


class VocabularyCacheMismatch(ValueError):
    """A cache file built for another class list, chunking, tokenizer or text tower."""


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names and raw bytes of `tensors` (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        flat = tensors[name].detach().cpu().contiguous().view(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """Class, size and a sha256 of the vocabulary of `tokenizer` (no file paths)."""
    vocabulary = json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()
    return json.dumps(
        {
            "class": type(tokenizer).__name__,
            "size": len(tokenizer),
            "vocab_sha256": hashlib.sha256(vocabulary).hexdigest(),
        },
        sort_keys=True,
    )


def cache_identity(
    names: list[str],
    tokenizer: PreTrainedTokenizerBase,
    text_tower_state: dict[str, torch.Tensor],
    max_query_len: int,
    chunk_size: int,
) -> dict[str, str]:
    """The metadata a cache file records and a load must match."""
    return {
        "format": FORMAT,
        "class_names": json.dumps(names),
        "chunking": json.dumps({"max_query_len": max_query_len, "chunk_size": chunk_size}),
        "tokenizer": tokenizer_identity(tokenizer),
        "text_tower_sha256": tensors_sha256(text_tower_state),
    }


def save_vocabulary_text(path: str | Path, text_embedded: torch.Tensor, identity: dict) -> None:
    """Write `text_embedded` (P, L, D) and `identity` (from `cache_identity`) to `path`."""
    tensors = {TENSOR_NAME: text_embedded.detach().cpu().contiguous()}
    atomic_save_safetensors(tensors, str(path), identity)


def load_vocabulary_text(path: str | Path, identity: dict) -> torch.Tensor:
    """`text_embedded` (P, L, D) of the cache at `path`, or VocabularyCacheMismatch naming the
    recorded fields that differ from `identity`."""
    with safe_open(str(path), framework="pt") as handle:
        recorded = handle.metadata() or {}
        if recorded.get("format") != FORMAT:
            raise VocabularyCacheMismatch(
                f"{path} is not a fiber_det vocabulary cache ({FORMAT}); rebuild it"
            )
        differing = [key for key in identity if recorded.get(key) != identity[key]]
        if differing:
            raise VocabularyCacheMismatch(
                f"vocabulary cache {path} was built for a different "
                f"{', '.join(key.replace('_', ' ') for key in differing)} than this predictor's; "
                "delete it (it is rebuilt on the next run) or give another cache path"
            )
        return handle.get_tensor(TENSOR_NAME)
