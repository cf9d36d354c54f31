"""One test per class of bad input of issue 21: each error names its culprit (file, record,
field, key or argument), nothing is dropped silently, and pickled code never runs."""

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from fiber_det.data.datasets.catalog import get_tagged_dataset_dicts
from fiber_det.data.datasets.detection import load_detection_json, register_detection_dataset
from fiber_det.data.datasets.grounding import load_grounding_json, register_grounding_dataset
from fiber_det.engine import load_weights
from fiber_det.evaluation.flickr import FlickrRecallEvaluator
from fiber_det.predictor import GroundingPredictor
from tests.data.formats import coco_json, flickr_json
from tests.data.test_grounding_mapper import _mapper
from tests.modeling.grounding.tiny_detector import build_tiny_detector, draw_scene
from tests.pickle_payload import RunsCode
from tests.tools.test_demo import _demo


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer, tiny_tokenizer_dir):
    """(tiny detector, its config naming the tiny tokenizer)."""
    model, cfg = build_tiny_detector(tiny_tokenizer)
    cfg.INPUT.TEXT.TOKENIZER = str(tiny_tokenizer_dir)
    return model, cfg


@pytest.fixture(scope="module")
def predictor(tiny, tiny_tokenizer):
    model, cfg = tiny
    return GroundingPredictor(cfg, tokenizer=tiny_tokenizer, model=model)


@pytest.fixture
def pickled(tiny, tmp_path):
    """(marker path, {suffix: weights file whose unpickling would create the marker})."""
    model, _ = tiny
    marker = tmp_path / "code_ran"
    payload = {"model": {**model.state_dict(), "evil": RunsCode(marker)}}
    files = {}
    for suffix in (".pkl", ".pth"):
        files[suffix] = tmp_path / f"weights{suffix}"
        torch.save(payload, files[suffix])
    return marker, files


PICKLE_MESSAGES = {".pkl": "pickle files can run arbitrary code", ".pth": "holds objects other"}


def test_pickled_code_never_runs_in_training_or_evaluation(tiny, pickled, tmp_path):
    """train_net / train_coarse (MODEL.WEIGHTS, --eval-only, --resume) load through
    engine.load_weights -> FiberCheckpointer."""
    model, cfg = tiny
    marker, files = pickled
    for suffix, path in files.items():
        run_cfg = cfg.clone()
        run_cfg.MODEL.WEIGHTS, run_cfg.OUTPUT_DIR = str(path), str(tmp_path / "out")
        with pytest.raises(ValueError, match=rf"weights\{suffix}: {PICKLE_MESSAGES[suffix]}"):
            load_weights(run_cfg, model, resume=False)
    assert not marker.exists()


def test_pickled_code_never_runs_in_the_predictor_demo_or_serve(
    tiny, pickled, tiny_tokenizer, tmp_path
):
    """tools/serve.py builds its predictor through GroundingPredictor.from_pretrained, whose
    weights are model.safetensors: a pickle renamed so is not a safetensors file."""
    _, cfg = tiny
    marker, files = pickled
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    for suffix, path in files.items():
        run_cfg = cfg.clone()
        run_cfg.MODEL.WEIGHTS = str(path)
        with pytest.raises(ValueError, match=rf"weights\{suffix}: {PICKLE_MESSAGES[suffix]}"):
            GroundingPredictor(run_cfg, tokenizer=tiny_tokenizer)
        (tmp_path / "scene.png").write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3)))[1])
        argv = ["--config-file", str(tmp_path / "tiny.yaml"), "--weights", str(path)]
        argv += ["--input", str(tmp_path / "scene.png"), "--prompt", "red."]
        with pytest.raises(SystemExit, match=rf"weights\{suffix}: {PICKLE_MESSAGES[suffix]}"):
            _demo().main(argv + ["--output", str(tmp_path / "out")])
    saved = tmp_path / "saved"
    GroundingPredictor(cfg, tokenizer=tiny_tokenizer, model=tiny[0]).save_pretrained(saved)
    (saved / "model.safetensors").write_bytes(files[".pkl"].read_bytes())
    with pytest.raises(ValueError, match=r"model\.safetensors: not a complete safetensors file"):
        GroundingPredictor.from_pretrained(str(saved))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"not a checkpoint at all\n", "not a readable PyTorch checkpoint"),
        ("truncated", "not a readable PyTorch checkpoint"),
        ("bare tensor", r"holds no state dict"),
    ],
)
def test_unreadable_weights_are_named_in_training(tiny, tmp_path, content, message):
    model, cfg = tiny
    path = tmp_path / "weights.pth"
    if content == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:500])
    elif content == "bare tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(content)
    run_cfg = cfg.clone()
    run_cfg.MODEL.WEIGHTS, run_cfg.OUTPUT_DIR = str(path), str(tmp_path / "out")
    with pytest.raises(ValueError, match=rf"weights\.pth: {message}"):
        load_weights(run_cfg, model, resume=False)


def test_training_counts_boxes_dropped_past_the_token_limit(tmp_path, tiny_tokenizer_dir, caplog):
    """The Flickr sentence has 4 boxes; 12 tokens cut "a red shirt" and "a small dog" (2 boxes
    dropped, logged); 3 tokens cut every phrase: the 5th image (20 boxes seen) is an error."""
    (record,) = load_grounding_json(
        str(flickr_json(tmp_path)), str(tmp_path / "images"), dataset_name="flickr_test"
    )
    with caplog.at_level(logging.WARNING):
        _mapper(tiny_tokenizer_dir, max_query_len=12)(record)
    assert "flickr_test: 2 of 4 training boxes so far dropped" in caplog.text
    assert "MAX_QUERY_LEN=12" in caplog.text
    mapper = _mapper(tiny_tokenizer_dir, max_query_len=3)
    for _ in range(4):
        assert len(mapper(record)["instances"]) == 0
    with pytest.raises(ValueError, match=r"flickr_test: 20 of 20 training boxes dropped .*=3 tok"):
        mapper(record)


def test_evaluation_logs_phrases_past_the_token_limit(tmp_path, tiny_tokenizer_dir, caplog):
    (record,) = load_grounding_json(str(flickr_json(tmp_path)), str(tmp_path / "images"))
    with caplog.at_level(logging.WARNING):
        _mapper(tiny_tokenizer_dir, is_train=False, max_query_len=12)(record)
    assert "1000.jpg.png: phrase(s) [1, 2] of the caption fall past " in caplog.text
    assert "MAX_QUERY_LEN=12" in caplog.text


def test_predictor_refuses_a_phrase_past_the_token_limit(tiny, tiny_tokenizer):
    model, cfg = tiny
    short = cfg.clone()
    short.INPUT.TEXT.MAX_QUERY_LEN = 6
    predictor = GroundingPredictor(short, tokenizer=tiny_tokenizer, model=model)
    caption = "a red square left of a blue circle"
    with pytest.raises(ValueError, match=r"phrase 1 'blue circle' falls past .*MAX_QUERY_LEN=6"):
        predictor(
            np.zeros((32, 32, 3), np.uint8), caption=caption, phrase_spans=[[(2, 12)], [(23, 34)]]
        )


@pytest.mark.parametrize(
    ("bbox", "shown"),
    [
        ([1, 2, 3], r"\[1, 2, 3\]"),
        (["1", "2", "3", "4"], r"\['1', "),
        ([1, 2, float("nan"), 4], r"\[1, 2, nan, 4\]"),
    ],
)
def test_coco_boxes_that_are_not_four_finite_numbers(tmp_path, bbox, shown):
    path = coco_json(tmp_path / "det.json", tmp_path / "img", ["cat"], [[(0, [1, 1, 5, 5])]])
    content = json.loads(path.read_text())
    content["annotations"][0]["bbox"] = bbox
    path.write_text(json.dumps(content))
    with pytest.raises(
        ValueError, match=rf"det\.json: image id 1 .*annotation 0: field 'bbox' = {shown}"
    ):
        load_detection_json(str(path), str(tmp_path / "img"), f"bad_boxes_{len(shown)}")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["cat", "(...)"], r"category 1 has the name '\(\.\.\.\)', which holds no letter"),
        (["cat", "dog", "cat_"], r"categories 0 and 2 share the name 'cat'"),
    ],
)
def test_category_names_empty_or_repeated(tmp_path, names, message):
    path = coco_json(tmp_path / "det.json", tmp_path / "img", names, [[(0, [1, 1, 5, 5])]])
    with pytest.raises(ValueError, match=rf"det\.json: {message}"):
        load_detection_json(str(path), str(tmp_path / "img"), f"bad_names_{len(names)}")


def test_training_set_without_annotations(tmp_path):
    path = coco_json(tmp_path / "det.json", tmp_path / "img", ["cat"], [[]])
    register_detection_dataset("test_no_annotations", str(path), str(tmp_path / "img"))
    with pytest.raises(ValueError, match=r"'test_no_annotations' \(.*det\.json\): no image has a"):
        get_tagged_dataset_dicts(["test_no_annotations"])


@pytest.mark.parametrize(
    ("request_args", "message"),
    [
        ({"names": "cat"}, r"got the string 'cat' \(one class per character\)"),
        ({"names": []}, "names is empty"),
    ],
)
def test_predictor_class_names(predictor, request_args, message):
    with pytest.raises((TypeError, ValueError), match=message):
        predictor(np.zeros((32, 32, 3), np.uint8), **request_args)


def test_predictor_float_image_in_unit_range(predictor):
    with pytest.raises(ValueError, match=r"got float64 .*; values in \[0, 1\]: scale them first"):
        predictor(np.random.default_rng(0).random((32, 32, 3)), names=["red"])


def test_predictor_image_of_extreme_aspect_ratio(predictor):
    with pytest.raises(ValueError, match=r"image of 10x10000 pixels: .* become 0x256"):
        predictor(np.zeros((10, 10000, 3), np.uint8), names=["red"])


def test_tokenizer_larger_than_the_vocabulary(tiny, tiny_tokenizer, tiny_tokenizer_dir):
    model, cfg = tiny
    small = cfg.clone()
    small.MODEL.FIBER.TEXT.VOCAB_SIZE = 10
    expected = rf"{tiny_tokenizer_dir} \(INPUT.TEXT.TOKENIZER\) has {len(tiny_tokenizer)} tokens"
    with pytest.raises(ValueError, match=expected + r".*MODEL.FIBER.TEXT.VOCAB_SIZE = 10"):
        GroundingPredictor(small, tokenizer=tiny_tokenizer, model=model)


@pytest.fixture
def demo_files(tiny, tmp_path):
    """(config file, weights file, folder: a good, an unreadable, a good, a 10x10000 image)."""
    model, cfg = tiny
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    folder = tmp_path / "images"
    folder.mkdir()
    scene = draw_scene(64, 64, [("red", (8, 8, 30, 30))])
    cv2.imwrite(str(folder / "a.png"), scene)
    (folder / "b.png").write_bytes(b"not a png")
    cv2.imwrite(str(folder / "c.png"), scene)
    cv2.imwrite(str(folder / "d.png"), np.zeros((10, 10000, 3), np.uint8))
    return tmp_path / "tiny.yaml", tmp_path / "model.pth", folder


def test_demo_skips_and_reports_a_bad_image_and_writes_the_rest(demo_files, tmp_path, capsys):
    config, weights, folder = demo_files
    out = tmp_path / "out"
    argv = ["--config-file", str(config), "--weights", str(weights), "--input", str(folder)]
    with pytest.raises(SystemExit, match=r"2 image\(s\) skipped .*b\.png, .*d\.png"):
        _demo().main(argv + ["--prompt", "red.", "--output", str(out)])
    assert f"skipped {folder / 'b.png'}: {folder / 'b.png'}: not a readable image" in (
        capsys.readouterr().err
    )
    document = json.loads((out / "predictions.json").read_text())
    assert [entry["output"] for entry in document["images"]] == ["000_a.png", "002_c.png"]
    assert document["skipped"][0] == {
        "file_name": str(folder / "b.png"),
        "error": f"{folder / 'b.png'}: not a readable image",
    }
    assert document["skipped"][1]["file_name"] == str(folder / "d.png")
    assert "image of 10x10000 pixels" in document["skipped"][1]["error"]
    assert (out / "000_a.png").is_file() and (out / "002_c.png").is_file()


def test_demo_output_path_that_is_a_file(demo_files, tmp_path):
    config, weights, folder = demo_files
    (tmp_path / "taken").write_text("")
    argv = ["--config-file", str(config), "--weights", str(weights), "--input", str(folder)]
    with pytest.raises(SystemExit, match=r"--output .*taken is a file, not a folder"):
        _demo().main(argv + ["--prompt", "red.", "--output", str(tmp_path / "taken")])


def test_flickr_evaluation_without_tokens_positive_eval(tmp_path):
    path = flickr_json(tmp_path)
    content = json.loads(path.read_text())
    del content["images"][0]["tokens_positive_eval"]
    path.write_text(json.dumps(content))
    register_grounding_dataset("test_flickr_no_phrases", str(path), str(tmp_path / "images"))
    evaluator = FlickrRecallEvaluator("test_flickr_no_phrases")
    instances = Instances((80, 100), pred_boxes=Boxes(torch.zeros(1, 4)))
    instances.scores, instances.pred_classes = torch.ones(1), torch.zeros(1, dtype=torch.long)
    with pytest.raises(
        ValueError,
        match=r"flickr_separateGT_val\.json: image id 0 .*'tokens_positive_eval' missing",
    ):
        evaluator.process([{"image_id": 0}], [{"instances": instances}])
    DatasetCatalog.remove("test_flickr_no_phrases")
    MetadataCatalog.remove("test_flickr_no_phrases")


def test_lvis_and_odinw_loader_errors_name_the_json(tmp_path):
    """A json without 'images' fails inside detectron2's loaders; the error names the file."""
    from fiber_det.data.datasets.builtin import register_lvis_naming_the_file

    (tmp_path / "lvis.json").write_text(json.dumps({"annotations": [], "categories": []}))
    register_lvis_naming_the_file(str(tmp_path), "test_bad_lvis", "lvis.json", "images")
    with pytest.raises(ValueError, match=r"lvis\.json is not a valid LVIS-format json: "):
        DatasetCatalog.get("test_bad_lvis")
    DatasetCatalog.remove("test_bad_lvis")
    MetadataCatalog.remove("test_bad_lvis")
    (tmp_path / "img").mkdir()
    (tmp_path / "det.json").write_text(json.dumps({"annotations": [], "categories": []}))
    with pytest.raises(ValueError, match=r"det\.json is not a valid COCO-format json: "):
        load_detection_json(str(tmp_path / "det.json"), str(tmp_path / "img"), "test_bad_odinw")
