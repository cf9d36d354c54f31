"""Dataset loaders in the formats the field publishes; `builtin` registers them all on import,
with paths under $DETECTRON2_DATASETS."""

from fiber_det.data.datasets import builtin  # noqa: F401  (registration on import)
