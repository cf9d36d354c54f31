"""VQAv2 data: answer normalisation, the answer vocabulary, loaders and the submission writer.

Normalisation follows the official VQA evaluation script (GT-Vision-Lab/VQA, `vqaEval.py`):
punctuation, number words, articles and contractions. The vocabulary follows the rule of
microsoft/FIBER's `write_vqa.py` (taken from ViLT): the normalised `multiple_choice_answer`
strings of train + val that occur at least 9 times, in order of first occurrence; a question's
soft targets are 0.3 / 0.6 / 0.9 / 1.0 for an answer given by 1 / 2 / 3 / >= 4 of its annotators
(coarse_grained_spec.md c.1).

Dataset dicts (one per question) carry "question_id", "question", "image_id", either "file_name"
(COCO image) or "arrow_file" + "arrow_row" (ViLT/METER arrow file), and where annotated
"answer_labels" / "answer_scores" (soft targets); the official JSONs also give "answers" (the 10
annotators' raw answers), "answer_type" and "question_type".
"""

import functools
import json
import os
import re
from collections import Counter
from itertools import chain

from detectron2.data import DatasetCatalog, MetadataCatalog

from fiber_det.data.datasets.image_text import open_arrow_table

MIN_ANSWER_COUNT = 9
SOFT_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)
UNKNOWN_ANSWER = "unknown"

_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate("zero one two three four five six seven eight nine ten".split())
}
_NUMBER_WORDS["none"] = "0"
_ARTICLES = frozenset(("a", "an", "the"))
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<")
_PUNCTUATION += ("@", "`", ",", "?", "!")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern "(?!<=\d)(\.)(?!\d)" is a look-ahead typo for a look-behind: it strips
# every "." not followed by a digit, at most 32 of them (re.UNICODE passed as `count`).
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_MAX_COUNT = 32
# The official contraction table, "written form -> canonical form". Its capitalised keys
# ("Im", "Ive", ...) and identities can never change a lowercased answer and are left out.
_CONTRACTION_TABLE = """
aint ain't  arent aren't  cant can't  couldve could've  couldnt couldn't
couldn'tve couldn't've  couldnt've couldn't've  didnt didn't  doesnt doesn't  dont don't
hadnt hadn't  hadnt've hadn't've  hadn'tve hadn't've  hasnt hasn't  havent haven't  hed he'd
hed've he'd've  he'dve he'd've  hes he's  howd how'd  howll how'll  hows how's  isnt isn't
itd it'd  itd've it'd've  it'dve it'd've  itll it'll  maam ma'am  mightnt mightn't
mightnt've mightn't've  mightn'tve mightn't've  mightve might've  mustnt mustn't
mustve must've  neednt needn't  notve not've  oclock o'clock  oughtnt oughtn't
ow's'at 'ow's'at  'ows'at 'ow's'at  'ow'sat 'ow's'at  shant shan't  shed've she'd've
she'dve she'd've  shouldve should've  shouldnt shouldn't  shouldnt've shouldn't've
shouldn'tve shouldn't've  somebody'd somebodyd  somebodyd've somebody'd've
somebody'dve somebody'd've  somebodyll somebody'll  somebodys somebody's  someoned someone'd
someoned've someone'd've  someone'dve someone'd've  someonell someone'll  someones someone's
somethingd something'd  somethingd've something'd've  something'dve something'd've
somethingll something'll  thats that's  thered there'd  thered've there'd've
there'dve there'd've  therere there're  theres there's  theyd they'd  theyd've they'd've
they'dve they'd've  theyll they'll  theyre they're  theyve they've  twas 'twas  wasnt wasn't
wed've we'd've  we'dve we'd've  weve we've  werent weren't  whatll what'll  whatre what're
whats what's  whatve what've  whens when's  whered where'd  wheres where's  whereve where've
whod who'd  whod've who'd've  who'dve who'd've  wholl who'll  whos who's  whove who've
whyll why'll  whyre why're  whys why's  wont won't  wouldve would've  wouldnt wouldn't
wouldnt've wouldn't've  wouldn'tve wouldn't've  yall y'all  yall'll y'all'll  y'allll y'all'll
yall'd've y'all'd've  y'alld've y'all'd've  y'all'dve y'all'd've  youd you'd  youd've you'd've
you'dve you'd've  youll you'll  youre you're  youve you've
"""
_WORDS = _CONTRACTION_TABLE.split()
_CONTRACTIONS = dict(zip(_WORDS[::2], _WORDS[1::2], strict=True))


def process_punctuation(text: str) -> str:
    """The official `processPunctuation`: each mark is deleted where it touches a space (or
    the text has a digit,digit comma), else replaced by a space; then periods are stripped."""
    delete = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if delete or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_COUNT)


def process_digits_articles(text: str) -> str:
    """The official `processDigitArticle`: lowercase, number words to digits, articles
    dropped, contractions restored, words joined by single spaces."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_answer(answer: str) -> str:
    """An answer as the official VQA metric compares a prediction. The vocabulary's
    `normalize_word` (FIBER/ViLT) is the same (its extra comma removal finds none left)."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digits_articles(process_punctuation(answer))


def answer_soft_score(num_annotators: int) -> float:
    """0, 0.3, 0.6, 0.9, 1.0 for 0, 1, 2, 3, >= 4 annotators giving the answer."""
    return SOFT_SCORES[min(num_annotators, len(SOFT_SCORES) - 1)]


def build_answer_vocabulary(
    annotations: list[dict], min_count: int = MIN_ANSWER_COUNT
) -> list[str]:
    """Normalised `multiple_choice_answer`s occurring >= min_count times, first-seen order."""
    counts = Counter(normalize_answer(a["multiple_choice_answer"]) for a in annotations)
    return [answer for answer, count in counts.items() if count >= min_count]


def soft_targets(
    annotator_answers: list[str], answer_to_label: dict[str, int]
) -> tuple[list[int], list[float]]:
    """(labels, scores) of one question. As the original, the annotators' answers are counted
    as written (not normalised); answers outside the vocabulary are skipped."""
    counts = Counter(annotator_answers)
    labels = [answer_to_label[a] for a in counts if a in answer_to_label]
    scores = [answer_soft_score(counts[a]) for a in counts if a in answer_to_label]
    return labels, scores


def _read_json(path: str, fields: tuple[str, ...]) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VQA file {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        content = json.load(handle)
    for field in fields:
        if field not in content:
            raise ValueError(f"{path}: missing top-level field '{field}'")
    return content


def _check_fields(items: list[dict], fields: tuple[str, ...], path: str, kind: str) -> None:
    for index, item in enumerate(items):
        for field in fields:
            if field not in item:
                raise ValueError(f"{path}: {kind}[{index}] has no field '{field}'")


@functools.lru_cache(maxsize=8)
def load_vocabulary_from_annotations(annotation_files: tuple[str, ...]) -> list[str]:
    """The answer vocabulary of official annotation JSONs (train + val in the original)."""
    annotations = []
    for path in annotation_files:
        items = _read_json(path, ("annotations",))["annotations"]
        _check_fields(items, ("multiple_choice_answer",), path, "annotations")
        annotations += items
    return build_answer_vocabulary(annotations)


def load_vqav2_json(
    question_file: str,
    annotation_file: str | None,
    image_root: str,
    answer_vocabulary: list[str] | None = None,
    drop_unanswerable: bool = False,
) -> list[dict]:
    """One dict per question of an official VQAv2 questions JSON (+ annotations, if any).

    Images are `image_root/COCO_<subtype>_<id:012d>.jpg` (test-dev2015 questions use the
    test2015 images). With `answer_vocabulary`, annotated questions get soft targets;
    `drop_unanswerable` drops those without an in-vocabulary answer (the original's filter).
    """
    if drop_unanswerable and not (annotation_file and answer_vocabulary):
        raise ValueError("drop_unanswerable needs an annotation file and an answer vocabulary")
    content = _read_json(question_file, ("questions", "data_subtype"))
    subtype = content["data_subtype"]
    prefix = "COCO_" + ("test2015" if subtype == "test-dev2015" else subtype)
    questions = content["questions"]
    _check_fields(questions, ("question_id", "image_id", "question"), question_file, "questions")
    annotations = {}
    if annotation_file is not None:
        items = _read_json(annotation_file, ("annotations",))["annotations"]
        fields = ("question_id", "answers", "answer_type", "question_type")
        _check_fields(items, fields, annotation_file, "annotations")
        annotations = {annotation["question_id"]: annotation for annotation in items}
    answer_to_label = {a: i for i, a in enumerate(answer_vocabulary or [])}
    records = []
    for question in questions:
        image_id = question["image_id"]
        record = {
            "file_name": os.path.join(image_root, f"{prefix}_{image_id:012d}.jpg"),
            "image_id": image_id,
            "question_id": question["question_id"],
            "question": question["question"],
        }
        if annotation_file is not None:
            _add_annotation(record, annotations, annotation_file, answer_to_label)
            if drop_unanswerable and not record["answer_labels"]:
                continue
        records.append(record)
    return records


def _add_annotation(record: dict, annotations: dict, path: str, answer_to_label: dict) -> None:
    annotation = annotations.get(record["question_id"])
    if annotation is None:
        raise ValueError(f"{path}: no annotation for question_id {record['question_id']}")
    record["answers"] = [a["answer"] for a in annotation["answers"]]
    record["answer_type"] = annotation["answer_type"]
    record["question_type"] = annotation["question_type"]
    if answer_to_label:
        labels, scores = soft_targets(record["answers"], answer_to_label)
        record["answer_labels"], record["answer_scores"] = labels, scores


_ARROW_COLUMNS = ("image", "questions", "question_id", "image_id")


def load_vqav2_arrow(paths: list[str]) -> list[dict]:
    """One dict per question of ViLT/METER `vqav2_*.arrow` files (one row per image, lists of
    questions; `answer_labels` / `answer_scores` are empty lists in the test files)."""
    records = []
    for path in paths:
        table = open_arrow_table(path, _ARROW_COLUMNS)
        columns = {c: table.column(c).to_pylist() for c in _ARROW_COLUMNS[1:]}
        labelled = "answer_labels" in table.column_names
        for name in ("answer_labels", "answer_scores") if labelled else ():
            columns[name] = table.column(name).to_pylist()
        for row in range(table.num_rows):
            questions = columns["questions"][row]
            for j, question in enumerate(questions):
                record = {
                    "arrow_file": path,
                    "arrow_row": row,
                    "image_id": columns["image_id"][row],
                    "question_id": columns["question_id"][row][j],
                    "question": question,
                }
                if labelled and columns["answer_labels"][row]:
                    record["answer_labels"] = list(columns["answer_labels"][row][j])
                    record["answer_scores"] = list(columns["answer_scores"][row][j])
                records.append(record)
    return records


@functools.lru_cache(maxsize=8)
def load_vocabulary_from_arrow(paths: tuple[str, ...]) -> list[str]:
    """The vocabulary stored implicitly in arrow files (their `answers` strings beside their
    `answer_labels`), as ViLT's datamodule rebuilds it; labels never seen read "unknown"."""
    label_to_answer = {}
    for path in paths:
        table = open_arrow_table(path)
        for column in ("answers", "answer_labels"):
            if column not in table.column_names:
                raise ValueError(f"{path}: no column '{column}' (has {table.column_names})")
        rows = zip(table.column("answers").to_pylist(), table.column("answer_labels").to_pylist())
        for answers, labels in rows:
            for answer, label in zip(chain(*answers), chain(*labels), strict=True):
                label_to_answer[label] = answer
    if not label_to_answer:
        raise ValueError(f"{paths}: no labelled answers to build a vocabulary from")
    size = max(label_to_answer) + 1
    return [label_to_answer.get(label, UNKNOWN_ANSWER) for label in range(size)]


def answer_vocabulary(dataset_name: str) -> list[str]:
    """The answer vocabulary of a registered VQA dataset (metadata `answer_vocabulary_files`:
    official annotation JSONs or arrow files)."""
    files = MetadataCatalog.get(dataset_name).get("answer_vocabulary_files")
    if not files:
        raise ValueError(f"dataset {dataset_name!r} has no metadata 'answer_vocabulary_files'")
    if all(path.endswith(".arrow") for path in files):
        return load_vocabulary_from_arrow(tuple(files))
    return load_vocabulary_from_annotations(tuple(files))


def write_vqa_submission(
    predictions: dict[int, str], path: str, question_ids: list[int] | None = None
) -> None:
    """EvalAI's VQA result file: [{"question_id": int, "answer": str}, ...] by question id.
    With `question_ids` (the split's questions), every one must be answered, and only those."""
    if question_ids is not None:
        missing = sorted(set(question_ids) - set(predictions))
        extra = sorted(set(predictions) - set(question_ids))
        if missing or extra:
            raise ValueError(
                f"VQA submission {path}: {len(missing)} question(s) unanswered "
                f"(e.g. {missing[:5]}), {len(extra)} not in the split (e.g. {extra[:5]})"
            )
    results = [{"question_id": int(q), "answer": predictions[q]} for q in sorted(predictions)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle)


def load_vqav2_split(
    question_file: str,
    annotation_file: str | None,
    image_root: str,
    vocabulary_files: tuple[str, ...],
    drop_unanswerable: bool,
) -> list[dict]:
    """`load_vqav2_json` with the vocabulary of `vocabulary_files` (built on first use)."""
    vocabulary = load_vocabulary_from_annotations(vocabulary_files) if annotation_file else None
    return load_vqav2_json(
        question_file, annotation_file, image_root, vocabulary, drop_unanswerable
    )


# name -> (questions subtype, annotations subtype or None, COCO image folder, drop unanswerable).
# The original trains on train + val, both without unanswerable questions (vqav2_train +
# vqav2_val_answerable); vqav2_val keeps every question for the official accuracy.
_JSON_SPLITS = {
    "vqav2_train": ("train2014", "train2014", "train2014", True),
    "vqav2_val": ("val2014", "val2014", "val2014", False),
    "vqav2_val_answerable": ("val2014", "val2014", "val2014", True),
    "vqav2_test": ("test2015", None, "test2015", False),
    "vqav2_test_dev": ("test-dev2015", None, "test2015", False),
}
_ARROW_SPLITS = ("train", "val", "trainable_val", "rest_val", "test", "test-dev")


def register_all_vqav2(root: str) -> None:
    """Builtin names: vqav2_{train,val,val_answerable,test,test_dev} (official JSONs under
    root/vqav2, COCO images under root/coco) and vqav2_{split}_arrow (root/arrow/vqav2_*)."""
    vocabulary_files = tuple(
        os.path.join(root, f"vqav2/v2_mscoco_{subtype}_annotations.json")
        for subtype in ("train2014", "val2014")
    )
    for name, (questions, annotations, images, drop) in _JSON_SPLITS.items():
        question_file = os.path.join(root, f"vqav2/v2_OpenEnded_mscoco_{questions}_questions.json")
        annotation_file = (
            os.path.join(root, f"vqav2/v2_mscoco_{annotations}_annotations.json")
            if annotations
            else None
        )
        loader = functools.partial(
            load_vqav2_split,
            question_file,
            annotation_file,
            os.path.join(root, "coco", images),
            vocabulary_files,
            drop,
        )
        DatasetCatalog.register(name, loader)
        MetadataCatalog.get(name).set(
            evaluator_type="vqa", answer_vocabulary_files=list(vocabulary_files)
        )
    arrow_vocabulary = [os.path.join(root, "arrow", f"vqav2_{s}.arrow") for s in ("train", "val")]
    for split in _ARROW_SPLITS:
        name = f"vqav2_{split.replace('-', '_')}_arrow"
        path = os.path.join(root, "arrow", f"vqav2_{split}.arrow")
        DatasetCatalog.register(name, functools.partial(load_vqav2_arrow, [path]))
        MetadataCatalog.get(name).set(
            evaluator_type="vqa", answer_vocabulary_files=arrow_vocabulary
        )
