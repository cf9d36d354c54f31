"""VQADatasetMapper: image from a file or an arrow row, the tokenised question, the soft
targets, augmentation from cfg, clear errors; and its output trains and evaluates a tiny
FiberVQAModel."""

import io
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from fiber_det.config import get_fiber_cfg
from fiber_det.data.datasets.vqa import load_vqav2_arrow
from fiber_det.data.vqa_mapper import VQADatasetMapper
from fiber_det.modeling.vision_language.vqa_model import FiberVQAModel

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUESTION = "what color is the square?"


def photo(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def resized_tensor(image: Image.Image, size: int, bgr: bool = False) -> torch.Tensor:
    array = np.asarray(image.resize((size, size), Image.BICUBIC))
    array = array[:, :, ::-1] if bgr else array
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _record(tmp_path, **fields) -> dict:
    path = tmp_path / "COCO_val2014_000000000007.png"
    photo(0).save(path)
    record = {"file_name": str(path), "image_id": 7, "question_id": 70, "question": QUESTION}
    return {**record, "answer_labels": [2, 0], "answer_scores": [1.0, 0.3], **fields}


def tiny_task_cfg(tokenizer_dir, augment: bool):
    cfg = get_fiber_cfg()
    cfg.merge_from_file(str(CONFIGS / "coarse_grained" / "tiny.yaml"))
    cfg.INPUT.TEXT.TOKENIZER = str(tokenizer_dir)
    cfg.MODEL.FIBER.TEXT.VOCAB_SIZE = 400
    cfg.MODEL.FIBER.SWIN.WINDOW_SIZE = 2
    cfg.MODEL.PRETRAIN.update(IMAGE_SIZE=64, MAX_TEXT_LEN=8, AUGMENT=augment, NUM_ANSWERS=5)
    return cfg


def test_file_record_in_bgr_with_truncated_question(tmp_path, tiny_tokenizer):
    mapper = VQADatasetMapper(
        True, tokenizer=tiny_tokenizer, image_size=32, image_format="BGR", max_text_len=6
    )
    out = mapper(_record(tmp_path))
    assert sorted(out) == sorted(
        ["image", "input_ids", "attention_mask", "question_id", "image_id", "vqa_labels"]
        + ["vqa_scores"]
    )
    assert torch.equal(out["image"], resized_tensor(photo(0), 32, bgr=True))
    expected = tiny_tokenizer(QUESTION, truncation=True, max_length=6)["input_ids"]
    assert out["input_ids"].tolist() == expected and len(expected) == 6
    assert expected[0] == 0 and expected[-1] == 2
    assert out["attention_mask"].tolist() == [1] * 6
    assert (out["question_id"], out["image_id"]) == (70, 7)
    assert out["vqa_labels"].dtype == torch.long and out["vqa_labels"].tolist() == [2, 0]
    assert torch.equal(out["vqa_scores"], torch.tensor([1.0, 0.3]))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_arrow_rows_without_answers(tmp_path, tiny_tokenizer):
    table = pa.table(
        {
            "image": [png_bytes(photo(1)), png_bytes(photo(2))],
            "questions": [["is it red?"], [QUESTION, "how many?"]],
            "question_id": [[10], [20, 21]],
            "image_id": [1, 2],
        }
    )
    path = tmp_path / "vqav2_test.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    records = load_vqav2_arrow([str(path)])
    mapper = VQADatasetMapper(False, tokenizer=tiny_tokenizer, image_size=16, image_format="RGB")
    out = mapper(records[1])
    assert torch.equal(out["image"], resized_tensor(photo(2), 16))
    assert (out["question_id"], out["image_id"]) == (20, 2)
    assert out["vqa_labels"].shape == (0,) and out["vqa_scores"].shape == (0,)
    with pytest.raises(ValueError, match="question_id 20 has no 'answer_labels'"):
        VQADatasetMapper(True, tokenizer=tiny_tokenizer, image_size=16)(records[1])


def test_bad_records_are_named(tmp_path, tiny_tokenizer):
    mapper = VQADatasetMapper(True, tokenizer=tiny_tokenizer, image_size=16)
    with pytest.raises(ValueError, match="question_id 70: 2 answer_labels but 1 answer_scores"):
        mapper(_record(tmp_path, answer_scores=[1.0]))
    with pytest.raises(ValueError, match="question_id 70 has no 'question' string"):
        mapper(_record(tmp_path, question=None))
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        mapper(_record(tmp_path, file_name=str(tmp_path / "gone.jpg")))


def test_augmentation_only_in_training_when_configured(tmp_path, tiny_tokenizer_dir):
    cfg = tiny_task_cfg(tiny_tokenizer_dir, augment=True)
    plain = resized_tensor(photo(0), 64)
    assert torch.equal(VQADatasetMapper(cfg, False)(_record(tmp_path))["image"], plain)
    random.seed(0)
    torch.manual_seed(0)
    augmented = [VQADatasetMapper(cfg, True)(_record(tmp_path))["image"] for _ in range(3)]
    assert all(image.shape == (3, 64, 64) for image in augmented)
    assert not any(torch.equal(image, plain) for image in augmented)
    assert not torch.equal(augmented[0], augmented[1])
    cfg.MODEL.PRETRAIN.AUGMENT = False
    assert torch.equal(VQADatasetMapper(cfg, True)(_record(tmp_path))["image"], plain)


@pytest.mark.usefixtures("one_thread")
def test_mapped_questions_train_and_evaluate_the_model(tmp_path, tiny_tokenizer_dir):
    cfg = tiny_task_cfg(tiny_tokenizer_dir, augment=False)
    model = FiberVQAModel(cfg)
    mapper = VQADatasetMapper(cfg, True)
    batch = [
        mapper(_record(tmp_path)),
        mapper(_record(tmp_path, question="is it red?", answer_labels=[4], answer_scores=[0.6])),
        mapper(_record(tmp_path, question="how many?", answer_labels=[], answer_scores=[])),
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(10):
        loss = model(batch)["loss_vqa"]
        loss.backward()
        if step == 0:  # every trainable parameter learns; the 12 frozen ones are unreachable
            no_grad = [n for n, p in model.named_parameters() if p.grad is None]
            assert len(no_grad) == 12 and not any(
                model.get_parameter(n).requires_grad for n in no_grad
            )
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    print(losses)
    assert losses[-1] < 0.6 * losses[0]  # from 5 ln 2 = 3.47 to about 1.7
    model.eval()
    with torch.no_grad():
        outputs = model(batch)
    assert [tuple(o["vqa_logits"].shape) for o in outputs] == [(5,)] * 3
    assert outputs[0]["vqa_logits"].argmax() == 2  # the answer given with score 1.0
