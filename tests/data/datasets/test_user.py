"""--dataset NAME=path/to.json:path/images: parsing, format detection and the category checks."""

import argparse

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from fiber_det.data.datasets.user import (
    DatasetSpec,
    add_dataset_argument,
    parse_dataset_spec,
    register_dataset_spec,
)
from tests.data.formats import coco_json, flickr_json, refexp_json, write_json


def test_parse_good_form():
    assert parse_dataset_spec("trees_train=data/train.json:data/images") == DatasetSpec(
        "trees_train", "data/train.json", "data/images"
    )
    # the image folder keeps any further ':' (only the first one splits)
    assert parse_dataset_spec("t=a.json:img:x").image_root == "img:x"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("trees.json:images", "no '='"),
        ("=a.json:images", "an empty NAME"),
        ("trees=a.json", "no ':' between the json and the image folder"),
        ("trees=:images", "an empty json path"),
        ("trees=a.json:", "an empty image folder"),
    ],
)
def test_parse_bad_forms_name_the_value(value, problem):
    with pytest.raises(ValueError, match=f"--dataset '{value}' has {problem}; expected NAME="):
        parse_dataset_spec(value)


def test_argument_parser_stops_on_a_bad_form(capsys):
    parser = argparse.ArgumentParser()
    add_dataset_argument(parser)
    args = parser.parse_args(["--dataset", "a=x.json:i", "--dataset", "b=y.json:j"])
    assert [spec.name for spec in args.dataset] == ["a", "b"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--dataset", "trees.json"])
    assert "--dataset 'trees.json' has no '='" in capsys.readouterr().err


def _coco(tmp_path, categories):
    json_file = coco_json(tmp_path / "d.json", tmp_path / "img", categories, [[(0, [1, 2, 3, 4])]])
    return str(json_file), str(tmp_path / "img")


def test_detection_json_registers_with_its_class_names(tmp_path, tiny_tokenizer):
    json_file, images = _coco(tmp_path, ["tree", "dead_tree"])
    spec = DatasetSpec("test_user_trees", json_file, images)
    assert register_dataset_spec(spec, tiny_tokenizer) == "coco"
    records = DatasetCatalog.get("test_user_trees")
    assert records[0]["annotations"][0]["bbox"] == [1, 2, 3, 4]
    assert records[0]["dataset_name"] == "test_user_trees"
    metadata = MetadataCatalog.get("test_user_trees")
    assert metadata.thing_classes == ["tree", "dead_tree"] and metadata.evaluator_type == "coco"
    with pytest.raises(ValueError, match="test_user_trees: that name is registered already"):
        register_dataset_spec(spec, tiny_tokenizer)


def test_category_errors(tmp_path, tiny_tokenizer):
    def register(name, categories):
        json_file, images = _coco(tmp_path, categories)
        register_dataset_spec(DatasetSpec(name, json_file, images), tiny_tokenizer)

    with pytest.raises(ValueError, match=r"duplicate category name\(s\) \['tree'\]"):
        register("test_user_dup", ["tree", "bush", "tree"])
    with pytest.raises(ValueError, match=r"'\(unused\)' becomes '' .* tokenizes to nothing"):
        register("test_user_empty", ["tree", "(unused)"])
    write_json(tmp_path / "nocat.json", {"images": [], "annotations": []})
    spec = DatasetSpec("test_user_nocat", str(tmp_path / "nocat.json"), str(tmp_path / "img"))
    with pytest.raises(ValueError, match="nocat.json: no 'categories' list"):
        register_dataset_spec(spec, tiny_tokenizer)
    write_json(
        tmp_path / "noname.json", {"images": [], "annotations": [], "categories": [{"id": 3}]}
    )
    spec = DatasetSpec("test_user_noname", str(tmp_path / "noname.json"), str(tmp_path / "img"))
    with pytest.raises(ValueError, match=r"categories with id\(s\) \[3\] have no 'name'"):
        register_dataset_spec(spec, tiny_tokenizer)
    assert not {"test_user_dup", "test_user_empty", "test_user_nocat"} & set(DatasetCatalog.list())
    missing = DatasetSpec("test_user_missing", str(tmp_path / "nope.json"), str(tmp_path / "img"))
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        register_dataset_spec(missing)


def test_grounding_jsons_are_told_apart(tmp_path):
    flickr = DatasetSpec("test_user_flickr", str(flickr_json(tmp_path)), str(tmp_path / "images"))
    assert register_dataset_spec(flickr) == "flickr"
    assert DatasetCatalog.get("test_user_flickr")[0]["phrase_spans"] == [
        [[0, 5]],
        [[9, 20]],
        [[27, 38]],
    ]
    refexp_file = refexp_json(tmp_path, [[10, 10, 20, 20]])
    refexp = DatasetSpec("test_user_refexp", str(refexp_file), str(tmp_path / "train2014"))
    assert register_dataset_spec(refexp) == "refexp"
    assert MetadataCatalog.get("test_user_refexp").task == "refexp"
