"""NLVR2: one statement about a pair of images, true or false (coarse_grained_spec.md c.2).

Dataset dicts (one per statement and image pair) carry "identifier", "pair_id" (the identifier
without its sentence index), "sentence", "label" (1 for "True", 0 for "False"; absent when the
file has no labels) and either "image_files" (the two PNGs) or "arrow_file" + "arrow_row" (a
ViLT/METER `nlvr2_*.arrow` row: columns image_0, image_1, questions, answers, identifier).

Official layout (lil-lab/nlvr, read as microsoft/FIBER's `write_nlvr2.py` does): JSON lines
`data/{train,dev,test1}.json`; the images of pair "split-set-pair" are `<pair>-img0.png` and
`<pair>-img1.png` in the split's image folder, inside the sub-folder named by the line's
"directory" field where it has one (train).
"""

import functools
import io
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from fiber_det.data.datasets.image_text import open_arrow_table
from fiber_det.data.json_lines import parse_json_line

LABELS = {"True": 1, "False": 0}


def _label(value, where: str) -> int:
    if value not in LABELS:
        raise ValueError(f"{where}: label must be 'True' or 'False', got {value!r}")
    return LABELS[value]


def _parse_line(line: str, path: str, line_number: int) -> dict:
    where = f"{path}:{line_number}"
    row = parse_json_line(line, path, line_number, ("identifier", "sentence"))
    if row["identifier"].count("-") != 3:
        raise ValueError(
            f"{where}: identifier {row['identifier']!r} is not split-set-pair-sentence"
        )
    return row


def load_nlvr2_jsonl(json_file: str, image_root: str) -> list[dict]:
    """Statements of an official NLVR2 JSON-lines file, images under `image_root`."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"NLVR2 file {json_file} does not exist")
    records = []
    with open(json_file, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = _parse_line(line, json_file, line_number)
            pair_id = row["identifier"].rsplit("-", 1)[0]
            folder = os.path.join(image_root, str(row.get("directory", "")))
            record = {
                "identifier": row["identifier"],
                "pair_id": pair_id,
                "sentence": row["sentence"],
                "image_files": [os.path.join(folder, f"{pair_id}-img{i}.png") for i in (0, 1)],
            }
            if "label" in row:
                record["label"] = _label(row["label"], f"{json_file}:{line_number}")
            records.append(record)
    return records


_ARROW_COLUMNS = ("image_0", "image_1", "questions", "answers", "identifier")


def load_nlvr2_arrow(paths: list[str]) -> list[dict]:
    """Statements of ViLT/METER `nlvr2_*.arrow` files (one row per image pair). The rows do
    not keep sentence indices: identifiers are "<pair>#<position in the row>"."""
    records = []
    for path in paths:
        table = open_arrow_table(path, _ARROW_COLUMNS)
        questions = table.column("questions").to_pylist()
        answers = table.column("answers").to_pylist()
        pair_ids = table.column("identifier").to_pylist()
        for row, pair_id in enumerate(pair_ids):
            for j, (sentence, answer) in enumerate(zip(questions[row], answers[row], strict=True)):
                records.append(
                    {
                        "identifier": f"{pair_id}#{j}",
                        "pair_id": pair_id,
                        "sentence": sentence,
                        "label": _label(answer, f"{path} row {row}"),
                        "arrow_file": path,
                        "arrow_row": row,
                    }
                )
    return records


def read_nlvr2_images(record: dict) -> tuple[Image.Image, Image.Image]:
    """The record's two RGB images (left, right), from disk or from its arrow row."""
    if "image_files" in record:
        for path in record["image_files"]:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"NLVR2 image {path} does not exist")
        return tuple(Image.open(path).convert("RGB") for path in record["image_files"])
    table = open_arrow_table(record["arrow_file"])
    row = record["arrow_row"]
    if not 0 <= row < table.num_rows:
        raise IndexError(f"{record['arrow_file']}: row {row} out of range ({table.num_rows} rows)")
    return tuple(
        Image.open(io.BytesIO(table.column(column)[row].as_py())).convert("RGB")
        for column in ("image_0", "image_1")
    )


# split -> image folder under root/nlvr2 (lil-lab/nlvr's download layout).
_IMAGE_FOLDERS = {"train": "images/train", "dev": "dev", "test1": "test1"}


def register_all_nlvr2(root: str) -> None:
    """Builtin names: nlvr2_{train,dev,test1} (JSON lines under root/nlvr2/data) and
    nlvr2_{train,dev,test1}_arrow (root/arrow/nlvr2_*.arrow). test1 is the public test (test-P)."""
    for split, images in _IMAGE_FOLDERS.items():
        json_file = os.path.join(root, "nlvr2", "data", f"{split}.json")
        loader = functools.partial(load_nlvr2_jsonl, json_file, os.path.join(root, "nlvr2", images))
        DatasetCatalog.register(f"nlvr2_{split}", loader)
        MetadataCatalog.get(f"nlvr2_{split}").set(evaluator_type="nlvr2")
        arrow = os.path.join(root, "arrow", f"nlvr2_{split}.arrow")
        DatasetCatalog.register(
            f"nlvr2_{split}_arrow", functools.partial(load_nlvr2_arrow, [arrow])
        )
        MetadataCatalog.get(f"nlvr2_{split}_arrow").set(evaluator_type="nlvr2")
