"""Data: tokenizers, prompts, mappers and the dataset loaders (registered on import)."""

from fiber_det.data import datasets  # noqa: F401  (registration on import)
