"""EMA of the weights: hand-computed after 2 steps, save / resume, --eval-only with EMA."""

import pytest
import torch
from detectron2.engine import SimpleTrainer
from torch import nn

from fiber_det.checkpoint import FiberCheckpointer
from fiber_det.config import get_fiber_cfg
from fiber_det.ema import EMAHook, WeightsEMA
from fiber_det.engine import load_weights

DECAY = 0.999


class Climber(nn.Module):
    """One weight w (loss -w: SGD at lr 1 adds 1 per step) and an integer step counter."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.register_buffer("steps", torch.zeros(1, dtype=torch.long))

    def forward(self, _batch):
        self.steps += 1
        return {"loss": -self.w.sum()}


def _train(model, ema, start, end):
    trainer = SimpleTrainer(model, iter([None] * 10), torch.optim.SGD(model.parameters(), lr=1))
    trainer.register_hooks([EMAHook(ema, model)])
    trainer.train(start, end)


def test_ema_after_two_steps_by_hand():
    model = Climber()
    ema = WeightsEMA(model, DECAY)
    _train(model, ema, 0, 2)
    assert model.w.item() == 2.0
    # starts at w = 0; step 1: w = 1 -> 0.001; step 2: w = 2 -> 0.999 * 0.001 + 0.001 * 2
    assert ema.module.w.item() == pytest.approx(0.002999, rel=1e-6)
    assert ema.module.steps.item() == 2  # integer buffers are copied, not averaged


def test_save_and_resume_round_trip(tmp_path):
    model = Climber()
    ema = WeightsEMA(model, DECAY)
    _train(model, ema, 0, 2)
    FiberCheckpointer(model, str(tmp_path), model_ema=ema).save("model_0000001")
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=False)
    assert set(saved["model_ema"]) == set(saved["model"]) == {"w", "steps"}

    resumed_model = Climber()
    resumed_ema = WeightsEMA(resumed_model, DECAY)
    checkpointer = FiberCheckpointer(resumed_model, str(tmp_path), model_ema=resumed_ema)
    checkpointer.resume_or_load("", resume=True)
    assert resumed_ema.restored and resumed_ema.module.w.item() == pytest.approx(0.002999)
    _train(resumed_model, resumed_ema, 2, 3)  # w = 3; the average continues, no reset
    assert resumed_ema.module.w.item() == pytest.approx(0.999 * 0.002999 + 0.001 * 3, rel=1e-6)


def test_eval_only_loads_the_ema_weights(tmp_path):
    model = Climber()
    ema = WeightsEMA(model, DECAY)
    _train(model, ema, 0, 2)
    FiberCheckpointer(model, str(tmp_path), model_ema=ema).save("trained")
    cfg = get_fiber_cfg()
    cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR = str(tmp_path / "trained.pth"), str(tmp_path / "eval")
    plain = Climber()
    load_weights(cfg, plain, resume=False)
    assert plain.w.item() == 2.0
    cfg.MODEL.EMA.ENABLED = True
    averaged = Climber()
    load_weights(cfg, averaged, resume=False)
    assert averaged.w.item() == pytest.approx(0.002999, rel=1e-6)


def test_decay_outside_the_unit_interval_is_refused():
    with pytest.raises(ValueError, match=r"MODEL.EMA.DECAY must lie in \[0, 1\), got 1.0"):
        WeightsEMA(Climber(), 1.0)
