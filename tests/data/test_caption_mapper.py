"""CaptionDatasetMapper: image, one training caption, every reference tokenised; errors."""

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from PIL import Image

from fiber_det.config import add_fiber_config
from fiber_det.data.caption_mapper import CaptionDatasetMapper

CAPTIONS = ["a red square left of a blue circle", "two green triangles and a yellow star"]


@pytest.fixture
def record(tmp_path):
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (255, 0, 0)  # left half red, right half black
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    return {"file_name": str(path), "image_id": 7, "captions": list(CAPTIONS)}


def _mapper(tokenizer, is_train: bool, **kwargs) -> CaptionDatasetMapper:
    options = {"image_size": 32, "image_format": "RGB", "max_text_len": 12, **kwargs}
    return CaptionDatasetMapper(is_train, tokenizer=tokenizer, **options)


def _ids(tokenizer, caption: str, max_len: int = 12) -> list[int]:
    return tokenizer(caption, truncation=True, max_length=max_len)["input_ids"]


def test_training_output(tiny_tokenizer, record):
    mapped = _mapper(tiny_tokenizer, True)(record)
    assert set(mapped) == {"image", "image_id", "reference_ids", "input_ids", "attention_mask"}
    image = mapped["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert image[0, :, :12].min() > 240 and image[0, :, 20:].max() < 15  # red left, no red right
    assert mapped["image_id"] == 7
    references = [r.tolist() for r in mapped["reference_ids"]]
    assert references == [_ids(tiny_tokenizer, c) for c in CAPTIONS]
    ids = mapped["input_ids"].tolist()
    assert ids in references and ids[0] == 0 and ids[-1] == 2  # <s> ... </s>
    assert len(ids) <= 12 and mapped["attention_mask"].tolist() == [1] * len(ids)
    assert record["captions"] == CAPTIONS  # the record is not modified


def test_training_caption_is_random_over_the_references(tiny_tokenizer, record):
    mapper = _mapper(tiny_tokenizer, True)
    seen = {tuple(mapper(record)["input_ids"].tolist()) for _ in range(30)}
    assert seen == {tuple(_ids(tiny_tokenizer, c)) for c in CAPTIONS}


def test_test_mode_keeps_image_and_references_only(tiny_tokenizer, record):
    mapped = _mapper(tiny_tokenizer, False)(record)
    assert set(mapped) == {"image", "image_id", "reference_ids"}
    assert len(mapped["reference_ids"]) == 2
    no_captions = {k: v for k, v in record.items() if k != "captions"}
    assert _mapper(tiny_tokenizer, False)(no_captions)["reference_ids"] == []


def test_reference_captions_and_corpus(tiny_tokenizer, record):
    """Per-caption records carry the image's full list in "reference_captions"; the corpus has
    one document per image."""
    flat = [{**record, "captions": [c], "reference_captions": list(CAPTIONS)} for c in CAPTIONS]
    mapper = _mapper(tiny_tokenizer, True)
    mapped = mapper(flat[0])
    assert mapped["input_ids"].tolist() == _ids(tiny_tokenizer, CAPTIONS[0])
    assert len(mapped["reference_ids"]) == 2
    other = {"image_id": 8, "captions": ["a yellow star"]}
    merged = [{**record, "captions": [c]} for c in CAPTIONS] + [other]
    expected = [
        [_ids(tiny_tokenizer, c) for c in CAPTIONS],
        [_ids(tiny_tokenizer, "a yellow star")],
    ]
    assert mapper.reference_corpus(flat + [other]) == expected
    assert mapper.reference_corpus(merged) == expected


def test_augmentation_keeps_the_output_size(tiny_tokenizer, record):
    mapper = _mapper(tiny_tokenizer, True, augment=True)
    assert mapper.augmentation is not None
    assert mapper(record)["image"].shape == (3, 32, 32)
    assert _mapper(tiny_tokenizer, False, augment=True).augmentation is None


def test_from_config_and_errors(tiny_tokenizer, tiny_tokenizer_dir, record):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.INPUT.TEXT.TOKENIZER = str(tiny_tokenizer_dir)
    cfg.MODEL.PRETRAIN.IMAGE_SIZE = 64
    cfg.MODEL.PRETRAIN.MAX_TEXT_LEN = 5
    with pytest.raises(ValueError, match="MASK_TOKEN_ID is 50264 but the tokenizer's <mask> id"):
        CaptionDatasetMapper(cfg, True)
    cfg.MODEL.PRETRAIN.CAPTION.MASK_TOKEN_ID = tiny_tokenizer.mask_token_id
    mapped = CaptionDatasetMapper(cfg, True)(record)
    assert mapped["image"].shape == (3, 64, 64) and mapped["input_ids"].shape == (5,)
    with pytest.raises(ValueError, match="image_id 7 has no captions"):
        _mapper(tiny_tokenizer, True)({**record, "captions": []})
    with pytest.raises(ValueError, match="image_id 7: 'captions' must be strings"):
        _mapper(tiny_tokenizer, False)({**record, "captions": [3]})


def test_cider_training_gathers_every_caption_of_the_image(tiny_tokenizer_dir, record):
    """Per-caption train records (one caption each) get all captions of their image_id from
    DATASETS.TRAIN as references when the objective is CIDEr optimisation."""
    flat = [{**record, "captions": [c]} for c in CAPTIONS]
    DatasetCatalog.register("test_caption_mapper_flat", lambda: flat)
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.INPUT.TEXT.TOKENIZER = str(tiny_tokenizer_dir)
    cfg.MODEL.PRETRAIN.CAPTION.MASK_TOKEN_ID = 4
    cfg.DATASETS.TRAIN = ("test_caption_mapper_flat",)
    mle = CaptionDatasetMapper(cfg, True)(flat[1])
    assert len(mle["reference_ids"]) == 1
    cfg.MODEL.PRETRAIN.CAPTION.OBJECTIVE = "cider_reinforce"
    mapper = CaptionDatasetMapper(cfg, True)
    assert mapper.reference_captions == {7: CAPTIONS}
    mapped = mapper(flat[1])
    assert mapped["input_ids"].tolist() == mapped["reference_ids"][1].tolist()
    assert len(mapped["reference_ids"]) == 2
    assert CaptionDatasetMapper(cfg, False).reference_captions == {}
