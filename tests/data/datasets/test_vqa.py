"""VQAv2 data: the official normalisation, the answer vocabulary, loaders, submission files."""

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from detectron2.data import MetadataCatalog
from PIL import Image

from fiber_det.data.datasets.image_text import read_arrow_image
from fiber_det.data.datasets.vqa import (
    answer_soft_score,
    answer_vocabulary,
    build_answer_vocabulary,
    load_vocabulary_from_arrow,
    load_vqav2_arrow,
    load_vqav2_json,
    normalize_answer,
    process_punctuation,
    soft_targets,
    write_vqa_submission,
)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two dogs.", "2 dogs"),  # number word, final period, lowercase
        ("the cat, dog", "cat dog"),  # article; a comma before a space is deleted
        ("yes!", "yes"),  # "!" touching no space becomes a space
        ("left/right", "left right"),
        ("3,000", "3000"),  # digit,digit: every mark is deleted
        ("1.5", "1.5"),  # a period before a digit stays
        ("U.S.A.", "usa"),
        ("dont", "don't"),  # contractions restored
        ("An Apple", "apple"),
        ("none", "0"),
        ("  a\tman \n", "man"),
    ],
)
def test_official_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_period_stripping_keeps_the_official_count_limit():
    # The official script passes re.UNICODE (32) as `count`: 40 periods leave 8.
    assert process_punctuation("." * 40) == "." * 8


def test_soft_scores_and_targets():
    assert [answer_soft_score(n) for n in (0, 1, 2, 3, 4, 10)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    answers = ["yes"] * 4 + ["no"] * 3 + ["2"] * 2 + ["maybe"]
    labels, scores = soft_targets(answers, {"no": 0, "yes": 1, "2": 2})
    assert labels == [1, 0, 2]  # order of first appearance among the annotators
    assert scores == [1.0, 0.9, 0.6]
    # As the original, annotator answers are counted as written: "two" is not the label "2".
    assert soft_targets(["two"] * 10, {"2": 0}) == ([], [])


def test_vocabulary_keeps_answers_seen_at_least_nine_times_in_first_seen_order():
    majority = ["no"] * 8 + ["Yes."] * 5 + ["yes"] * 4 + ["two"] * 6 + ["2"] * 3 + ["blue"] * 20
    annotations = [{"multiple_choice_answer": answer} for answer in majority]
    assert build_answer_vocabulary(annotations) == ["yes", "2", "blue"]
    assert build_answer_vocabulary(annotations, min_count=8) == ["no", "yes", "2", "blue"]


def _write(path, content) -> str:
    path.write_text(json.dumps(content))
    return str(path)


def _vqa_files(tmp_path, subtype="val2014"):
    questions = _write(
        tmp_path / "questions.json",
        {
            "data_subtype": subtype,
            "questions": [
                {"image_id": 42, "question_id": 420, "question": "What color is the cat?"},
                {"image_id": 42, "question_id": 421, "question": "How many dogs?"},
                {"image_id": 7, "question_id": 70, "question": "Is it sunny?"},
            ],
        },
    )
    answers = {420: ["black"] * 7 + ["gray"] * 3, 421: ["2"] * 9 + ["3"], 70: ["maybe"] * 10}
    annotations = _write(
        tmp_path / "annotations.json",
        {
            "annotations": [
                {
                    "question_id": qid,
                    "image_id": 0,
                    "answer_type": "other",
                    "question_type": "what",
                    "multiple_choice_answer": values[0],
                    "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(values)],
                }
                for qid, values in answers.items()
            ]
        },
    )
    return questions, annotations


def test_official_json_loader_with_soft_targets(tmp_path):
    questions, annotations = _vqa_files(tmp_path)
    vocabulary = ["2", "black", "gray"]
    records = load_vqav2_json(questions, annotations, "coco/val2014", vocabulary)
    assert [r["question_id"] for r in records] == [420, 421, 70]
    assert records[0]["file_name"] == "coco/val2014/COCO_val2014_000000000042.jpg"
    assert records[0]["question"] == "What color is the cat?"
    assert records[0]["answers"] == ["black"] * 7 + ["gray"] * 3
    assert (records[0]["answer_labels"], records[0]["answer_scores"]) == ([1, 2], [1.0, 0.9])
    assert (records[1]["answer_labels"], records[1]["answer_scores"]) == ([0], [1.0])
    assert records[2]["answer_labels"] == []
    kept = load_vqav2_json(questions, annotations, "img", vocabulary, drop_unanswerable=True)
    assert [r["question_id"] for r in kept] == [420, 421]


def test_test_dev_questions_use_test2015_images_and_have_no_answers(tmp_path):
    questions, _ = _vqa_files(tmp_path, subtype="test-dev2015")
    records = load_vqav2_json(questions, None, "coco/test2015")
    assert records[2]["file_name"] == "coco/test2015/COCO_test2015_000000000007.jpg"
    assert "answers" not in records[2] and "answer_labels" not in records[2]


def test_bad_files_are_named(tmp_path):
    questions, annotations = _vqa_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_vqav2_json(str(tmp_path / "missing.json"), None, "img")
    broken = _write(tmp_path / "broken.json", {"data_subtype": "val2014", "questions": [{}]})
    with pytest.raises(ValueError, match=r"broken.json: questions\[0\] has no field 'question_id'"):
        load_vqav2_json(broken, None, "img")
    no_list = _write(tmp_path / "no_list.json", {"data_subtype": "val2014"})
    with pytest.raises(ValueError, match="no_list.json: missing top-level field 'questions'"):
        load_vqav2_json(no_list, None, "img")
    with pytest.raises(ValueError, match="drop_unanswerable"):
        load_vqav2_json(questions, None, "img", drop_unanswerable=True)


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (5, 3), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _vqa_arrow(path) -> str:
    """Two images in the ViLT/METER layout: lists of questions per image; label 1 unused."""
    table = pa.table(
        {
            "image": [_png((255, 0, 0)), _png((0, 255, 0))],
            "questions": [["Is it red?", "What color?"], ["Is it green?"]],
            "answers": [[["yes"], ["red", "pink"]], [["yes", "no"]]],
            "answer_labels": [[[0], [2, 3]], [[0, 4]]],
            "answer_scores": [[[1.0], [0.9, 0.3]], [[0.6, 0.3]]],
            "image_id": [11, 12],
            "question_id": [[110, 111], [120]],
            "split": ["val", "val"],
        }
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return str(path)


def test_arrow_loader_and_vocabulary(tmp_path):
    path = _vqa_arrow(tmp_path / "vqav2_val.arrow")
    records = load_vqav2_arrow([path])
    assert [(r["question_id"], r["arrow_row"], r["image_id"]) for r in records] == [
        (110, 0, 11),
        (111, 0, 11),
        (120, 1, 12),
    ]
    assert records[1]["question"] == "What color?"
    assert (records[1]["answer_labels"], records[1]["answer_scores"]) == ([2, 3], [0.9, 0.3])
    assert np.asarray(read_arrow_image(path, records[2]["arrow_row"]))[0, 0].tolist() == [0, 255, 0]
    assert load_vocabulary_from_arrow((path,)) == ["yes", "unknown", "red", "pink", "no"]
    MetadataCatalog.get("test_vqa_arrow_vocabulary").set(answer_vocabulary_files=[path])
    assert answer_vocabulary("test_vqa_arrow_vocabulary")[2] == "red"


def test_answer_vocabulary_from_registered_annotation_files(tmp_path):
    _, annotations = _vqa_files(tmp_path)
    MetadataCatalog.get("test_vqa_json_vocabulary").set(answer_vocabulary_files=[annotations])
    # multiple_choice_answer "black", "2", "maybe" occur once each: none reaches 9.
    assert answer_vocabulary("test_vqa_json_vocabulary") == []
    with pytest.raises(ValueError, match="answer_vocabulary_files"):
        answer_vocabulary("test_vqa_without_vocabulary")


def test_submission_file(tmp_path):
    path = tmp_path / "out" / "vqa_submission.json"
    write_vqa_submission({5: "yes", 2: "2"}, str(path), question_ids=[2, 5])
    assert json.loads(path.read_text()) == [
        {"question_id": 2, "answer": "2"},
        {"question_id": 5, "answer": "yes"},
    ]
    with pytest.raises(ValueError, match=r"1 question\(s\) unanswered \(e.g. \[7\]\)"):
        write_vqa_submission({5: "yes", 2: "2"}, str(path), question_ids=[2, 5, 7])
