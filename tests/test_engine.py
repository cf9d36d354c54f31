"""The step trainer FiberTrainer builds: detectron2's SimpleTrainer, or its AMPTrainer with the
configured precision; clear errors for a bad precision or AMP on the CPU."""

import pytest
import torch
from detectron2.engine import AMPTrainer, SimpleTrainer

from fiber_det.config import get_fiber_cfg
from fiber_det.engine import build_step_trainer


def _build(device: str, amp: bool, precision: str = "float16"):
    cfg = get_fiber_cfg()
    cfg.MODEL.DEVICE, cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION = device, amp, precision
    model = torch.nn.Linear(2, 2)
    return build_step_trainer(cfg, model, [], torch.optim.SGD(model.parameters(), lr=0.1))


def test_without_amp_the_plain_trainer():
    trainer = _build("cpu", amp=False, precision="not checked without AMP")
    assert type(trainer) is SimpleTrainer


@pytest.mark.parametrize(
    "precision, dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)]
)
def test_amp_trains_in_the_configured_precision(precision, dtype):
    trainer = _build("cuda", amp=True, precision=precision)  # built, not stepped, here
    assert isinstance(trainer, AMPTrainer) and trainer.precision is dtype


def test_bad_amp_settings_are_named():
    with pytest.raises(ValueError, match=r"SOLVER.AMP.PRECISION='fp8'.*bfloat16"):
        _build("cuda", amp=True, precision="fp8")
    with pytest.raises(ValueError, match=r"MODEL.DEVICE='cpu'.*CUDA only"):
        _build("cpu", amp=True)


def test_the_default_precision_is_the_original_fp16():
    assert get_fiber_cfg().SOLVER.AMP.PRECISION == "float16"
