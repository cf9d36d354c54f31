"""A synthetic grounding world (coloured shapes, captions, referring expressions, VQAv2
questions, NLVR2 statements) written in the real dataset formats, for the quickstart and tests.
Entry points: `generate_synthetic_dataset` and `register_synthetic_world` (fiber_det's builtin
datasets include the world found under $DETECTRON2_DATASETS/synthetic as synthetic_*).
"""

from fiber_det.quickstart.generate import SPLITS, SyntheticConfig, generate_synthetic_dataset
from fiber_det.quickstart.register import register_synthetic_world
from fiber_det.quickstart.world import World, build_world

__all__ = [
    "SPLITS",
    "SyntheticConfig",
    "World",
    "build_world",
    "generate_synthetic_dataset",
    "register_synthetic_world",
]
