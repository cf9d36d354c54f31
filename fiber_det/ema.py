"""Exponential moving average of the weights (MODEL.EMA; the original fine-grained recipe: 0.999).

timm's `ModelEmaV3` keeps the average (floating-point parameters and buffers lerp towards the
model, integer buffers are copied); `EMAHook` updates it after every optimizer step. Checkpoints
carry it as `model_ema`, a state_dict with the model's own keys (the original's layout), so a
resumed run continues the same average and `--eval-only` can evaluate it.
"""

import logging

import torch
from detectron2.engine import HookBase
from timm.utils.model_ema import ModelEmaV3
from torch import nn

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "model_ema"


class StateTarget:
    """A checkpointable that reads and writes one module's state_dict and remembers whether
    a checkpoint restored it (fvcore checkpointables need state_dict / load_state_dict)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.restored = False

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
        self.restored = True


class WeightsEMA(StateTarget):
    """The moving average of `model`'s weights: ema = decay * ema + (1 - decay) * model."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MODEL.EMA.DECAY must lie in [0, 1), got {decay}")
        self.averager = ModelEmaV3(model, decay=decay)
        super().__init__(self.averager.module)

    def reset_to(self, model: nn.Module) -> None:
        """Start the average at `model`'s current weights."""
        self.averager.set(model)

    def update(self, model: nn.Module) -> None:
        self.averager.update(model)


class EMAHook(HookBase):
    """Updates `ema` from `model` (the unwrapped, non-DDP module) after every step; before
    training the average starts at the weights training starts from, unless a resumed
    checkpoint restored it."""

    def __init__(self, ema: WeightsEMA, model: nn.Module):
        self.ema = ema
        self.model = model

    def before_train(self) -> None:
        if not self.ema.restored:
            self.ema.reset_to(self.model)
            logger.info("EMA of the weights starts at the model's weights")

    def after_step(self) -> None:
        self.ema.update(self.model)


@torch.no_grad()
def load_ema_weights(checkpointer, model: nn.Module, path: str) -> bool:
    """Load the `model_ema` of checkpoint `path` into `model` itself; False (and a warning)
    when the file has none, leaving the weights loaded from its `model`."""
    target = StateTarget(model)
    checkpointer.add_checkpointable(CHECKPOINT_KEY, target)
    checkpointer.load(path, checkpointables=[CHECKPOINT_KEY])
    if not target.restored:
        logger.warning(f"{path} has no '{CHECKPOINT_KEY}': evaluating its plain weights")
    return target.restored
