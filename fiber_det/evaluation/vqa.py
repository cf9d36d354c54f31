"""VQAv2 evaluation: the official accuracy, the soft-target VQA score, the submission file.

The official metric (GT-Vision-Lab/VQA, `vqaEval.py`) normalises the prediction fully
(`normalize_answer`); the 10 annotators' answers only get the punctuation step, and only when
they disagree. A prediction scores min(#other annotators giving it / 3, 1), averaged over the 10
ways of leaving one annotator out. The "VQA score" the original logs (ViLT's `VQAScore`) is the
soft target of the predicted label, which equals that accuracy before normalisation.
"""

import logging
import os
from collections import defaultdict

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator

from fiber_det.data.datasets.vqa import (
    answer_vocabulary,
    normalize_answer,
    process_punctuation,
    write_vqa_submission,
)
from fiber_det.evaluation.common import gather_on_main, report

logger = logging.getLogger(__name__)


def vqa_accuracy(prediction: str, annotator_answers: list[str]) -> float:
    """The official accuracy in [0, 1] of one predicted answer against its annotators."""
    if not annotator_answers:
        raise ValueError("VQA accuracy needs at least one annotator answer")
    predicted = normalize_answer(prediction)
    answers = list(annotator_answers)
    if len(set(answers)) > 1:
        answers = [process_punctuation(answer) for answer in answers]
    matches = [answer == predicted for answer in answers]
    total = sum(matches)
    left_out = [min(1.0, (total - matched) / 3) for matched in matches]
    return sum(left_out) / len(left_out)


def vqa_score(label: int, answer_labels: list[int], answer_scores: list[float]) -> float:
    """The soft target of the predicted label (0 when it is not among the question's)."""
    return sum(s for a, s in zip(answer_labels, answer_scores, strict=True) if a == label)


class VQAEvaluator(DatasetEvaluator):
    """Official VQA accuracy (overall and per answer type) and the VQA score, in percent.

    `process` reads `inputs[i]["question_id"]` and `outputs[i]["vqa_logits"]` (V,) scores over
    the answer vocabulary; the prediction is the argmax answer. Splits without answers (test,
    test-dev) only get the submission file `vqa_submission_<dataset>.json` in output_dir.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        vocabulary: list[str] | None = None,
    ):
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self._vocabulary = vocabulary
        self._predictions: list[tuple[int, int]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for item, output in zip(inputs, outputs, strict=True):
            logits = output["vqa_logits"]
            if logits.dim() != 1:
                raise ValueError(f"vqa_logits must be (V,), got shape {tuple(logits.shape)}")
            self._predictions.append((item["question_id"], int(logits.argmax())))

    def evaluate(self) -> dict:
        gathered = gather_on_main(self._predictions)
        if gathered is None:
            return {}
        labels = dict(gathered)  # a question seen twice (sampler padding) counts once
        vocabulary = self._vocabulary or answer_vocabulary(self.dataset_name)
        bad = [label for label in labels.values() if label >= len(vocabulary)]
        if bad:
            raise ValueError(
                f"{self.dataset_name}: predicted label {bad[0]} outside the answer vocabulary "
                f"of {len(vocabulary)} answers"
            )
        answers = {qid: vocabulary[label] for qid, label in labels.items()}
        if self.output_dir:
            path = os.path.join(self.output_dir, f"vqa_submission_{self.dataset_name}.json")
            write_vqa_submission(answers, path)
            logger.info(f"Saved VQA answers of {self.dataset_name} to {path}")
        records = {r["question_id"]: r for r in DatasetCatalog.get(self.dataset_name)}
        metrics = _metrics(labels, answers, records, self.dataset_name)
        report(
            f"VQA {self.dataset_name}", metrics, self.output_dir, f"vqa_{self.dataset_name}.json"
        )
        return {"vqa": metrics}


def _metrics(
    labels: dict[int, int], answers: dict[int, str], records: dict, name: str
) -> dict[str, float]:
    """Accuracy (overall, per answer type) where annotators are known; VQA score where soft
    targets are; percent."""
    unknown = [qid for qid in labels if qid not in records]
    if unknown:
        raise ValueError(f"{name}: question ids not in the dataset, e.g. {unknown[:5]}")
    if len(answers) < len(records):
        logger.warning(f"{name}: {len(records) - len(answers)} questions have no prediction")
    metrics = {"num_questions": float(len(answers))}
    annotated = [qid for qid in answers if records[qid].get("answers")]
    if annotated:
        per_type = defaultdict(list)
        for qid in annotated:
            accuracy = vqa_accuracy(answers[qid], records[qid]["answers"])
            per_type["accuracy"].append(accuracy)
            per_type[f"accuracy_{records[qid].get('answer_type', 'unknown')}"].append(accuracy)
        metrics.update({key: 100 * sum(v) / len(v) for key, v in sorted(per_type.items())})
    scored = [(qid, label) for qid, label in labels.items() if "answer_labels" in records[qid]]
    if scored:
        total = sum(
            vqa_score(label, records[qid]["answer_labels"], records[qid]["answer_scores"])
            for qid, label in scored
        )
        metrics["vqa_score"] = 100 * total / len(scored)
    return metrics
