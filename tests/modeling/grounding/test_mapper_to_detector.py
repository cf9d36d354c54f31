"""GroundingDatasetMapper output feeds GroundingDetector unchanged (the shared data contract)."""

import cv2
import torch
from detectron2.structures import Boxes, BoxMode, pairwise_iou

from fiber_det.data.grounding_mapper import GroundingDatasetMapper
from tests.modeling.grounding.tiny_detector import (
    SCENES,
    build_tiny_detector,
    draw_scene,
    trained_tiny_detector,
)

CAPTION = "red. green. blue. yellow"
SPANS = {"red": (0, 3), "green": (5, 10), "blue": (12, 16), "yellow": (18, 24)}


def _records(tmp_path) -> list[dict]:
    records = []
    for image_id, scene in enumerate(SCENES):
        path = tmp_path / f"scene{image_id}.png"
        cv2.imwrite(str(path), draw_scene(128, 128, scene))
        annotations = [
            {"bbox": list(box), "bbox_mode": BoxMode.XYXY_ABS, "tokens_positive": [SPANS[color]]}
            for color, box in scene
        ]
        records.append(
            {
                "file_name": str(path),
                "height": 128,
                "width": 128,
                "image_id": image_id,
                "caption": CAPTION,
                "annotations": annotations,
            }
        )
    return records


def _mapper(is_train: bool, tokenizer_dir) -> GroundingDatasetMapper:
    return GroundingDatasetMapper(
        is_train, augmentations=[], image_format="BGR", tokenizer_name=str(tokenizer_dir)
    )


def test_mapped_training_batch_gives_finite_losses(tmp_path, tiny_tokenizer, tiny_tokenizer_dir):
    batch = [_mapper(True, tiny_tokenizer_dir)(r) for r in _records(tmp_path)]
    model, _ = build_tiny_detector(tiny_tokenizer)
    losses = model.train()(batch)
    assert set(losses) == {"loss_reg", "loss_centerness", "loss_dot_product_token"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_mapped_grounding_inputs_find_their_phrases(tmp_path, tiny_tokenizer, tiny_tokenizer_dir):
    model = trained_tiny_detector(tiny_tokenizer)[0]
    records = _records(tmp_path)
    batch = [_mapper(False, tiny_tokenizer_dir)(r) for r in records]
    with torch.no_grad():
        outputs = model(batch)
    for record, output in zip(records, outputs):
        instances = output["instances"]
        for phrase, annotation in enumerate(record["annotations"]):
            hits = instances[instances.pred_classes == phrase]
            box = torch.tensor([annotation["bbox"]], dtype=torch.float32)
            assert len(hits) and pairwise_iou(Boxes(box), hits.pred_boxes).max() >= 0.5
