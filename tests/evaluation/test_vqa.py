"""The official VQA accuracy on constructed annotator sets, and the VQAEvaluator end to end."""

import json

import pytest
import torch
from detectron2.data import DatasetCatalog

from fiber_det.data.datasets.vqa import answer_soft_score
from fiber_det.evaluation.vqa import VQAEvaluator, vqa_accuracy, vqa_score


@pytest.mark.parametrize("matching", range(11))
def test_leave_one_out_average_equals_the_soft_scores(matching):
    # 10 annotators, `matching` of them say "yes": min(n/3, 1) over the 10 leave-one-out
    # subsets gives 0, .3, .6, .9, 1, 1, ... (the soft targets are this metric).
    answers = ["yes"] * matching + ["no"] * (10 - matching)
    assert vqa_accuracy("yes", answers) == pytest.approx(answer_soft_score(matching))


@pytest.mark.parametrize(
    ("prediction", "answers", "accuracy"),
    [
        ("Yes.", ["yes"] * 10, 1.0),  # the prediction is normalised
        ("the dog", ["dog"] * 3 + ["cat"] * 7, 0.9),  # article dropped
        ("left right", ["left/right"] * 3 + ["left"] * 7, 0.9),  # annotators' punctuation
        # Annotators only get the punctuation step: "two" becomes "2" in the prediction, and
        # only the 2 annotators who wrote "2" match.
        ("two", ["2"] * 2 + ["two"] * 8, 0.6),
        # Unanimous annotators are not normalised at all: "t-shirt" never equals "t shirt".
        ("t-shirt", ["t-shirt"] * 10, 0.0),
        ("t-shirt", ["t-shirt"] * 9 + ["shirt"], 1.0),
        ("blue", ["red"] * 10, 0.0),
    ],
)
def test_official_accuracy_on_constructed_annotator_sets(prediction, answers, accuracy):
    assert vqa_accuracy(prediction, answers) == pytest.approx(accuracy)


def test_vqa_score_is_the_soft_target_of_the_predicted_label():
    assert vqa_score(3, [1, 3], [0.3, 0.9]) == pytest.approx(0.9)
    assert vqa_score(2, [1, 3], [0.3, 0.9]) == 0.0
    with pytest.raises(ValueError, match="at least one annotator"):
        vqa_accuracy("yes", [])


VOCABULARY = ["yes", "no", "2", "red"]
RECORDS = [
    {  # predicted "yes": 10 agree -> 1.0, soft 1.0
        "question_id": 1,
        "answers": ["yes"] * 10,
        "answer_type": "yes/no",
        "answer_labels": [0],
        "answer_scores": [1.0],
    },
    {  # predicted "2": 2 of 10 -> 0.6; the soft targets say the same
        "question_id": 2,
        "answers": ["2"] * 2 + ["3"] * 8,
        "answer_type": "number",
        "answer_labels": [2],
        "answer_scores": [0.6],
    },
    {  # predicted "no": nobody -> 0
        "question_id": 3,
        "answers": ["red"] * 10,
        "answer_type": "other",
        "answer_labels": [3],
        "answer_scores": [1.0],
    },
]


def _logits(label: int) -> dict:
    return {"vqa_logits": torch.nn.functional.one_hot(torch.tensor(label), len(VOCABULARY)) * 3.0}


def _run(name: str, records: list[dict], output_dir) -> dict:
    DatasetCatalog.register(name, lambda: records)
    evaluator = VQAEvaluator(name, str(output_dir), vocabulary=VOCABULARY)
    evaluator.reset()
    evaluator.process([{"question_id": 1}, {"question_id": 2}], [_logits(0), _logits(2)])
    evaluator.process([{"question_id": 3}, {"question_id": 1}], [_logits(1), _logits(0)])
    return evaluator.evaluate()


def test_evaluator_reports_official_accuracy_per_answer_type_and_vqa_score(tmp_path):
    metrics = _run("test_vqa_evaluator_val", RECORDS, tmp_path)["vqa"]
    assert metrics["accuracy"] == pytest.approx(100 * (1.0 + 0.6 + 0.0) / 3)
    assert metrics["accuracy_yes/no"] == pytest.approx(100.0)
    assert metrics["accuracy_number"] == pytest.approx(60.0)
    assert metrics["accuracy_other"] == pytest.approx(0.0)
    assert metrics["vqa_score"] == pytest.approx(100 * 1.6 / 3)
    assert metrics["num_questions"] == 3.0  # question 1 twice (sampler padding) counts once
    submission = json.loads((tmp_path / "vqa_submission_test_vqa_evaluator_val.json").read_text())
    assert submission == [
        {"question_id": 1, "answer": "yes"},
        {"question_id": 2, "answer": "2"},
        {"question_id": 3, "answer": "no"},
    ]
    saved = json.loads((tmp_path / "vqa_test_vqa_evaluator_val.json").read_text())
    assert saved["accuracy"] == pytest.approx(metrics["accuracy"])


def test_evaluator_on_a_test_split_writes_only_the_submission(tmp_path):
    records = [{"question_id": q} for q in (1, 2, 3)]
    metrics = _run("test_vqa_evaluator_test", records, tmp_path)["vqa"]
    assert metrics == {"num_questions": 3.0}
    assert (tmp_path / "vqa_submission_test_vqa_evaluator_test.json").is_file()


def test_evaluator_rejects_bad_outputs(tmp_path):
    evaluator = VQAEvaluator("test_vqa_evaluator_bad", str(tmp_path), vocabulary=["yes"])
    with pytest.raises(ValueError, match=r"vqa_logits must be \(V,\)"):
        evaluator.process([{"question_id": 1}], [{"vqa_logits": torch.zeros(2, 3)}])
    evaluator.process([{"question_id": 1}], [{"vqa_logits": torch.tensor([0.0, 1.0])}])
    with pytest.raises(ValueError, match="outside the answer vocabulary of 1 answers"):
        evaluator.evaluate()
