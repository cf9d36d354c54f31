"""NLVR2 loaders: official JSON lines with their image folders, and the arrow files."""

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from fiber_det.data.datasets.nlvr2 import load_nlvr2_arrow, load_nlvr2_jsonl, read_nlvr2_images


def _jsonl(path, rows) -> str:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return str(path)


def test_official_json_lines_with_train_sub_folders(tmp_path):
    rows = [
        {"identifier": "train-10-1-0", "sentence": "Two dogs.", "label": "True", "directory": 3},
        {"identifier": "train-10-2-0", "sentence": "Two dogs.", "label": "False", "directory": 3},
    ]
    records = load_nlvr2_jsonl(_jsonl(tmp_path / "train.json", rows), "nlvr2/images/train")
    assert [(r["identifier"], r["pair_id"], r["label"]) for r in records] == [
        ("train-10-1-0", "train-10-1", 1),
        ("train-10-2-0", "train-10-2", 0),
    ]
    assert records[0]["image_files"] == [
        "nlvr2/images/train/3/train-10-1-img0.png",
        "nlvr2/images/train/3/train-10-1-img1.png",
    ]
    assert records[1]["sentence"] == "Two dogs."


def test_dev_images_and_pairs_read_from_disk(tmp_path):
    for side, color in (("img0", (255, 0, 0)), ("img1", (0, 0, 255))):
        Image.new("RGB", (4 + len(side), 3), color).save(tmp_path / f"dev-5-0-{side}.png")
    rows = [{"identifier": "dev-5-0-1", "sentence": "Red left.", "label": "True"}]
    (record,) = load_nlvr2_jsonl(_jsonl(tmp_path / "dev.json", rows), str(tmp_path))
    left, right = read_nlvr2_images(record)
    assert np.asarray(left)[0, 0].tolist() == [255, 0, 0]
    assert np.asarray(right)[0, 0].tolist() == [0, 0, 255]
    missing = {**record, "image_files": [str(tmp_path / "gone.png")] * 2}
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_nlvr2_images(missing)


def test_unlabelled_lines_and_bad_lines(tmp_path):
    rows = [{"identifier": "test2-1-0-0", "sentence": "Cats."}]
    (record,) = load_nlvr2_jsonl(_jsonl(tmp_path / "test2.json", rows), "img")
    assert "label" not in record
    bad_label = _jsonl(
        tmp_path / "a.json", [{"identifier": "dev-1-0-0", "sentence": "x", "label": 1}]
    )
    with pytest.raises(ValueError, match=r"a.json:1: label must be 'True' or 'False', got 1"):
        load_nlvr2_jsonl(bad_label, "img")
    bad_id = _jsonl(tmp_path / "b.json", [{"identifier": "dev-1", "sentence": "x"}])
    with pytest.raises(ValueError, match="b.json:1: identifier 'dev-1'"):
        load_nlvr2_jsonl(bad_id, "img")
    (tmp_path / "c.json").write_text("{not json\n")
    with pytest.raises(ValueError, match="c.json:1: not valid json"):
        load_nlvr2_jsonl(str(tmp_path / "c.json"), "img")
    with pytest.raises(FileNotFoundError, match="none.json"):
        load_nlvr2_jsonl(str(tmp_path / "none.json"), "img")


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_arrow_rows_give_one_record_per_statement(tmp_path):
    table = pa.table(
        {
            "image_0": [_png((10, 20, 30)), _png((1, 2, 3))],
            "image_1": [_png((40, 50, 60)), _png((4, 5, 6))],
            "questions": [["One cat.", "Two cats."], ["A dog."]],
            "answers": [["True", "False"], ["False"]],
            "identifier": ["dev-7-0", "dev-7-1"],
        }
    )
    path = str(tmp_path / "nlvr2_dev.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    records = load_nlvr2_arrow([path])
    assert [(r["identifier"], r["pair_id"], r["label"], r["arrow_row"]) for r in records] == [
        ("dev-7-0#0", "dev-7-0", 1, 0),
        ("dev-7-0#1", "dev-7-0", 0, 0),
        ("dev-7-1#0", "dev-7-1", 0, 1),
    ]
    left, right = read_nlvr2_images(records[2])
    assert np.asarray(left)[0, 0].tolist() == [1, 2, 3]
    assert np.asarray(right)[0, 0].tolist() == [4, 5, 6]
    with pytest.raises(IndexError, match="row 9"):
        read_nlvr2_images({**records[0], "arrow_row": 9})
