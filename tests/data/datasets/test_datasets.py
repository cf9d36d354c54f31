"""Dataset loaders on hand-written files of each real format, and their error messages."""

import json
import logging

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from fiber_det.data.datasets.catalog import check_dataset_name, get_tagged_dataset_dicts
from fiber_det.data.datasets.detection import load_detection_json, register_detection_dataset
from fiber_det.data.datasets.grounding import load_grounding_json, register_grounding_dataset
from fiber_det.data.datasets.odinw import ODINW13_FOLDERS, load_odinw, odinw_split_files
from tests.data.formats import (
    FLICKR_CAPTION,
    FLICKR_PHRASES,
    coco_json,
    flickr_json,
    refexp_json,
    write_image,
    write_json,
)


def test_builtin_names_and_evaluator_types():
    expected = {
        "flickr30k_entities_val": "flickr",
        "flickr30k_entities_merged_test": "flickr",
        "refcoco_unc_testA": "refexp",
        "refcoco+_unc_testB": "refexp",
        "refcocog_umd_test": "refexp",
        "lvis_v1_minival": "lvis",
        "objects365_v2_train": "coco",
        "odinw_Aquarium_test": "odinw",
        "coco_2017_val": "coco",
    }
    for name, evaluator_type in expected.items():
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == evaluator_type
    assert MetadataCatalog.get("flickr30k_entities_merged_test").merged_boxes is True
    assert MetadataCatalog.get("objects365_v2_train").prompt_policy == "positives_negatives"
    assert len(ODINW13_FOLDERS) == 13


def test_flickr_loader_boxes_spans_paths(tmp_path):
    json_file = flickr_json(tmp_path)
    (record,) = load_grounding_json(str(json_file), str(tmp_path / "images"), "flickr_x")
    assert record["file_name"] == str(tmp_path / "images" / "1000.jpg.png")
    assert (record["height"], record["width"], record["image_id"]) == (80, 100, 0)
    assert record["caption"] == FLICKR_CAPTION
    assert record["phrase_spans"] == FLICKR_PHRASES
    assert record["task"] == "grounding" and record["dataset_name"] == "flickr_x"
    assert (record["sentence_id"], record["original_img_id"]) == (0, 1000)
    assert [a["bbox"] for a in record["annotations"]] == [
        [10, 10, 30, 50],
        [50, 10, 20, 40],
        [12, 20, 20, 20],
        [60, 50, 30, 20],
    ]
    assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in record["annotations"])
    spans = [a["tokens_positive"] for a in record["annotations"]]
    assert [FLICKR_CAPTION[s[0][0] : s[0][1]] for s in spans] == [
        "A man",
        "A man",
        "a red shirt",
        "a small dog",
    ]


def test_mixed_data_source_roots(tmp_path):
    write_image(tmp_path / "vg" / "1.png", 8, 8)
    write_image(tmp_path / "coco" / "2.png", 8, 8)
    images = [
        {"id": 1, "file_name": "1.png", "height": 8, "width": 8, "caption": "a cat",
         "data_source": "vg"},
        {"id": 2, "file_name": "2.png", "height": 8, "width": 8, "caption": "a dog",
         "data_source": "coco"},
    ]  # fmt: skip
    json_file = write_json(
        tmp_path / "final_mixed_train_no_coco.json", {"images": images, "annotations": []}
    )
    roots = {"vg": str(tmp_path / "vg"), "coco": str(tmp_path / "coco")}
    records = load_grounding_json(str(json_file), roots)
    assert [r["file_name"] for r in records] == [roots["vg"] + "/1.png", roots["coco"] + "/2.png"]


def test_refexp_registration_on_any_root(tmp_path):
    json_file = refexp_json(tmp_path, [[10, 20, 30, 40]])
    register_grounding_dataset(
        "test_refexp_any_root", str(json_file), str(tmp_path / "train2014"), "refexp", "refexp"
    )
    (record,) = DatasetCatalog.get("test_refexp_any_root")
    assert record["task"] == "refexp" and record["caption"] == "the dog on the left"
    assert record["annotations"][0]["bbox"] == [10, 20, 30, 40]
    assert MetadataCatalog.get("test_refexp_any_root").evaluator_type == "refexp"


def test_missing_image_names_file_and_field(tmp_path):
    json_file = flickr_json(tmp_path)
    (tmp_path / "images" / "1000.jpg.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"final_flickr.*'file_name'.*1000\.jpg\.png"):
        load_grounding_json(str(json_file), str(tmp_path / "images"))


def test_malformed_json_names_file(tmp_path):
    bad = tmp_path / "final_flickr_separateGT_val.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="final_flickr_separateGT_val.json is not valid json"):
        load_grounding_json(str(bad), str(tmp_path))
    missing_field = write_json(tmp_path / "x.json", {"images": []})
    with pytest.raises(ValueError, match=r"x\.json: missing top-level field 'annotations'"):
        load_grounding_json(str(missing_field), str(tmp_path))
    (tmp_path / "o365.json").write_text("{")
    with pytest.raises(ValueError, match="o365.json is not a valid COCO-format json"):
        load_detection_json(str(tmp_path / "o365.json"), str(tmp_path), "o365_bad")


def test_span_outside_caption_names_file_and_annotation(tmp_path):
    json_file = flickr_json(tmp_path)
    content = json.loads(json_file.read_text())
    content["annotations"][2]["tokens_positive"] = [[9, 45]]
    json_file.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"image id 0, annotation 3: span \[9, 45\] lies outside"):
        load_grounding_json(str(json_file), str(tmp_path / "images"))


def test_non_positive_boxes_dropped_with_counted_warning(tmp_path, caplog):
    json_file = flickr_json(tmp_path)
    content = json.loads(json_file.read_text())
    content["annotations"][0]["bbox"] = [10, 10, 0, 50]
    content["annotations"][3]["bbox"] = [60, 50, 30, -2]
    json_file.write_text(json.dumps(content))
    with caplog.at_level(logging.WARNING):
        (record,) = load_grounding_json(str(json_file), str(tmp_path / "images"))
    assert len(record["annotations"]) == 2
    assert "dropped 2 box(es) with non-positive width/height" in caplog.text


def test_coco_format_detection_loader(tmp_path, caplog):
    json_file = coco_json(
        tmp_path / "o365.json",
        tmp_path / "img",
        ["person", "sofa", "traffic_light"],
        [[(0, [1, 2, 10, 20]), (2, [5, 5, 3, 4])], [(1, [0, 0, 0, 5])]],
    )
    register_detection_dataset(
        "test_o365_tiny", str(json_file), str(tmp_path / "img"), prompt_policy="positives_negatives"
    )
    with caplog.at_level(logging.WARNING):
        records = DatasetCatalog.get("test_o365_tiny")
    assert "dropped 1 box(es)" in caplog.text
    assert [[a["category_id"] for a in r["annotations"]] for r in records] == [[0, 2], []]
    assert records[0]["annotations"][0]["bbox"] == [1, 2, 10, 20]
    assert records[0]["file_name"] == str(tmp_path / "img" / "0.png")
    assert MetadataCatalog.get("test_o365_tiny").thing_classes == [
        "person",
        "sofa",
        "traffic_light",
    ]
    tagged = get_tagged_dataset_dicts(["test_o365_tiny"])
    assert [r["dataset_name"] for r in tagged] == ["test_o365_tiny"]  # the empty image is dropped
    with pytest.raises(ValueError, match="prompt_policy 'bogus'"):
        register_detection_dataset("test_bad_policy", "x.json", "img", prompt_policy="bogus")


def test_unknown_dataset_name():
    with pytest.raises(KeyError, match=r"unknown dataset name 'flickr30k_entities_vall'.*"
                       r"flickr30k_entities_val"):  # fmt: skip
        check_dataset_name("flickr30k_entities_vall")
    with pytest.raises(KeyError, match="'no_such_set'"):
        get_tagged_dataset_dicts(["no_such_set"])


def test_odinw_layout_and_missing_folder(tmp_path):
    root = tmp_path / "odinw"
    json_file, image_dir = odinw_split_files(str(root), "Aquarium", "test")
    assert json_file == str(
        root
        / "Aquarium/Aquarium Combined.v2-raw-1024.coco/test/annotations_without_background.json"
    )
    assert odinw_split_files(str(root), "PascalVOC", "test")[1] == str(root / "PascalVOC/valid")
    assert odinw_split_files(str(root), "pistols", "val") == (
        str(root / "pistols/export/val_annotations_without_background.json"),
        str(root / "pistols/export"),
    )
    aquarium = root / "Aquarium/Aquarium Combined.v2-raw-1024.coco/test"
    coco_json(aquarium / "annotations_without_background.json", aquarium, ["fish", "shark"],
              [[(1, [1, 1, 5, 5])]])  # fmt: skip
    (record,) = load_odinw(str(root), "Aquarium", "test")
    assert record["annotations"][0]["category_id"] == 1
    assert record["dataset_name"] == "odinw_Aquarium_test"
    with pytest.raises(FileNotFoundError, match=r"ODinW dataset pothole: folder .*odinw/pothole"):
        load_odinw(str(root), "pothole", "test")
