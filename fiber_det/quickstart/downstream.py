"""The downstream-task files of the synthetic world (train / val / test splits):

    OUT/vqav2/v2_OpenEnded_synthetic_SPLIT_questions.json   official VQAv2 questions JSON
    OUT/vqav2/v2_synthetic_SPLIT_annotations.json           official VQAv2 annotations JSON
    OUT/nlvr2/data/SPLIT.json                               NLVR2 JSON lines
    OUT/nlvr2/images/SPLIT/<split>-<i>-0-img{0,1}.png       the two images of pair i

VQA asks about the images of the split (images/SPLIT/ID.*); NLVR2 pair i is images 2i and
2i + 1 of the split, copied as PNGs under the official names. Question and statement draws come
from `numpy.random.default_rng([seed, split, index, stream])`, so they are deterministic and
independent of the scene draws.
"""

import json
import os
from pathlib import Path

import cv2
import numpy as np

from fiber_det.quickstart.formats import ImageRecord
from fiber_det.quickstart.nlvr2 import choose_statements, nlvr2_lines, pair_id
from fiber_det.quickstart.vqa import annotated_questions, vqa_files
from fiber_det.quickstart.world import World

DOWNSTREAM_SPLITS = ("train", "val", "test")
_VQA_STREAM, _NLVR2_STREAM = 1, 2


def vqa_question_file(root: str | Path, split: str) -> str:
    return os.path.join(root, "vqav2", f"v2_OpenEnded_synthetic_{split}_questions.json")


def vqa_annotation_file(root: str | Path, split: str) -> str:
    return os.path.join(root, "vqav2", f"v2_synthetic_{split}_annotations.json")


def nlvr2_json_file(root: str | Path, split: str) -> str:
    return os.path.join(root, "nlvr2", "data", f"{split}.json")


def nlvr2_image_dir(root: str | Path, split: str) -> str:
    return os.path.join(root, "nlvr2", "images", split)


def _dump(path: str, data: object) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data) + "\n", encoding="utf-8")


def write_vqa(
    out_dir: Path,
    world: World,
    by_split: dict,
    seed: int,
    questions_per_image: int,
    kinds: tuple[str, ...],
) -> tuple[dict[str, int], list[str]]:
    """The VQAv2 JSON pair of every downstream split (questions of `kinds`); returns the
    question count per split and every question and answer text (for the tokenizer corpus)."""
    counts, texts, question_id = {}, [], 1
    for split_index, split in enumerate(DOWNSTREAM_SPLITS):
        records: list[ImageRecord] = by_split[split]
        asked = [
            annotated_questions(
                record,
                world,
                np.random.default_rng([seed, split_index, index, _VQA_STREAM]),
                questions_per_image,
                kinds,
            )
            for index, record in enumerate(records)
        ]
        questions, annotations = vqa_files(records, asked, split, question_id)
        _dump(vqa_question_file(out_dir, split), questions)
        _dump(vqa_annotation_file(out_dir, split), annotations)
        counts[split] = len(questions["questions"])
        question_id += counts[split]
        texts += [q.text for image in asked for q, _ in image]
        texts += [answer for image in asked for _, given in image for answer in given]
    return counts, texts


def write_nlvr2(
    out_dir: Path, by_split: dict, seed: int, statements_per_pair: int
) -> tuple[dict[str, int], list[str]]:
    """NLVR2 JSON lines and pair images of every downstream split; returns the statement count
    per split and every statement."""
    counts, texts = {}, []
    for split_index, split in enumerate(DOWNSTREAM_SPLITS):
        records: list[ImageRecord] = by_split[split]
        image_dir = Path(nlvr2_image_dir(out_dir, split))
        image_dir.mkdir(parents=True, exist_ok=True)
        statements = []
        for index in range(len(records) // 2):
            left, right = records[2 * index], records[2 * index + 1]
            rng = np.random.default_rng([seed, split_index, index, _NLVR2_STREAM])
            statements.append(choose_statements(left, right, rng, statements_per_pair))
            for side, record in enumerate((left, right)):
                pixels = cv2.imread(str(out_dir / "images" / split / record.file_name))
                target = image_dir / f"{pair_id(split, index)}-img{side}.png"
                cv2.imwrite(str(target), pixels, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        lines = nlvr2_lines(split, statements)
        path = Path(nlvr2_json_file(out_dir, split))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        counts[split] = len(lines)
        texts += [line["sentence"] for line in lines]
    return counts, texts
