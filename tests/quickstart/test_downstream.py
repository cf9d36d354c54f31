"""The synthetic world's downstream files: VQAv2 questions whose answers follow from the scene
(checked against the COCO instances of the same images), NLVR2 statements whose labels follow
from the two images, and their loading through the registered synthetic_{vqa,nlvr2,captioning}
names with the real loaders."""

import json
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from fiber_det.data.datasets.vqa import answer_soft_score, answer_vocabulary
from fiber_det.quickstart import SyntheticConfig, generate_synthetic_dataset
from fiber_det.quickstart.register import register_synthetic_world
from fiber_det.quickstart.vqa import ANNOTATOR_NOISE, ANNOTATORS
from fiber_det.quickstart.world import SHAPES, plural

SIZES = {"train": 30, "val": 8, "test": 8, "heldout": 1}
SPLITS = ("train", "val", "test")
PREFIX = "synthetic_downstream_unit"
SHAPE_OF_PLURAL = {plural(shape): shape for shape in SHAPES}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("downstream") / "world"
    generate_synthetic_dataset(out, SyntheticConfig(seed=3, split_sizes=SIZES), log=len)
    for name in [n for n in DatasetCatalog.list() if n.startswith(PREFIX + "_")]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_synthetic_world(str(out), PREFIX)
    return out


def _objects(world: Path, split: str) -> tuple[list[int], dict[int, list[tuple[str, str]]]]:
    """Image ids of a split in file order and the (colour, shape) of each image's objects."""
    content = json.loads((world / "annotations" / f"instances_{split}.json").read_text())
    objects: dict[int, list] = {image["id"]: [] for image in content["images"]}
    for ann in content["annotations"]:
        attributes = ann["attributes"]
        objects[ann["image_id"]].append((attributes["colour"], attributes["shape"]))
    return [image["id"] for image in content["images"]], objects


def _true_answer(question: str, objects: list[tuple[str, str]]) -> str:
    """The answer a perfect annotator gives, computed from the COCO annotations."""
    if match := re.fullmatch(r"what colour is the (\w+)\?", question):
        colours = [c for c, s in objects if s == match[1]]
        assert len(colours) == 1, question  # only asked about a unique shape
        return colours[0]
    if match := re.fullmatch(r"what shape is the (\w+) object\?", question):
        shapes = [s for c, s in objects if c == match[1]]
        assert len(shapes) == 1, question
        return shapes[0]
    if match := re.fullmatch(r"how many (\w+) are there\?", question):
        return str(sum(s == SHAPE_OF_PLURAL[match[1]] for _, s in objects))
    match = re.fullmatch(r"is there an? (\w+) (\w+)\?", question)
    assert match, question
    return "yes" if (match[1], match[2]) in objects else "no"


def _vqa_json(world: Path, split: str) -> tuple[list[dict], list[dict]]:
    root = world / "vqav2"
    questions = json.loads((root / f"v2_OpenEnded_synthetic_{split}_questions.json").read_text())
    annotations = json.loads((root / f"v2_synthetic_{split}_annotations.json").read_text())
    assert questions["data_subtype"] == annotations["data_subtype"] == split
    return questions["questions"], annotations["annotations"]


def test_vqa_answers_follow_from_the_scene(world):
    wrong, total, majority_right, kinds = 0, 0, 0, Counter()
    for split in SPLITS:
        _, objects = _objects(world, split)
        questions, annotations = _vqa_json(world, split)
        assert [q["question_id"] for q in questions] == [a["question_id"] for a in annotations]
        assert len(questions) == 4 * SIZES[split]
        for question, annotation in zip(questions, annotations, strict=True):
            truth = _true_answer(question["question"], objects[question["image_id"]])
            answers = annotation["answers"]
            assert [a["answer_id"] for a in answers] == list(range(1, ANNOTATORS + 1))
            for answer in answers:  # confident annotators are right, the others are wrong
                assert (answer["answer"] == truth) == (answer["answer_confidence"] == "yes")
            wrong += sum(a["answer"] != truth for a in answers)
            total += len(answers)
            majority_right += annotation["multiple_choice_answer"] == truth
            kinds[annotation["answer_type"]] += 1
    assert 0.5 * ANNOTATOR_NOISE < wrong / total < 1.5 * ANNOTATOR_NOISE
    assert majority_right >= 0.97 * total / ANNOTATORS
    assert set(kinds) == {"other", "number", "yes/no"} and min(kinds.values()) >= 20


def test_yes_no_questions_are_balanced(world):
    answers = Counter()
    for split in SPLITS:
        questions, annotations = _vqa_json(world, split)
        for question, annotation in zip(questions, annotations, strict=True):
            if question["question"].startswith("is there"):
                answers[annotation["multiple_choice_answer"]] += 1
    assert set(answers) == {"yes", "no"}
    assert 0.35 < answers["yes"] / sum(answers.values()) < 0.65


def test_vqa_loads_with_soft_scores_through_the_registered_names(world):
    vocabulary = answer_vocabulary(f"{PREFIX}_vqa_train")
    majority = Counter(
        a["multiple_choice_answer"] for s in ("train", "val") for a in _vqa_json(world, s)[1]
    )
    assert vocabulary == [answer for answer, n in majority.items() if n >= 9]  # train + val
    assert {"yes", "no"} <= set(vocabulary)
    for split in SPLITS:
        name = f"{PREFIX}_vqa_{split}"
        assert MetadataCatalog.get(name).evaluator_type == "vqa"
        records = DatasetCatalog.get(name)
        for record in records:
            assert Path(record["file_name"]).is_file()
            assert Path(record["file_name"]).name.startswith(f"{record['image_id']}.")
            counts = Counter(record["answers"])
            expected = {
                vocabulary.index(a): answer_soft_score(n)
                for a, n in counts.items()
                if a in vocabulary
            }
            got = dict(zip(record["answer_labels"], record["answer_scores"], strict=True))
            assert got == expected
        if split == "train":  # the original's filter: only answerable training questions
            assert records and all(record["answer_labels"] for record in records)
        else:
            assert len(records) == 4 * SIZES[split]


def _statement_holds(sentence: str, left: list, right: list) -> bool:
    """The truth of a synthetic NLVR2 statement, computed from the two images' objects."""
    if match := re.fullmatch(
        r"the (left|right) image has more (\w+) than the \w+ image \.", sentence
    ):
        shape = SHAPE_OF_PLURAL[match[2]]
        counts = [sum(s == shape for _, s in side) for side in (left, right)]
        return counts[0] > counts[1] if match[1] == "left" else counts[1] > counts[0]
    match = re.fullmatch(r"(.+) contains? an? (\w+) (\w+) \.", sentence)
    assert match, sentence
    has = [(match[2], match[3]) in side for side in (left, right)]
    outcome = {
        "both images": all(has),
        "only one image": has[0] != has[1],
        "the left image": has[0],
        "the right image": has[1],
    }
    return outcome[match[1]]


def test_nlvr2_labels_follow_from_the_image_pairs(world):
    labels = Counter()
    for split in SPLITS:
        image_ids, objects = _objects(world, split)
        lines = (world / "nlvr2" / "data" / f"{split}.json").read_text().splitlines()
        assert len(lines) == 2 * (SIZES[split] // 2)
        for line in map(json.loads, lines):
            _, pair, _, _ = line["identifier"].split("-")
            left, right = image_ids[2 * int(pair)], image_ids[2 * int(pair) + 1]
            holds = _statement_holds(line["sentence"], objects[left], objects[right])
            assert line["label"] == ("True" if holds else "False"), line
            labels[line["label"]] += 1
    assert labels["True"] == labels["False"]  # two statements of opposite truth per pair


def test_nlvr2_pair_images_are_the_split_images(world):
    image_ids, _ = _objects(world, "val")
    for pair in range(SIZES["val"] // 2):
        for side in (0, 1):
            copy = cv2.imread(
                str(world / "nlvr2" / "images" / "val" / f"val-{pair}-0-img{side}.png")
            )
            source = cv2.imread(str(world / "images" / "val" / f"{image_ids[2 * pair + side]}.jpg"))
            np.testing.assert_array_equal(copy, source)


def test_nlvr2_and_captioning_load_through_the_registered_names(world):
    records = DatasetCatalog.get(f"{PREFIX}_nlvr2_test")
    assert MetadataCatalog.get(f"{PREFIX}_nlvr2_test").evaluator_type == "nlvr2"
    assert len(records) == 2 * (SIZES["test"] // 2)
    assert {r["label"] for r in records} == {0, 1}
    assert all(Path(p).is_file() for r in records for p in r["image_files"])
    captioning = DatasetCatalog.get(f"{PREFIX}_captioning_test")
    assert MetadataCatalog.get(f"{PREFIX}_captioning_test").evaluator_type == "caption"
    assert len(captioning) == SIZES["test"]  # one dict per image, every caption in it
    assert all(len(r["captions"]) == 2 and Path(r["file_name"]).is_file() for r in captioning)


def test_corpus_holds_questions_answers_and_statements(world):
    corpus = set((world / "corpus.txt").read_text().splitlines())
    questions, annotations = _vqa_json(world, "train")
    assert questions[0]["question"] in corpus
    assert annotations[0]["answers"][0]["answer"] in corpus
    first = json.loads((world / "nlvr2" / "data" / "train.json").read_text().splitlines()[0])
    assert first["sentence"] in corpus


@pytest.mark.parametrize("field", ["vqa_questions_per_image", "nlvr2_statements_per_pair"])
def test_negative_downstream_sizes_name_the_field(tmp_path, field):
    with pytest.raises(ValueError, match=field):
        generate_synthetic_dataset(tmp_path, SyntheticConfig(**{field: -1}), log=len)
