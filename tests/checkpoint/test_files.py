"""FiberCheckpointer writes atomically: a failed save keeps the previous file and leaves no
temporary behind; a successful one round-trips and tags the last checkpoint. Loading resamples
Swin position tables of another window size."""

import logging
from pathlib import Path

import pytest
import torch

from fiber_det.checkpoint import FiberCheckpointer, interpolate_relative_position_bias
from fiber_det.config import get_fiber_cfg
from fiber_det.modeling.vision_language.pretrain_model import FiberPretrainModel
from fiber_det.modeling.vision_language.vqa_model import FiberVQAModel

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _checkpointer(tmp_path, value: float) -> FiberCheckpointer:
    model = torch.nn.Linear(2, 1)
    torch.nn.init.constant_(model.weight, value)
    return FiberCheckpointer(model, save_dir=str(tmp_path))


def test_save_round_trips_and_tags_last(tmp_path):
    _checkpointer(tmp_path, 3.0).save("model_final", iteration=7)
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert saved["iteration"] == 7
    assert torch.equal(saved["model"]["weight"], torch.full((1, 2), 3.0))
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    _checkpointer(tmp_path, 1.0).save("model_final")

    def broken_save(data, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _checkpointer(tmp_path, 2.0).save("model_final")
    monkeypatch.undo()
    kept = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert torch.equal(kept["model"]["weight"], torch.full((1, 2), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]


def _tiny_coarse_cfg(image_size: int):
    """configs/coarse_grained/tiny.yaml at `image_size` (window image_size / 32), small vocab."""
    cfg = get_fiber_cfg()
    cfg.merge_from_file(str(CONFIGS / "coarse_grained" / "tiny.yaml"))
    cfg.MODEL.FIBER.TEXT.VOCAB_SIZE = 100
    cfg.MODEL.PRETRAIN.QUEUE_SIZE = 0
    cfg.MODEL.PRETRAIN.NUM_ANSWERS = 5
    cfg.MODEL.PRETRAIN.IMAGE_SIZE = image_size
    cfg.MODEL.FIBER.SWIN.WINDOW_SIZE = image_size // 32
    return cfg


def test_pretrain_checkpoint_loads_into_a_model_of_another_window(tmp_path, caplog):
    """A 128-px (window 4) pre-training checkpoint initialises a 96-px (window 3) VQA model:
    Swin position tables are resampled bicubically, everything else is copied."""
    source = FiberPretrainModel(_tiny_coarse_cfg(128))
    FiberCheckpointer(source, save_dir=str(tmp_path)).save("pretrain")
    target = FiberVQAModel(_tiny_coarse_cfg(96))
    head_before = target.vqa_classifier[3].weight.clone()
    with caplog.at_level(logging.INFO):
        FiberCheckpointer(target).load(str(tmp_path / "pretrain.pth"))
    loaded, saved = target.state_dict(), source.state_dict()
    tables = [k for k in saved if k.endswith("relative_position_bias_table")]
    assert len(tables) == 6
    for key in tables:
        assert saved[key].shape[0] == 49 and loaded[key].shape[0] == 25
        assert torch.equal(loaded[key], interpolate_relative_position_bias(saved[key], 3))
        assert f"'{key}' resampled from 49 to 25 rows" in caplog.text
    shared = [k for k in loaded if k in saved and k not in tables]
    assert len(shared) > 100
    assert all(torch.equal(loaded[k], saved[k]) for k in shared)
    assert torch.equal(target.vqa_classifier[3].weight, head_before)
