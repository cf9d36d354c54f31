"""Image-caption loaders (Karpathy json, JSONL / TSV, arrow), the mapper and MLM masking."""

import io
import json
import random

import numpy as np
import pyarrow as pa
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from fiber_det.data.datasets.image_text import (
    load_arrow_captions,
    load_caption_corpus,
    load_karpathy_json,
    read_arrow_image,
)
from fiber_det.data.image_text_mapper import ImageTextDatasetMapper, mask_tokens_for_mlm


def _karpathy(tmp_path):
    images = [
        {"filepath": "val2014", "filename": "a.jpg", "split": "train", "cocoid": 7,
         "sentences": [{"raw": "a red square "}, {"raw": "a blue circle"}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "test", "cocoid": 8,
         "sentences": [{"raw": "two green triangles"}]},
        {"filepath": "train2014", "filename": "c.jpg", "split": "restval", "cocoid": 9,
         "sentences": [{"raw": "a yellow star"}]},
    ]  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return str(path)


def test_karpathy_train_is_per_caption_and_test_per_image(tmp_path):
    path = _karpathy(tmp_path)
    train = load_karpathy_json(path, "/data/coco", "train", per_caption=True)
    assert [(r["file_name"], r["image_id"], r["captions"]) for r in train] == [
        ("/data/coco/val2014/a.jpg", 7, ["a red square"]),
        ("/data/coco/val2014/a.jpg", 7, ["a blue circle"]),
    ]
    test = load_karpathy_json(path, "/data/coco", "test", per_caption=False)
    assert test == [
        {
            "file_name": "/data/coco/val2014/b.jpg",
            "image_id": 8,
            "captions": ["two green triangles"],
        }
    ]
    assert load_karpathy_json(path, "/data/coco", "val", per_caption=False) == []
    with pytest.raises(ValueError, match="restval"):
        load_karpathy_json(path, "/data/coco", "restval", per_caption=False)


def test_karpathy_errors_name_file_and_field(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"images": [{"filename": "x.jpg", "split": "train"}]}))
    with pytest.raises(ValueError, match=r"broken.json: images\[0\] has no field 'sentences'"):
        load_karpathy_json(str(path), "", "train", per_caption=True)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_karpathy_json(str(tmp_path / "missing.json"), "", "train", per_caption=True)


def test_caption_corpora_jsonl_and_tsv(tmp_path):
    jsonl = tmp_path / "cc.jsonl"
    jsonl.write_text(
        '{"image": "x/1.jpg", "caption": "a dog"}\n\n{"image": "2.jpg", "caption": "cat "}\n'
    )
    tsv = tmp_path / "sbu.tsv"
    tsv.write_text("x/1.jpg\ta dog\n2.jpg\tcat\n")
    expected = [
        {"file_name": "root/x/1.jpg", "image_id": "x/1.jpg", "captions": ["a dog"]},
        {"file_name": "root/2.jpg", "image_id": "2.jpg", "captions": ["cat"]},
    ]
    assert load_caption_corpus(str(jsonl), "root") == expected
    assert load_caption_corpus(str(tsv), "root") == expected
    tsv.write_text("x/1.jpg\ta dog\nno caption here\n")
    with pytest.raises(ValueError, match=r"sbu.tsv:2: expected"):
        load_caption_corpus(str(tsv))
    jsonl.write_text('{"image": "x/1.jpg"}\n')
    with pytest.raises(ValueError, match=r"cc.jsonl:1: field 'caption'"):
        load_caption_corpus(str(jsonl))


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_arrow_files_read_lazily_with_deduplicated_captions(tmp_path):
    table = pa.table(
        {
            "image": [_png_bytes((255, 0, 0)), _png_bytes((0, 0, 255))],
            "caption": [["red", "crimson", "red"], ["blue"]],
            "image_id": ["r.jpg", "b.jpg"],
        }
    )
    path = str(tmp_path / "coco_caption_karpathy_test.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    per_image = load_arrow_captions([path], per_caption=False)
    assert [r["captions"] for r in per_image] == [["red", "crimson"], ["blue"]]
    per_caption = load_arrow_captions([path], per_caption=True)
    assert [(r["image_id"], r["arrow_row"], r["captions"]) for r in per_caption] == [
        ("r.jpg", 0, ["red"]),
        ("r.jpg", 0, ["crimson"]),
        ("b.jpg", 1, ["blue"]),
    ]
    assert np.asarray(read_arrow_image(path, 1))[0, 0].tolist() == [0, 0, 255]
    with pytest.raises(IndexError, match="row 5"):
        read_arrow_image(path, 5)


def test_builtin_names_are_registered_for_retrieval():
    for name in ("coco_karpathy_test", "flickr30k_karpathy_val", "coco_karpathy_train_arrow"):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == "retrieval"


def test_builtin_caption_names_read_the_karpathy_records_for_captioning():
    for name in ("coco_karpathy_test_caption", "flickr30k_karpathy_val_caption_arrow"):
        assert MetadataCatalog.get(name).evaluator_type == "caption"
    assert "coco_karpathy_train_caption" not in DatasetCatalog.list()
    caption_loader = DatasetCatalog["coco_karpathy_test_caption"]
    retrieval_loader = DatasetCatalog["coco_karpathy_test"]
    assert caption_loader.args == retrieval_loader.args  # same file, one record per image


def test_mapper_resizes_bicubic_and_tokenizes(tmp_path, tiny_tokenizer):
    image_path = tmp_path / "img.png"
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[..., 0] = 200  # red in RGB
    Image.fromarray(pixels).save(image_path)
    record = {"file_name": str(image_path), "image_id": 3, "captions": ["a red square", "x"]}
    mapper = ImageTextDatasetMapper(
        False, tokenizer=tiny_tokenizer, image_size=8, image_format="BGR", max_text_len=4
    )
    out = mapper(record)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 8, 8)
    assert out["image"][:, 0, 0].tolist() == [0, 0, 200]  # BGR
    assert (out["height"], out["width"]) == (10, 20)
    assert len(out["texts"]) == 2 and "captions" in record
    first = out["texts"][0]
    assert first["input_ids"][0] == 0 and first["input_ids"][-1] == 2
    assert len(first["input_ids"]) == 4  # truncated to max_text_len
    train = ImageTextDatasetMapper(True, tokenizer=tiny_tokenizer, image_size=8)(record)
    assert len(train["texts"]) == 1
    assert set(train["texts"][0]) >= {"mlm_input_ids", "mlm_labels", "input_ids"}


def test_mlm_masking_rules():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (400, 30), generator=generator)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = special[:, 20:] = True
    masked, labels = mask_tokens_for_mlm(ids, special, 4, 100, 0.15, generator)
    selected = labels != -100
    assert not selected[special].any()
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    assert selected[~special].float().mean().item() == pytest.approx(0.15, abs=0.01)
    to_mask = (masked == 4) & selected
    assert to_mask[selected].float().mean().item() == pytest.approx(0.8, abs=0.03)
    unchanged = (masked == ids) & selected
    # a random replacement equals the original 1 % of the time (vocab 100)
    assert unchanged[selected].float().mean().item() == pytest.approx(0.1 + 0.001, abs=0.02)


def test_mapper_augments_training_images_only(tmp_path, tiny_tokenizer):
    """MODEL.PRETRAIN.AUGMENT: albef_randaug on training images (seeded), never at test."""
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, :16] = 255  # left half white: a flip or crop moves it
    image_path = tmp_path / "half.png"
    Image.fromarray(pixels).save(image_path)
    record = {"file_name": str(image_path), "image_id": 1, "captions": ["a square"]}
    kwargs = {"tokenizer": tiny_tokenizer, "image_size": 32, "augment": True}
    plain = ImageTextDatasetMapper(False, **kwargs)(record)["image"]
    assert torch.equal(
        plain,
        ImageTextDatasetMapper(False, tokenizer=tiny_tokenizer, image_size=32)(record)["image"],
    )
    changed = []
    for seed in range(4):
        torch.manual_seed(seed)
        random.seed(seed)
        changed.append(
            not torch.equal(ImageTextDatasetMapper(True, **kwargs)(record)["image"], plain)
        )
    assert any(changed)
    torch.manual_seed(0)
    random.seed(0)
    first = ImageTextDatasetMapper(True, **kwargs)(record)["image"]
    torch.manual_seed(0)
    random.seed(0)
    assert torch.equal(first, ImageTextDatasetMapper(True, **kwargs)(record)["image"])
