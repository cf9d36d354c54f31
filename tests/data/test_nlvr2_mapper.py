"""NLVR2DatasetMapper: both images from files or an arrow row, the statement, the label,
independent augmentation from cfg, clear errors; and its output trains a tiny FiberNLVR2Model."""

import json
import random

import pyarrow as pa
import pytest
import torch

from fiber_det.data.datasets.nlvr2 import load_nlvr2_arrow, load_nlvr2_jsonl
from fiber_det.data.nlvr2_mapper import NLVR2DatasetMapper
from fiber_det.modeling.vision_language.nlvr2_model import FiberNLVR2Model
from tests.data.test_vqa_mapper import photo, png_bytes, resized_tensor, tiny_task_cfg

STATEMENT = "a red square left of a blue circle"


def _dev_records(tmp_path) -> list[dict]:
    """Statements about pairs dev-5-0 (images 40x30 and 30x40) and dev-6-0, official layout."""
    photo(0).save(tmp_path / "dev-5-0-img0.png")
    photo(1, size=(30, 40)).save(tmp_path / "dev-5-0-img1.png")
    photo(2).save(tmp_path / "dev-6-0-img0.png")
    photo(3).save(tmp_path / "dev-6-0-img1.png")
    rows = [
        {"identifier": "dev-5-0-0", "sentence": STATEMENT, "label": "True"},
        {"identifier": "dev-6-0-1", "sentence": "two green triangles", "label": "False"},
    ]
    path = tmp_path / "dev.json"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return load_nlvr2_jsonl(str(path), str(tmp_path))


def test_file_pair_in_bgr_with_label(tmp_path, tiny_tokenizer):
    mapper = NLVR2DatasetMapper(
        False, tokenizer=tiny_tokenizer, image_size=32, image_format="BGR", max_text_len=5
    )
    out = mapper(_dev_records(tmp_path)[0])
    assert sorted(out) == ["attention_mask", "identifier", "images", "input_ids", "label"]
    left, right = out["images"]
    assert torch.equal(left, resized_tensor(photo(0), 32, bgr=True))
    assert torch.equal(right, resized_tensor(photo(1, size=(30, 40)), 32, bgr=True))
    expected = tiny_tokenizer(STATEMENT, truncation=True, max_length=5)["input_ids"]
    assert out["input_ids"].tolist() == expected and len(expected) == 5
    assert out["attention_mask"].tolist() == [1] * 5
    assert (out["identifier"], out["label"]) == ("dev-5-0-0", 1)


def test_arrow_pair_and_unlabelled_records(tmp_path, tiny_tokenizer):
    table = pa.table(
        {
            "image_0": [png_bytes(photo(2))],
            "image_1": [png_bytes(photo(3))],
            "questions": [[STATEMENT, "two green triangles"]],
            "answers": [["False", "True"]],
            "identifier": ["test1-0-1"],
        }
    )
    path = tmp_path / "nlvr2_test1.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    records = load_nlvr2_arrow([str(path)])
    mapper = NLVR2DatasetMapper(True, tokenizer=tiny_tokenizer, image_size=16, image_format="RGB")
    out = mapper(records[1])
    assert torch.equal(out["images"][0], resized_tensor(photo(2), 16))
    assert torch.equal(out["images"][1], resized_tensor(photo(3), 16))
    assert (out["identifier"], out["label"]) == ("test1-0-1#1", 1)
    unlabelled = {k: v for k, v in records[0].items() if k != "label"}
    eval_mapper = NLVR2DatasetMapper(False, tokenizer=tiny_tokenizer, image_size=16)
    assert "label" not in eval_mapper(unlabelled)
    with pytest.raises(ValueError, match="NLVR2 record test1-0-1#0 has no 'label'"):
        mapper(unlabelled)


def test_bad_records_are_named(tmp_path, tiny_tokenizer):
    mapper = NLVR2DatasetMapper(False, tokenizer=tiny_tokenizer, image_size=16)
    record = _dev_records(tmp_path)[0]
    with pytest.raises(ValueError, match="NLVR2 record dev-5-0-0 has no 'sentence' string"):
        mapper({**record, "sentence": None})
    with pytest.raises(ValueError, match="dev-5-0-0 has no 'image_files' or 'arrow_file'"):
        mapper({k: v for k, v in record.items() if k != "image_files"})
    with pytest.raises(FileNotFoundError, match="gone.png"):
        mapper({**record, "image_files": [str(tmp_path / "gone.png")] * 2})


def test_each_image_is_augmented_independently(tmp_path, tiny_tokenizer_dir):
    cfg = tiny_task_cfg(tiny_tokenizer_dir, augment=True)
    record = _dev_records(tmp_path)[0]
    twin = {**record, "image_files": [record["image_files"][0]] * 2}
    random.seed(1)
    torch.manual_seed(1)
    left, right = NLVR2DatasetMapper(cfg, True)(twin)["images"]
    assert left.shape == right.shape == (3, 64, 64)
    assert not torch.equal(left, right)  # the same picture, two independent augmentations
    left, right = NLVR2DatasetMapper(cfg, False)(twin)["images"]
    assert torch.equal(left, right) and torch.equal(left, resized_tensor(photo(0), 64))


@pytest.mark.usefixtures("one_thread")
def test_mapped_statements_train_and_evaluate_the_model(tmp_path, tiny_tokenizer_dir):
    cfg = tiny_task_cfg(tiny_tokenizer_dir, augment=False)
    model = FiberNLVR2Model(cfg)
    mapper = NLVR2DatasetMapper(cfg, True)
    batch = [mapper(record) for record in _dev_records(tmp_path)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(8):
        loss = model(batch)["loss_nlvr2"]
        loss.backward()
        if step == 0:  # every trainable parameter learns; the 12 frozen ones are unreachable
            no_grad = [n for n, p in model.named_parameters() if p.grad is None]
            assert len(no_grad) == 12
            assert not any(model.get_parameter(n).requires_grad for n in no_grad)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    assert [o["nlvr2_logits"].argmax().item() for o in outputs] == [1, 0]
