"""tools/make_synthetic_dataset.py: determinism, span/box/held-out/uniqueness invariants of the
generated files, and loading them through fiber_det's real-format loaders."""

import hashlib
import importlib.util
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from fiber_det.data.datasets.detection import load_detection_json
from fiber_det.data.datasets.grounding import load_grounding_json
from fiber_det.data.datasets.image_text import load_caption_corpus, load_karpathy_json
from fiber_det.data.tokenizer import train_byte_level_bpe
from fiber_det.quickstart import (
    SPLITS,
    SyntheticConfig,
    generate_synthetic_dataset,
    register_synthetic_world,
)
from fiber_det.quickstart.language import COUNT_WORDS, relation
from fiber_det.quickstart.render import SceneObject
from fiber_det.quickstart.world import SHAPES, plural

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL = REPO_ROOT / "tools" / "make_synthetic_dataset.py"
SIZES = {"train": 14, "val": 4, "test": 4, "heldout": 8}
SIZE_ARGS = [arg for split, n in SIZES.items() for arg in (f"--{split}", str(n))]


def _load_tool():
    spec = importlib.util.spec_from_file_location("make_synthetic_dataset", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _json(root: Path, name: str) -> dict:
    return json.loads((root / "annotations" / name).read_text())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "world"
    _load_tool().main(["--out", str(out), "--seed", "7", *SIZE_ARGS])
    return out


def test_same_seed_gives_identical_files(world, tmp_path):
    out = tmp_path / "again"
    _load_tool().main(["--out", str(out), "--seed", "7", *SIZE_ARGS])
    first, second = _hashes(world), _hashes(out)
    # meta + corpus, 4 annotation files per split + Karpathy, image + Sentences + xml, split lists,
    # then per train / val / test split 2 VQA json, 1 NLVR2 json and 2 images per pair
    downstream = sum(3 + 2 * (SIZES[split] // 2) for split in ("train", "val", "test"))
    assert len(first) == 2 + 4 * 4 + 1 + sum(SIZES.values()) * 3 + 4 + downstream
    assert first == second


def test_another_seed_gives_other_images_and_annotations(world, tmp_path):
    sizes = {"train": 3, "val": 1, "test": 1, "heldout": 1}
    generate_synthetic_dataset(tmp_path, SyntheticConfig(seed=8, split_sizes=sizes), log=len)
    first, second = _hashes(world), _hashes(tmp_path)
    for name in ("images/train/1.jpg", "images/train/2.jpg", "annotations/dataset_coco.json"):
        assert first[name] != second[name]


def _objects_by_image(root: Path, split: str) -> dict[int, list[dict]]:
    objects: dict[int, list[dict]] = {}
    for ann in _json(root, f"instances_{split}.json")["annotations"]:
        objects.setdefault(ann["image_id"], []).append(ann)
    return objects


def test_boxes_lie_inside_their_images_with_positive_size(world):
    for split in SPLITS:
        for name in (
            f"instances_{split}",
            f"final_flickr_separateGT_{split}",
            f"finetune_refcoco_{split}",
        ):
            content = _json(world, f"{name}.json")
            images = {image["id"]: image for image in content["images"]}
            assert content["annotations"], name
            for ann in content["annotations"]:
                image = images[ann["image_id"]]
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= image["width"] and y + h <= image["height"]
                assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0 and ann["category_id"] >= 1
        for image in _json(world, f"instances_{split}.json")["images"]:
            pixels = cv2.imread(str(world / "images" / split / image["file_name"]))
            assert pixels.shape == (image["height"], image["width"], 3)


NOUNS = {**{shape: (False, shape) for shape in SHAPES}, **{plural(s): (True, s) for s in SHAPES}}


def _parse_phrase(text: str) -> tuple[int, str, str]:
    """Parse "two red squares" -> (2, "red", "square"), "an orange star" -> (1, "orange", ...)."""
    count_word, colour, noun = text.split(" ")
    count = 1 if count_word in ("a", "an") else COUNT_WORDS.index(count_word) + 1
    is_plural, shape = NOUNS[noun]
    assert is_plural == (count > 1), text
    return count, colour, shape


def test_phrase_spans_name_exactly_their_boxes(world):
    """Each span is whole words "<count> <colour> <shape>" and its boxes are those objects."""
    plural_phrases, relations = 0, 0
    for split in ("train", "val", "test"):
        objects = _objects_by_image(world, split)
        content = _json(world, f"final_flickr_separateGT_{split}.json")
        boxes_of_span: dict[tuple[int, int, int], list[list[int]]] = {}
        for ann in content["annotations"]:
            for start, end in ann["tokens_positive"]:
                boxes_of_span.setdefault((ann["image_id"], start, end), []).append(ann["bbox"])
        for entry in content["images"]:
            caption = entry["caption"]
            assert caption.endswith(" .") and "  " not in caption
            relations += bool(re.search(r" (left of|right of|above|below) ", caption))
            for [[start, end]] in entry["tokens_positive_eval"]:
                assert start == 0 or caption[start - 1] == " "
                assert caption[end] == " "
                count, colour, shape = _parse_phrase(caption[start:end])
                named = [
                    ann["bbox"]
                    for ann in objects[entry["original_img_id"]]
                    if (ann["attributes"]["colour"], ann["attributes"]["shape"]) == (colour, shape)
                ]
                assert sorted(boxes_of_span[(entry["id"], start, end)]) == sorted(named)
                assert len(named) == count
                plural_phrases += count > 1
    assert plural_phrases >= 3 and relations >= 3  # "two red squares", "a star left of ..."


def _held_out_words(world: Path) -> list[str]:
    meta = json.loads((world / "meta.json").read_text())
    return [f"{c} {s}" for c, s in meta["heldout_combinations"]] + [
        f"{c} {plural(s)}" for c, s in meta["heldout_combinations"]
    ]


def test_heldout_combinations_never_occur_outside_the_heldout_split(world):
    words = _held_out_words(world)
    assert len(words) == 6
    karpathy = _json(world, "dataset_coco.json")["images"]
    for split in ("train", "val", "test"):
        texts = [
            e["caption"] for e in _json(world, f"final_flickr_separateGT_{split}.json")["images"]
        ]
        texts += [e["caption"] for e in _json(world, f"finetune_refcoco_{split}.json")["images"]]
        texts += [s["raw"].lower() for i in karpathy if i["split"] == split for s in i["sentences"]]
        names = [c["name"] for c in _json(world, f"instances_{split}.json")["categories"]]
        assert texts and not [t for t in texts if any(re.search(rf"\b{w}\b", t) for w in words)]
        assert not set(names) & set(words)
    heldout = _json(world, "instances_heldout.json")
    assert sorted(c["name"] for c in heldout["categories"]) == sorted(words[:3])
    assert {a["image_id"] for a in heldout["annotations"]} == {i["id"] for i in heldout["images"]}


REFEXP = re.compile(
    r"^the (?P<head>[a-z ]+?)(?: (?P<where>on the left|on the right|at the top|at the bottom)|"
    r" (?P<rel>left of|right of|above|below) the (?P<anchor>\w+ \w+))?$"
)
DIRECTIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}


def _scene_object(ann: dict) -> SceneObject:
    a = ann["attributes"]
    return SceneObject(a["colour"], a["shape"], a["size"], a["texture"], tuple(ann["bbox"]), 0)


def _referents(expression: str, objects: list[SceneObject]) -> list[int]:
    """The objects an expression of the generator's grammar refers to, evaluated from scratch."""
    match = REFEXP.match(expression)
    words = match["head"].split()
    fits = [i for i, o in enumerate(objects) if set(words) <= {o.colour, o.shape, o.size}]
    if match["where"]:
        axis, sign = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}[
            match["where"].split()[-1]
        ]
        best = max(fits, key=lambda i: objects[i].centre[axis] * sign)
        rest = [objects[i].centre[axis] * sign for i in fits if i != best]
        return [best] if all(v <= objects[best].centre[axis] * sign - 10 for v in rest) else fits
    if match["rel"]:
        anchors = [i for i, o in enumerate(objects) if f"{o.colour} {o.shape}" == match["anchor"]]
        assert len(anchors) == 1
        anchor = objects[anchors[0]]
        fits = [i for i in fits if i != anchors[0] and relation(objects[i], anchor) == match["rel"]]
        axis, sign = DIRECTIONS[match["rel"]]  # the words mean what they say, whatever the rule
        assert all((objects[i].centre[axis] - anchor.centre[axis]) * sign > 0 for i in fits)
    return fits


def test_referring_expressions_have_exactly_one_target(world):
    checked = 0
    for split in ("train", "val", "test"):
        objects = _objects_by_image(world, split)
        content = _json(world, f"finetune_refcoco_{split}.json")
        targets = {ann["image_id"]: ann for ann in content["annotations"]}
        assert len(targets) == len(content["annotations"]) == len(content["images"])
        for entry in content["images"]:
            target, scene = targets[entry["id"]], objects[entry["original_id"]]
            assert entry["dataset_name"] == "refcoco"
            [[start, end]] = target["tokens_positive"]
            assert entry["tokens_positive_eval"] == [[[start, end]]]
            assert entry["caption"][start:end] == REFEXP.match(entry["caption"])["head"]
            found = _referents(entry["caption"], [_scene_object(a) for a in scene])
            assert [scene[i]["id"] for i in found] == [target["original_id"]]
            assert target["bbox"] == scene[found[0]]["bbox"]
            checked += 1
    assert checked >= 30


def test_flickr_entities_files_match_the_grounding_json(world):
    flickr = world / "flickr30k_entities"
    content = _json(world, "final_flickr_separateGT_val.json")
    ids = (flickr / "val.txt").read_text().split()
    assert ids == [str(i["id"]) for i in _json(world, "instances_val.json")["images"]]
    for image_id in ids:
        entries = [e for e in content["images"] if str(e["original_img_id"]) == image_id]
        lines = (flickr / "Sentences" / f"{image_id}.txt").read_text().splitlines()
        boxes = {}
        for obj in ET.parse(flickr / "Annotations" / f"{image_id}.xml").getroot().iter("object"):
            box = [int(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
            for name in obj.iter("name"):
                boxes.setdefault(name.text, []).append(
                    [box[0], box[1], box[2] - box[0], box[3] - box[1]]
                )
        assert len(lines) == len(entries)
        for line, entry in zip(lines, entries):
            phrases = re.findall(r"\[/EN#(\d+)/other ([^\]]+)\]", line)
            assert re.sub(r"\[/EN#\d+/other ([^\]]+)\]", r"\1", line) == entry["caption"]
            spans = [entry["caption"][s:e] for [[s, e]] in entry["tokens_positive_eval"]]
            assert [words for _, words in phrases] == spans
            for (entity, _), [[s, e]] in zip(phrases, entry["tokens_positive_eval"]):
                json_boxes = [
                    a["bbox"]
                    for a in content["annotations"]
                    if a["image_id"] == entry["id"] and [s, e] in a["tokens_positive"]
                ]
                assert sorted(boxes[entity]) == sorted(json_boxes)


def test_generated_files_load_through_the_dataset_loaders(world):
    for split in SPLITS:
        images = str(world / "images" / split)
        detection = load_detection_json(
            str(world / "annotations" / f"instances_{split}.json"),
            images,
            f"synthetic_test_{split}",
        )
        raw = _json(world, f"instances_{split}.json")
        assert sum(len(r["annotations"]) for r in detection) == len(raw["annotations"])
        grounding = load_grounding_json(
            str(world / "annotations" / f"final_flickr_separateGT_{split}.json"), images
        )
        assert len(grounding) == len(
            _json(world, f"final_flickr_separateGT_{split}.json")["images"]
        )
        for record in grounding:
            assert record["phrase_spans"] and record["annotations"]
            assert record["sentence_id"] >= 0 and os.path.isfile(record["file_name"])
        refexp = load_grounding_json(
            str(world / "annotations" / f"finetune_refcoco_{split}.json"), images, task="refexp"
        )
        assert all(len(r["annotations"]) == 1 for r in refexp)
        pairs = load_caption_corpus(
            str(world / "annotations" / f"captions_{split}.jsonl"), str(world)
        )
        assert len(pairs) == 2 * SIZES[split] and all(os.path.isfile(p["file_name"]) for p in pairs)
    for split in ("train", "val", "test"):
        per_image = load_karpathy_json(
            str(world / "annotations" / "dataset_coco.json"), str(world / "images"), split, False
        )
        assert len(per_image) == SIZES[split]
        assert all(os.path.isfile(r["file_name"]) and len(r["captions"]) == 2 for r in per_image)


def test_registered_names_resolve_through_detectron2(world):
    names = register_synthetic_world(str(world), prefix="synthetic_unit")
    assert len(names) == 4 * 3 + 3 + 3 * 3  # + captioning, vqa, nlvr2 of train / val / test
    assert len(DatasetCatalog.get("synthetic_unit_val")) == SIZES["val"]
    assert MetadataCatalog.get("synthetic_unit_val").thing_classes  # set by load_coco_json
    assert MetadataCatalog.get("synthetic_unit_grounding_test").evaluator_type == "flickr"
    refs = DatasetCatalog.get("synthetic_unit_refcoco_heldout")
    assert refs and all(r["task"] == "refexp" for r in refs)
    assert len(DatasetCatalog.get("synthetic_unit_captions_train")) == 2 * SIZES["train"]


def test_corpus_covers_every_text_and_trains_a_tokenizer(world, tmp_path):
    corpus = (world / "corpus.txt").read_text().splitlines()
    assert len(corpus) == len(set(corpus))
    texts = []
    for split in SPLITS:
        texts += [
            e["caption"] for e in _json(world, f"final_flickr_separateGT_{split}.json")["images"]
        ]
        texts += [e["caption"] for e in _json(world, f"finetune_refcoco_{split}.json")["images"]]
        texts += [c["name"] for c in _json(world, f"instances_{split}.json")["categories"]]
    texts += [s["raw"] for i in _json(world, "dataset_coco.json")["images"] for s in i["sentences"]]
    assert set(texts) <= set(corpus)
    tokenizer = train_byte_level_bpe(corpus, tmp_path, vocab_size=400)
    ids = tokenizer("red square").input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "red square"


def test_bad_arguments_name_the_field_or_path(tmp_path):
    with pytest.raises(ValueError, match="num_heldout=5"):
        generate_synthetic_dataset(tmp_path / "a", SyntheticConfig(num_heldout=5), log=len)
    with pytest.raises(ValueError, match="num_heldout=0"):
        generate_synthetic_dataset(tmp_path / "a", SyntheticConfig(num_heldout=0), log=len)
    with pytest.raises(ValueError, match="min_side=100"):
        generate_synthetic_dataset(tmp_path / "b", SyntheticConfig(min_side=100), log=len)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_synthetic_dataset(tmp_path / "c", log=len)
    with pytest.raises(SystemExit, match="split_sizes"):
        _load_tool().main(["--out", str(tmp_path / "d"), "--val", "0"])
