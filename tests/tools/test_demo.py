"""tools/demo.py: prompt parsing, input listing, and PNG + JSON that match the model's output."""

import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch

from fiber_det.predictor import GroundingPredictor
from tests.conftest import REPO_ROOT
from tests.modeling.grounding.tiny_detector import SCENES, build_tiny_detector, draw_scene


def _demo():
    spec = importlib.util.spec_from_file_location("demo", REPO_ROOT / "tools" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_prompt_class_list_and_sentence():
    demo = _demo()
    assert demo.parse_prompt("cat. remote control.") == (["cat", "remote control"], None, None)
    assert demo.parse_prompt(" a red square ") == (None, "a red square", None)
    sentence = "a red square left of a blue circle"
    _, caption, spans = demo.parse_prompt(sentence, ["red square", "blue circle"])
    assert caption == sentence and spans == [[(2, 12)], [(23, 34)]]
    with pytest.raises(ValueError, match="'green star' does not occur"):
        demo.parse_prompt(sentence, ["green star"])
    with pytest.raises(ValueError, match="--prompt is empty"):
        demo.parse_prompt("  ")


def test_list_images_names_missing_paths(tmp_path):
    demo = _demo()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in demo.list_images([str(tmp_path)])] == ["a.jpg", "b.png"]
    with pytest.raises(FileNotFoundError, match="nope.jpg: no such file"):
        demo.list_images([str(tmp_path / "nope.jpg")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no"):
        demo.list_images([str(empty)])


@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory, tiny_tokenizer_dir, tiny_tokenizer):
    """A tiny random detector saved as weights + its config file, and two scene images."""
    tmp = tmp_path_factory.mktemp("demo")
    model, cfg = build_tiny_detector(tiny_tokenizer)
    torch.save({"model": model.state_dict()}, tmp / "model.pth")
    cfg.INPUT.TEXT.TOKENIZER = str(tiny_tokenizer_dir)
    # a random head scores below the default 0.05: keep every candidate so boxes are drawn
    cfg.MODEL.GROUNDING.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    (tmp / "tiny.yaml").write_text(cfg.dump())
    images = tmp / "images"
    images.mkdir()
    for index, scene in enumerate(SCENES):
        cv2.imwrite(str(images / f"scene{index}.png"), draw_scene(96 + 32 * index, 128, scene))
    return tmp, cfg


def test_demo_writes_png_and_json_matching_the_model(demo_setup):
    tmp, cfg = demo_setup
    out = tmp / "out"
    argv = ["--config-file", str(tmp / "tiny.yaml"), "--weights", str(tmp / "model.pth")]
    argv += ["--input", str(tmp / "images"), "--prompt", "red. blue.", "--output", str(out)]
    document = _demo().main([*argv, "--score-thresh", "0"])
    assert json.loads((out / "predictions.json").read_text()) == document
    assert document["labels"] == ["red", "blue"]
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(tmp / "model.pth")
    predictor = GroundingPredictor(cfg)
    for index, entry in enumerate(document["images"]):
        image = cv2.imread(str(tmp / "images" / f"scene{index}.png"))
        expected = predictor(image, names=["red", "blue"])
        order = expected.instances.scores.argsort(descending=True)
        boxes = torch.tensor([d["box"] for d in entry["detections"]])
        assert len(boxes) == 5
        torch.testing.assert_close(
            boxes, expected.instances.pred_boxes.tensor[order], atol=0.01, rtol=0
        )
        assert [d["label"] for d in entry["detections"]] == [expected.labels[i] for i in order]
        scores = [d["score"] for d in entry["detections"]]
        assert scores == pytest.approx(expected.instances.scores[order].tolist(), abs=1e-4)
        picture = cv2.imread(str(out / entry["output"]))
        assert picture.shape == image.shape and entry["height"] == image.shape[0]
        assert np.abs(picture.astype(int) - image).sum() > 0  # boxes were drawn


def test_demo_fast_mode_writes_the_cache_and_reloads_it(demo_setup):
    tmp, cfg = demo_setup
    cache = tmp / "red_blue.safetensors"
    argv = ["--config-file", str(tmp / "tiny.yaml"), "--weights", str(tmp / "model.pth")]
    argv += ["--input", str(tmp / "images"), "--prompt", "red. blue.", "--score-thresh", "0"]
    argv += ["--vocabulary-cache", str(cache)]
    first = _demo().main([*argv, "--output", str(tmp / "fast1")])
    assert cache.is_file()
    second = _demo().main([*argv, "--output", str(tmp / "fast2")])
    assert [e["detections"] for e in first["images"]] == [e["detections"] for e in second["images"]]
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(tmp / "model.pth")
    predictor = GroundingPredictor(cfg)
    image = cv2.imread(str(tmp / "images" / "scene0.png"))
    expected = predictor(image, vocabulary=predictor.vocabulary(["red", "blue"]))
    assert len(first["images"][0]["detections"]) == len(expected.instances) == 5
    assert max(d["score"] for d in first["images"][0]["detections"]) == pytest.approx(
        float(expected.instances.scores.max()), abs=1e-4
    )
    with pytest.raises(SystemExit, match="different class names"):
        _demo().main([*argv[:-4], "--prompt", "red.", *argv[-2:], "--output", str(tmp / "f3")])


def test_demo_takes_the_prompt_and_images_from_a_dataset_json(demo_setup):
    tmp, _ = demo_setup
    categories = [{"id": 7, "name": "blue"}, {"id": 2, "name": "red"}]
    content = {"images": [], "annotations": [], "categories": categories}
    (tmp / "classes.json").write_text(json.dumps(content))
    argv = ["--config-file", str(tmp / "tiny.yaml"), "--weights", str(tmp / "model.pth")]
    argv += ["--dataset", f"demo_set={tmp / 'classes.json'}:{tmp / 'images'}"]
    document = _demo().main([*argv, "--output", str(tmp / "d"), "--score-thresh", "0"])
    assert document["labels"] == ["red", "blue"] and document["prompt"] == "red. blue"
    assert len(document["images"]) == len(SCENES)
    with pytest.raises(SystemExit):
        _demo().main([*argv, "--prompt", "red.", "--output", str(tmp / "e")])


def test_demo_reports_missing_weights(demo_setup):
    tmp, _ = demo_setup
    argv = ["--config-file", str(tmp / "tiny.yaml"), "--weights", str(tmp / "missing.pth")]
    argv += ["--input", str(tmp / "images"), "--prompt", "red.", "--output", str(tmp / "x")]
    with pytest.raises(SystemExit, match="missing.pth: no such file"):
        _demo().main(argv)


def test_demo_runs_a_saved_model_directory_like_its_config_and_weights(demo_setup):
    tmp, cfg = demo_setup
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(tmp / "model.pth")
    GroundingPredictor(cfg).save_pretrained(tmp / "saved")
    common = ["--input", str(tmp / "images"), "--prompt", "red. blue.", "--score-thresh", "0"]
    from_dir = _demo().main(["--model", str(tmp / "saved"), "--output", str(tmp / "a"), *common])
    argv = ["--config-file", str(tmp / "tiny.yaml"), "--weights", str(tmp / "model.pth")]
    from_files = _demo().main([*argv, "--output", str(tmp / "b"), *common])
    assert [i["detections"] for i in from_dir["images"]] == [
        i["detections"] for i in from_files["images"]
    ]
    assert len(from_dir["images"][0]["detections"]) == 5


def test_demo_refuses_to_run_without_weights_unless_asked(demo_setup, caplog):
    tmp, _ = demo_setup
    argv = ["--config-file", str(tmp / "tiny.yaml"), "--input", str(tmp / "images")]
    argv += ["--prompt", "red.", "--output", str(tmp / "random")]
    with pytest.raises(SystemExit, match="no weights: give --weights"):
        _demo().main(argv)
    document = _demo().main([*argv, "--random-weights"])
    assert len(document["images"]) == 2 and "RANDOM WEIGHTS" in caplog.text
