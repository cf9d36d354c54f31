"""Scoring a saved predictions file: hand-computed COCO AP and Flickr recall, and the CLI."""

import json

import pytest

from fiber_det.config import get_fiber_cfg
from fiber_det.data.datasets.detection import register_detection_dataset
from fiber_det.data.datasets.grounding import register_grounding_dataset
from fiber_det.evaluation.predictions import read_predictions, score_predictions
from tests.data.formats import flickr_json, refexp_json, write_image, write_json
from tests.tools.tool_module import load_tool

# categories 5 "tree" and 9 "bush" (non-contiguous ids); image 1: two trees, image 2: one bush
CATEGORIES = [{"id": 5, "name": "tree"}, {"id": 9, "name": "bush"}]
GT = [(1, 5, [0, 0, 20, 20]), (1, 5, [40, 10, 20, 20]), (2, 9, [5, 5, 30, 10])]
# tree: hit (0.9), a false positive far from both trees (0.8), hit (0.7); bush: one hit
PREDICTIONS = [
    {"image_id": 1, "category_id": 5, "bbox": [0, 0, 20, 20], "score": 0.9},
    {"image_id": 1, "category_id": 5, "bbox": [0, 30, 10, 10], "score": 0.8},
    {"image_id": 1, "category_id": 5, "bbox": [40, 10, 20, 20], "score": 0.7},
    {"image_id": 2, "category_id": 9, "bbox": [5, 5, 30, 10], "score": 0.6},
]
# tree: precision 1 up to recall 0.5 (51 of COCO's 101 recall points), then max(2/3) for the
# other 50 points, at every IoU threshold; bush: 100
TREE_AP = 100 * (51 * 1 + 50 * 2 / 3) / 101


def _register_coco(tmp_path, name):
    images = []
    for image_id in (1, 2):
        write_image(tmp_path / "img" / f"{image_id}.png", 64, 48, seed=image_id)
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 48, "width": 64})
    annotations = [
        {"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3]}
        | {"iscrowd": 0}
        for i, (im, c, b) in enumerate(GT)
    ]
    content = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    json_file = write_json(tmp_path / "gt.json", content)
    register_detection_dataset(name, str(json_file), str(tmp_path / "img"))
    return json_file


def test_coco_ap_of_a_hand_made_case(tmp_path):
    _register_coco(tmp_path, "test_predictions_coco")
    results = score_predictions(get_fiber_cfg(), PREDICTIONS, "test_predictions_coco")
    bbox = results["bbox"]
    assert bbox["AP-tree"] == pytest.approx(TREE_AP, abs=1e-3)
    assert bbox["AP-bush"] == pytest.approx(100.0)
    assert bbox["AP"] == pytest.approx((TREE_AP + 100) / 2, abs=1e-3)
    assert bbox["AP50"] == pytest.approx((TREE_AP + 100) / 2, abs=1e-3)


def test_unknown_category_and_image_ids_are_named(tmp_path):
    _register_coco(tmp_path, "test_predictions_ids")
    bad = [dict(PREDICTIONS[0], category_id=7)]
    with pytest.raises(ValueError, match=r"category_id\(s\) \[7\] are not categories"):
        score_predictions(get_fiber_cfg(), bad, "test_predictions_ids")
    with pytest.raises(ValueError, match=r"image_id\(s\) \[42\] are not images"):
        score_predictions(
            get_fiber_cfg(), [dict(PREDICTIONS[0], image_id=42)], "test_predictions_ids"
        )


def test_flickr_recall_of_a_hand_made_case(tmp_path):
    # phrases: "A man" (2 boxes), "a red shirt", "a small dog" (tests/data/formats.py)
    register_grounding_dataset(
        "test_predictions_flickr", str(flickr_json(tmp_path)), str(tmp_path / "images")
    )
    predictions = [
        {"image_id": 0, "phrase_id": 0, "bbox": [50, 10, 20, 40], "score": 0.9},  # 2nd man: R@1
        {"image_id": 0, "phrase_id": 1, "bbox": [60, 50, 30, 20], "score": 0.9},  # wrong box
        {"image_id": 0, "phrase_id": 1, "bbox": [12, 20, 20, 20], "score": 0.5},  # shirt: R@5
    ]  # the dog has no prediction: a miss at every k
    metrics = score_predictions(get_fiber_cfg(), predictions, "test_predictions_flickr")
    recall = metrics["flickr_any_box"]
    assert recall["R@1"] == pytest.approx(100 / 3) and recall["R@5"] == pytest.approx(200 / 3)
    assert recall["num_phrases"] == 3


def test_refexp_precision_of_a_hand_made_case(tmp_path):
    json_file = refexp_json(tmp_path, [[10, 10, 20, 20], [50, 40, 30, 30]])
    register_grounding_dataset(
        "test_predictions_refexp", str(json_file), str(tmp_path / "train2014"), "refexp"
    )
    predictions = [
        {"image_id": 0, "bbox": [10, 10, 20, 20], "score": 0.9},  # hit at k = 1
        {"image_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # misses at every k
    ]
    metrics = score_predictions(get_fiber_cfg(), predictions, "test_predictions_refexp")
    assert metrics["refexp"]["P@1"] == pytest.approx(50.0)
    assert metrics["refexp"]["num_expressions"] == 2


def test_evaluate_tool_scores_a_file_against_a_dataset_flag(tmp_path, capsys):
    json_file = _register_coco(tmp_path, "test_predictions_unused")
    (tmp_path / "preds.json").write_text(json.dumps(PREDICTIONS))
    argv = ["--predictions", str(tmp_path / "preds.json")]
    argv += ["--dataset", f"test_predictions_cli={json_file}:{tmp_path / 'img'}"]
    results = load_tool("evaluate").main([*argv, "--output", str(tmp_path / "out")])
    assert results["bbox"]["AP"] == pytest.approx((TREE_AP + 100) / 2, abs=1e-3)
    out = capsys.readouterr().out  # pycocotools' log, then the metrics as json
    printed = json.loads(out[out.index("\n{\n") + 1 :])
    assert printed["bbox"]["AP-tree"] == pytest.approx(TREE_AP, abs=1e-3)
    assert (tmp_path / "out" / "coco_instances_results.json").is_file()
    (tmp_path / "bad.json").write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="bad.json: expected a list of results"):
        read_predictions(str(tmp_path / "bad.json"))
