"""Datasets named on the command line: `--dataset NAME=path/to.json:path/images`.

A COCO-format detection json registers through `register_detection_dataset` (its category
names, cleaned as in the prompts, become the prompt; evaluator "coco"). An MDETR-format
grounding json (image entries carry a `caption`) registers through `register_grounding_dataset`
(evaluator "refexp" when its images come from RefCOCO/+/g, else "flickr": Recall@k over its
phrases). The json's header is read at registration so that a bad category list fails at once,
before any training starts; the records themselves are read lazily, as for builtin sets.
"""

import argparse
import os
from collections import Counter
from typing import NamedTuple

from detectron2.data import DatasetCatalog
from transformers import PreTrainedTokenizerBase

from fiber_det.data.datasets.detection import register_detection_dataset
from fiber_det.data.datasets.grounding import read_json, register_grounding_dataset
from fiber_det.data.prompts import clean_name

SPEC_FORM = "NAME=path/to.json:path/images"
REFEXP_SOURCES = ("refcoco", "refcoco+", "refcocog")


class DatasetSpec(NamedTuple):
    """One `--dataset` value: the name to register, its json and its image folder."""

    name: str
    json_file: str
    image_root: str


def parse_dataset_spec(value: str) -> DatasetSpec:
    """'NAME=path/to.json:path/images' -> DatasetSpec; ValueError naming the value otherwise.

    The json path ends at the first ':' after '='; the image folder is everything after it.
    """
    name, equals, paths = value.partition("=")
    json_file, colon, image_root = paths.partition(":")
    problem = None
    if not equals:
        problem = "no '='"
    elif not name.strip():
        problem = "an empty NAME"
    elif not colon:
        problem = "no ':' between the json and the image folder"
    elif not json_file or not image_root:
        problem = "an empty json path" if not json_file else "an empty image folder"
    if problem:
        raise ValueError(f"--dataset {value!r} has {problem}; expected {SPEC_FORM}")
    return DatasetSpec(name.strip(), json_file, image_root)


def is_grounding_json(content: dict) -> bool:
    """MDETR-format grounding: every image entry carries a caption."""
    images = content.get("images", [])
    return bool(images) and all("caption" in image for image in images)


def category_names(content: dict, json_file: str) -> list[str]:
    """The category names in id order; errors for a missing list, a nameless entry or
    duplicate names."""
    categories = content.get("categories")
    if not categories:
        raise ValueError(
            f"{json_file}: no 'categories' list; a detection json names its classes there "
            '([{"id": 1, "name": "tree"}, ...]): they become the prompt'
        )
    nameless = [c.get("id") for c in categories if not str(c.get("name", "")).strip()]
    if nameless:
        raise ValueError(f"{json_file}: categories with id(s) {nameless} have no 'name'")
    names = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(
            f"{json_file}: duplicate category name(s) {duplicates}: the prompt could not "
            "tell those classes apart; merge or rename them"
        )
    return names


def check_names_tokenize(
    names: list[str], tokenizer: PreTrainedTokenizerBase, json_file: str
) -> None:
    """ValueError for a category whose cleaned name yields no token (it could never be found)."""
    for name in names:
        cleaned = clean_name(name)
        if not cleaned or not tokenizer(cleaned, add_special_tokens=False)["input_ids"]:
            raise ValueError(
                f"{json_file}: category name {name!r} becomes {cleaned!r} in the prompt and "
                "tokenizes to nothing; rename it"
            )


def grounding_evaluator_type(content: dict) -> str:
    """'refexp' for RefCOCO/+/g entries (MDETR's `dataset_name`), else 'flickr'."""
    sources = {image.get("dataset_name") for image in content["images"]}
    return "refexp" if sources and sources <= set(REFEXP_SOURCES) else "flickr"


def register_dataset_spec(
    spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase | None = None
) -> str:
    """Register one spec (detection or grounding, told from the json); return its evaluator type.

    With a tokenizer, each detection class name must yield at least one token.
    """
    if spec.name in DatasetCatalog.list():
        raise ValueError(f"--dataset {spec.name}: that name is registered already; pick another")
    if not os.path.isdir(spec.image_root):
        raise FileNotFoundError(f"--dataset {spec.name}: image folder {spec.image_root} not found")
    content = read_json(spec.json_file)
    if is_grounding_json(content):
        evaluator_type = grounding_evaluator_type(content)
        task = "refexp" if evaluator_type == "refexp" else "grounding"
        register_grounding_dataset(
            spec.name, spec.json_file, spec.image_root, evaluator_type=evaluator_type, task=task
        )
        return evaluator_type
    names = category_names(content, spec.json_file)
    if tokenizer is not None:
        check_names_tokenize(names, tokenizer, spec.json_file)
    register_detection_dataset(spec.name, spec.json_file, spec.image_root, evaluator_type="coco")
    return "coco"


def register_dataset_specs(
    specs: list[DatasetSpec], tokenizer: PreTrainedTokenizerBase | None = None
) -> list[str]:
    """Register every parsed `--dataset` value; return the names registered."""
    for spec in specs:
        register_dataset_spec(spec, tokenizer)
    return [spec.name for spec in specs]


def _spec_argument(value: str) -> DatasetSpec:
    try:
        return parse_dataset_spec(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_dataset_argument(parser: argparse.ArgumentParser) -> None:
    """--dataset NAME=path/to.json:path/images (repeatable), parsed into DatasetSpec; a bad
    form stops the parser with a message naming the value."""
    parser.add_argument(
        "--dataset",
        metavar=SPEC_FORM,
        type=_spec_argument,
        action="append",
        default=[],
        help="register a COCO-format detection json or an MDETR-format grounding json as NAME "
        "(repeatable); NAME can then be used in DATASETS.TRAIN / DATASETS.TEST",
    )


def dataset_class_names(json_file: str) -> list[str]:
    """The category names of a COCO-format json (the checks of `category_names`)."""
    return category_names(read_json(json_file, required=()), json_file)
