"""Visual questions about a synthetic scene, written as the official VQAv2 JSON pair.

Four simple, always answerable question kinds (each answer follows from the scene's objects):
  "what colour is the square?"       (only when exactly one square is present) -> "red"
  "what shape is the blue object?"   (only when exactly one blue object is present) -> "star"
  "how many circles are there?"      -> "0" .. "9" (VQA answers numbers as digits)
  "is there a red star?"             -> "yes" / "no" (present and absent pairs equally likely)
Ten annotators answer each question; each one gives a wrong answer of the same kind with
probability ANNOTATOR_NOISE, so the soft scores are not all 1 (the real annotations' spread).
"""

from collections import Counter
from dataclasses import dataclass

import numpy as np

from fiber_det.quickstart.formats import ImageRecord
from fiber_det.quickstart.world import World, plural

ANNOTATORS = 10  # answers per question, as in VQAv2
ANNOTATOR_NOISE = 0.15  # chance that one annotator gives a wrong answer of the same kind
KINDS = ("colour", "shape", "count", "exists")
_QUESTION_TYPES = {  # VQAv2 `question_type` (its first words) and `answer_type` per kind
    "colour": ("what color is the", "other"),
    "shape": ("what shape is the", "other"),
    "count": ("how many", "number"),
    "exists": ("is there a", "yes/no"),
}


@dataclass(frozen=True)
class Question:
    """One question, its true answer, and the answers a wrong annotator picks from."""

    kind: str
    text: str
    answer: str
    wrong_answers: tuple[str, ...]


def _unique_by(objects: list, attribute: str) -> list:
    """Objects whose `attribute` value no other object of the scene shares."""
    counts = Counter(getattr(obj, attribute) for obj in objects)
    return [obj for obj in objects if counts[getattr(obj, attribute)] == 1]


def candidate_questions(record: ImageRecord, world: World, rng: np.random.Generator) -> dict:
    """kind -> every valid Question about the record's scene (existence: one present and one
    absent (colour, shape) pair at most, each drawn at random)."""
    objects, shapes, colours = record.objects, list(world.shapes), list(world.colours)
    candidates = {
        "colour": [
            Question(
                "colour", f"what colour is the {o.shape}?", o.colour, _others(colours, o.colour)
            )
            for o in _unique_by(objects, "shape")
        ],
        "shape": [
            Question(
                "shape", f"what shape is the {o.colour} object?", o.shape, _others(shapes, o.shape)
            )
            for o in _unique_by(objects, "colour")
        ],
    }
    counts = Counter(obj.shape for obj in objects)
    candidates["count"] = [
        Question("count", f"how many {plural(s)} are there?", str(counts[s]), _near(counts[s]))
        for s in shapes
    ]
    present = sorted({(o.colour, o.shape) for o in objects}, key=world.all_combinations().index)
    absent = [combo for combo in world.all_combinations() if combo not in present]
    candidates["exists"] = []
    for pool, answer in ((present, "yes"), (absent, "no")):
        if pool:
            colour, shape = pool[int(rng.integers(len(pool)))]
            text = f"is there {_article(colour)} {colour} {shape}?"
            candidates["exists"].append(
                Question("exists", text, answer, ("no" if answer == "yes" else "yes",))
            )
    return candidates


def _others(values: list[str], value: str) -> tuple[str, ...]:
    return tuple(v for v in values if v != value)


def _near(count: int) -> tuple[str, ...]:
    """Miscounts an annotator may give: one more or one fewer."""
    return tuple(str(n) for n in (count - 1, count + 1) if n >= 0)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def choose_questions(
    record: ImageRecord,
    world: World,
    rng: np.random.Generator,
    count: int,
    kinds: tuple[str, ...] = KINDS,
) -> list[Question]:
    """Up to `count` distinct questions of `kinds`, taken in turns (random order) for balance."""
    candidates = {k: v for k, v in candidate_questions(record, world, rng).items() if k in kinds}
    chosen: list[Question] = []
    while len(chosen) < count and any(candidates.values()):
        for index in rng.permutation(len(kinds)):
            pool = candidates[kinds[index]]
            if pool and len(chosen) < count:
                chosen.append(pool.pop(int(rng.integers(len(pool)))))
    return chosen


def annotated_questions(
    record: ImageRecord,
    world: World,
    rng: np.random.Generator,
    count: int,
    kinds: tuple[str, ...] = KINDS,
) -> list[tuple[Question, list[str]]]:
    """`choose_questions` with the ANNOTATORS answers of each."""
    questions = choose_questions(record, world, rng, count, kinds)
    return [(question, annotator_answers(question, rng)) for question in questions]


def annotator_answers(question: Question, rng: np.random.Generator) -> list[str]:
    """ANNOTATORS answers: the true one, or with probability ANNOTATOR_NOISE a wrong one."""
    answers = []
    for _ in range(ANNOTATORS):
        wrong = rng.random() < ANNOTATOR_NOISE
        pool = question.wrong_answers
        answers.append(pool[int(rng.integers(len(pool)))] if wrong else question.answer)
    return answers


def vqa_files(
    records: list[ImageRecord],
    asked: list[list[tuple[Question, list[str]]]],
    subtype: str,
    first_question_id: int,
) -> tuple[dict, dict]:
    """The official (questions JSON, annotations JSON) of a split; question ids continue from
    `first_question_id`. `asked[i]` (questions and their answers) belongs to `records[i]`."""
    question_rows, annotation_rows = [], []
    question_id = first_question_id
    for record, image_questions in zip(records, asked, strict=True):
        for question, given in image_questions:
            question_rows.append(
                {"question_id": question_id, "image_id": record.image_id, "question": question.text}
            )
            question_type, answer_type = _QUESTION_TYPES[question.kind]
            annotation_rows.append(
                {
                    "question_id": question_id,
                    "image_id": record.image_id,
                    "answers": [
                        {
                            "answer": answer,
                            "answer_confidence": "yes" if answer == question.answer else "maybe",
                            "answer_id": index + 1,
                        }
                        for index, answer in enumerate(given)
                    ],
                    "multiple_choice_answer": Counter(given).most_common(1)[0][0],
                    "answer_type": answer_type,
                    "question_type": question_type,
                }
            )
            question_id += 1
    info = {"description": "fiber_det synthetic VQA", "data_subtype": subtype}
    questions_json = {
        "info": info,
        "task_type": "Open-Ended",
        "data_type": "synthetic",
        "data_subtype": subtype,
        "questions": question_rows,
    }
    annotations_json = {
        "info": info,
        "data_type": "synthetic",
        "data_subtype": subtype,
        "annotations": annotation_rows,
    }
    return questions_json, annotations_json
