"""GroundingDetector end to end on a tiny trunk: training, overfitting, inference contracts."""

import contextlib
import io

import pytest
import torch
from detectron2.structures import Boxes, Instances, pairwise_iou
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fiber_det.data.prompts import build_detection_prompts
from tests.modeling.grounding.tiny_detector import (
    NAMES,
    SCENES,
    build_tiny_detector,
    draw_scene,
    tiny_grounding_cfg,
    trained_tiny_detector,
    training_input,
)


@pytest.fixture(scope="module")
def trained(tiny_tokenizer):
    return trained_tiny_detector(tiny_tokenizer)


def _test_input(image, prompts, **extra) -> dict:
    return {"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "prompts": prompts, **extra}


def _run(model, inputs):
    with torch.no_grad():
        return [out["instances"] for out in model(inputs)]


def _assert_same_instances(a: Instances, b: Instances, atol: float = 1e-4):
    order_a, order_b = a.scores.argsort(descending=True), b.scores.argsort(descending=True)
    assert len(a) == len(b)
    torch.testing.assert_close(a.scores[order_a], b.scores[order_b], atol=atol, rtol=0)
    torch.testing.assert_close(
        a.pred_boxes.tensor[order_a], b.pred_boxes.tensor[order_b], atol=atol * 100, rtol=0
    )
    assert torch.equal(a.pred_classes[order_a], b.pred_classes[order_b])


def test_overfits_two_images_and_recovers_every_box(trained, tiny_tokenizer):
    model, _, history = trained
    assert history[0] / (sum(history[-5:]) / 5) >= 10  # token + GIoU loss falls >= 10x
    prompts = build_detection_prompts(NAMES, tiny_tokenizer)
    outputs = _run(model, [_test_input(draw_scene(128, 128, s), prompts) for s in SCENES])
    for scene, instances in zip(SCENES, outputs):
        assert instances.image_size == (128, 128)
        for color, box in scene:
            same_class = instances[instances.pred_classes == NAMES.index(color)]
            iou = pairwise_iou(
                Boxes(torch.tensor([box], dtype=torch.float32)), same_class.pred_boxes
            )
            assert iou.numel() and iou.max() >= 0.5, (color, box, same_class)


def test_zero_box_images_train_without_nan(tiny_tokenizer):
    model, _ = build_tiny_detector(tiny_tokenizer)
    prompt = build_detection_prompts(NAMES, tiny_tokenizer)[0]
    empty = training_input(draw_scene(64, 96, []), [], prompt, NAMES)
    full = training_input(draw_scene(64, 96, SCENES[0][:1]), SCENES[0][:1], prompt, NAMES)
    for batch in ([empty], [empty, full]):
        model.zero_grad()
        losses = model.train()(batch)
        assert set(losses) == {"loss_reg", "loss_centerness", "loss_dot_product_token"}
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_needs_exactly_one_prompt(tiny_tokenizer):
    model, _ = build_tiny_detector(tiny_tokenizer)
    prompt = build_detection_prompts(NAMES, tiny_tokenizer)[0]
    sample = training_input(draw_scene(64, 64, []), [], prompt, NAMES)
    sample["prompts"] = [prompt, prompt]
    with pytest.raises(ValueError, match="exactly one prompt"):
        model.train()([sample])
    with pytest.raises(ValueError, match="lacks \\['instances'\\]"):
        model.train()([{"image": sample["image"], "prompts": [prompt]}])
    with pytest.raises(ValueError, match="lacks prompts"):
        model.eval()([{"image": sample["image"], "prompts": []}])


def test_a_negative_prompts_per_pass_is_refused(tiny_tokenizer):
    from detectron2.modeling import build_model

    cfg = tiny_grounding_cfg(len(tiny_tokenizer))
    cfg.MODEL.GROUNDING.PROMPTS_PER_PASS = -1
    with pytest.raises(ValueError, match="PROMPTS_PER_PASS=-1"):
        build_model(cfg)


def test_outputs_are_in_original_image_coordinates(trained, tiny_tokenizer):
    model = trained[0]
    prompts = build_detection_prompts(NAMES, tiny_tokenizer)
    image = draw_scene(128, 128, SCENES[0])
    plain = _run(model, [_test_input(image, prompts)])[0]
    scaled = _run(model, [_test_input(image, prompts, height=256, width=192)])[0]
    assert scaled.image_size == (256, 192) and len(plain) > 0
    expected = plain.pred_boxes.tensor * torch.tensor([1.5, 2.0, 1.5, 2.0])
    torch.testing.assert_close(scaled.pred_boxes.tensor, expected)


def test_batch_invariance_and_text_padding(trained, tiny_tokenizer):
    model = trained[0]
    prompts = build_detection_prompts(NAMES, tiny_tokenizer)
    longer = build_detection_prompts(NAMES + ["traffic light", "remote control"], tiny_tokenizer)
    images = [draw_scene(128, 128, scene) for scene in SCENES + SCENES[:1]]
    alone = _run(model, [_test_input(images[1], prompts)])[0]
    batched = _run(model, [_test_input(im, prompts) for im in images])[1]
    padded = _run(model, [_test_input(images[0], longer), _test_input(images[1], prompts)])[1]
    assert len(alone) > 0
    _assert_same_instances(alone, batched)
    _assert_same_instances(alone, padded)


def test_chunked_vocabulary_matches_each_chunk_alone(trained, tiny_tokenizer):
    model = trained[0]
    names = NAMES + [f"thing {i}" for i in range(296)]
    prompts = build_detection_prompts(names, tiny_tokenizer, max_len=256)
    assert len(prompts) >= 3 and sum(len(p["labels"]) for p in prompts) == 300
    image = draw_scene(128, 128, SCENES[1])
    merged = _run(model, [_test_input(image, prompts)])[0]
    assert set(merged.pred_classes.tolist()) >= {NAMES.index(c) for c, _ in SCENES[1]}
    for prompt in prompts:
        alone = _run(model, [_test_input(image, [prompt])])[0]
        in_chunk = torch.isin(merged.pred_classes, prompt["labels"])
        _assert_same_instances(merged[in_chunk], alone)
    assert model.prompts_per_pass == 1  # the default: one chunk per fused pass
    try:
        for per_pass in (2, 0):  # two chunks per pass, all in one: the same detections
            model.prompts_per_pass = per_pass
            _assert_same_instances(merged, _run(model, [_test_input(image, prompts)])[0])
    finally:
        model.prompts_per_pass = 1


def _average_precision(detections: list[Instances], scenes) -> float:
    """COCO AP (x100) of detections against the scene boxes, through pycocotools."""
    images, annotations, results = [], [], []
    for image_id, (instances, (height, width, objects)) in enumerate(zip(detections, scenes)):
        images.append({"id": image_id, "height": height, "width": width})
        for color, (x1, y1, x2, y2) in objects:
            box = [x1, y1, x2 - x1, y2 - y1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "category_id": NAMES.index(color),
                    "iscrowd": 0,
                }
            )
        for box, score, label in zip(
            instances.pred_boxes.tensor.tolist(),
            instances.scores.tolist(),
            instances.pred_classes.tolist(),
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": label,
                    "score": score,
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in enumerate(NAMES)],
        }
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return 100 * evaluator.stats[0]


def test_ap_batch_one_equals_batch_eight_of_mixed_sizes(trained, tiny_tokenizer, capsys):
    model = trained[0]
    prompts = build_detection_prompts(NAMES, tiny_tokenizer)
    scenes = [
        (h, w, s) for s in SCENES for h, w in ((128, 128), (128, 160), (160, 128), (160, 160))
    ]
    inputs = [_test_input(draw_scene(h, w, s), prompts) for h, w, s in scenes]
    one_by_one = [_run(model, [x])[0] for x in inputs]
    batch_of_eight = _run(model, inputs)
    ap_one, ap_eight = (
        _average_precision(one_by_one, scenes),
        _average_precision(batch_of_eight, scenes),
    )
    with capsys.disabled():
        print(f"\nAP batch 1: {ap_one:.2f}  AP batch 8 (mixed sizes): {ap_eight:.2f}")
    assert ap_one > 50
    assert abs(ap_one - ap_eight) <= 0.5
