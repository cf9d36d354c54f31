"""The coarse rename table: every released key converts; a coarse checkpoint, converted once
(`convert_coarse_for_detector`, tools/convert_checkpoint.py --format coarse-trunk), initialises
the grounding detector with its trunk unchanged and every coarse-only tensor dropped with its
reason; given unconverted, it is refused with the command that converts it."""

import json
import re
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from fiber_det.checkpoint import (
    FiberCheckpointer,
    convert_coarse,
    convert_coarse_for_detector,
    save_converted_checkpoint,
)
from fiber_det.config import get_fiber_cfg
from fiber_det.modeling.vision_language.pretrain_model import FiberPretrainModel
from tests.modeling.vision_language.test_pretrain_golden import build_small_coarse_model

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
COARSE_ONLY_HEADS = ("temp", "cross_modal_", "itm_score.", "mlm_score.")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_released_coarse_key_converts_onto_fiber_b(reference_dir):
    dump = json.loads((reference_dir / "fiber_coarse_state_dict.json").read_text())
    shapes = {**dump["params"], **dump["buffers"]}
    checkpoint = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    result = convert_coarse({"state_dict": checkpoint, "epoch": 3})
    assert result.unconverted == []
    assert len(result.state_dict) + len(result.dropped) == len(shapes) == 722
    dropped_kinds = {reason for reason in result.dropped.values()}
    assert len(dropped_kinds) == 8  # queues, rank_output, pooler, dead LN, dead gates, 3 buffers
    cfg = get_fiber_cfg()
    cfg.merge_from_file(f"{CONFIGS}/coarse_grained/pretrain_mlm_itm_itc.yaml")
    with torch.device("meta"):
        model = FiberPretrainModel(cfg)
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = {k: tuple(v.shape) for k, v in result.state_dict.items()}
    assert {k: model_shapes.get(k) for k in converted} == converted
    assert sorted(set(model_shapes) - set(converted)) == [
        f"queue.{name}" for name in ("filled", "image_feats", "image_ids", "pointer", "text_feats")
    ]
    parameters = sum(p.numel() for p in model.parameters())
    unused = dump["total_params"] - parameters
    assert unused == 1537 + 590_592 + 6 * 2 * 768 + 6  # rank_output, pooler, dead LNs, gates


def _detector_for_golden(config: dict):
    """A GroundingDetector whose trunk has the golden small coarse model's sizes."""
    cfg = get_fiber_cfg()
    cfg.merge_from_file(f"{CONFIGS}/Base-FIBER-Grounding.yaml")
    cfg.MODEL.DEVICE = "cpu"
    swin, text = cfg.MODEL.FIBER.SWIN, cfg.MODEL.FIBER.TEXT
    swin.EMBED_DIM, swin.NUM_HEADS = config["swin"]["embed_dim"], config["swin"]["num_heads"]
    swin.WINDOW_SIZE = config["swin"]["window_size"]
    text.HIDDEN_SIZE, text.NUM_HEADS = config["text"]["hidden_size"], config["text"]["num_heads"]
    text.INTERMEDIATE_SIZE = config["text"]["intermediate_size"]
    text.VOCAB_SIZE = config["text"]["vocab_size"]
    text.MAX_POSITION_EMBEDDINGS = config["text"]["max_position_embeddings"]
    cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.DYHEAD.NUM_BLOCKS, cfg.MODEL.DYHEAD.GN_GROUPS = 32, 1, 4
    return build_model(cfg)


def _load_reporting(model, path: str):
    """Load with FiberCheckpointer; return detectron2's incompatible-keys report."""
    checkpointer = FiberCheckpointer(model)
    reports = []
    checkpointer._log_incompatible_keys = reports.append
    checkpointer.load(path)
    return reports[0]


def _converted_for_detector(state_dict: dict, tmp_path) -> tuple[str, dict[str, str]]:
    """The explicit, offline hand-off: convert_coarse_for_detector, written as detector weights;
    returns the file and the dropped keys with their reasons."""
    result = convert_coarse_for_detector(state_dict)
    assert result.unconverted == []
    path = str(tmp_path / "detector_init.pth")
    save_converted_checkpoint(result.state_dict, path)
    return path, result.dropped


def _assert_trunk_arrived(detector, coarse_trunk: dict[str, torch.Tensor], report, dropped):
    detector_state = detector.state_dict()
    coarse_only = ("final_norm.", "i2t.query_norm.")
    for key, tensor in coarse_trunk.items():
        if any(part in key for part in coarse_only):
            assert "detector" in dropped[key]
        else:
            assert torch.equal(detector_state[f"backbone.{key}"], tensor), key
    assert report.incorrect_shapes == [] and report.unexpected_keys == []
    heads = [k for k, reason in dropped.items() if "coarse-stage head" in reason]
    assert heads and all(k.startswith(COARSE_ONLY_HEADS) for k in heads)
    missing_trunk = [k for k in report.missing_keys if k.startswith("backbone.trunk.")]
    assert all(".stage_norms." in k for k in missing_trunk), missing_trunk


def test_official_coarse_checkpoint_initialises_the_detector(reference_dir, tmp_path):
    golden = torch.load(reference_dir / "golden" / "fiber_small_coarse.pt", weights_only=True)
    path, dropped = _converted_for_detector(golden["state_dict"], tmp_path)
    detector = _detector_for_golden(golden["config"])
    report = _load_reporting(detector, path)
    trunk = {
        k: v
        for k, v in convert_coarse(golden["state_dict"]).state_dict.items()
        if k.startswith("trunk.")
    }
    _assert_trunk_arrived(detector, trunk, report, dropped)
    reasons = [reason for reason in dropped.values() if "detector" in reason]
    assert len(reasons) == 25 + 2 + 12  # heads and temp, final norm, query norms


def test_fiber_det_coarse_checkpoint_initialises_the_detector(reference_dir, tmp_path):
    golden = torch.load(reference_dir / "golden" / "fiber_small_coarse.pt", weights_only=True)
    coarse = build_small_coarse_model(golden["config"])
    DetectionCheckpointer(coarse, save_dir=str(tmp_path)).save("coarse")
    detector = _detector_for_golden(golden["config"])
    with pytest.raises(ValueError, match="--format coarse-trunk"):
        FiberCheckpointer(detector).load(str(tmp_path / "coarse.pth"))
    saved = torch.load(tmp_path / "coarse.pth", weights_only=True)["model"]
    path, dropped = _converted_for_detector(saved, tmp_path)
    report = _load_reporting(detector, path)
    trunk = {k: v for k, v in coarse.state_dict().items() if k.startswith("trunk.")}
    _assert_trunk_arrived(detector, trunk, report, dropped)
    reloaded = build_small_coarse_model(golden["config"])
    _load_reporting(reloaded, str(tmp_path / "coarse.pth"))
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in coarse.state_dict().items())


def test_official_checkpoint_as_weights_names_the_convert_command(reference_dir, tmp_path):
    golden = torch.load(reference_dir / "golden" / "fiber_small_coarse.pt", weights_only=True)
    path = tmp_path / "fiber_coarse.ckpt"
    torch.save({"model": golden["state_dict"]}, path)
    detector = _detector_for_golden(golden["config"])
    command = f"python tools/convert_checkpoint.py {path} converted.pth --format coarse"
    with pytest.raises(ValueError, match=re.escape(command)):
        FiberCheckpointer(detector).load(str(path))
