"""GroundingPredictor: weights from cfg.MODEL.WEIGHTS, class names or captions, batching."""

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.structures import Boxes, pairwise_iou

from fiber_det.predictor import GroundingPredictor
from tests.modeling.grounding.tiny_detector import NAMES, SCENES, draw_scene, trained_tiny_detector


@pytest.fixture(scope="module")
def predictor(tiny_tokenizer, tmp_path_factory):
    model, cfg, _ = trained_tiny_detector(tiny_tokenizer)
    out_dir = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, save_dir=str(out_dir)).save("tiny")
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(out_dir / "tiny.pth")
    return GroundingPredictor(cfg, tokenizer=tiny_tokenizer)


def _best_iou(result, label: str, box) -> float:
    keep = torch.tensor([name == label for name in result.labels], dtype=torch.bool)
    target = Boxes(torch.tensor([box], dtype=torch.float32))
    ious = pairwise_iou(target, result.instances.pred_boxes[keep])
    return float(ious.max()) if ious.numel() else 0.0


def test_class_names_give_labelled_boxes(predictor):
    for scene in SCENES:
        result = predictor(draw_scene(128, 128, scene), names=NAMES)
        assert len(result.labels) == len(result.instances)
        assert result.labels == [NAMES[c] for c in result.instances.pred_classes.tolist()]
        for color, box in scene:
            assert _best_iou(result, color, box) >= 0.5


def test_batched_call_equals_one_at_a_time(predictor):
    images = [draw_scene(128, 128, SCENES[0]), draw_scene(128, 160, SCENES[1])]
    images.append(draw_scene(128, 128, SCENES[1]))
    batched = predictor(images, names=NAMES)
    for image, together in zip(images, batched):
        alone = predictor(image, names=NAMES)
        assert alone.labels == together.labels
        torch.testing.assert_close(
            alone.instances.scores, together.instances.scores, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            alone.instances.pred_boxes.tensor,
            together.instances.pred_boxes.tensor,
            atol=1e-3,
            rtol=0,
        )


def test_caption_with_phrases(predictor):
    caption = "red. green. blue. yellow"
    spans = [[(0, 3)], [(18, 24)]]
    result = predictor(draw_scene(128, 128, SCENES[1]), caption=caption, phrase_spans=spans)
    assert set(result.labels) <= {"red", "yellow"}
    assert _best_iou(result, "yellow", SCENES[1][1][1]) >= 0.5
    whole = predictor(draw_scene(128, 128, SCENES[1]), caption=caption)
    assert set(whole.labels) <= {caption}


def test_bad_requests_are_rejected(predictor):
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="exactly one"):
        predictor(image, names=NAMES, caption="red")
    with pytest.raises(ValueError, match="HxWx3"):
        predictor(np.zeros((32, 32), dtype=np.uint8), names=NAMES)
