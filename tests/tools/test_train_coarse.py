"""tools/train_coarse.py: end to end on generated data (two gloo processes train and checkpoint,
--resume continues from the last checkpoint, --eval-only writes the retrieval results), the
mapper picked by MODEL.META_ARCHITECTURE and the evaluator by each test set's evaluator_type."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser, launch
from PIL import Image

from fiber_det.config import add_fiber_config
from fiber_det.data.caption_mapper import CaptionDatasetMapper
from fiber_det.data.datasets.image_text import (
    load_caption_corpus,
    load_karpathy_json,
    register_image_text_dataset,
)
from fiber_det.data.image_text_mapper import ImageTextDatasetMapper
from fiber_det.data.nlvr2_mapper import NLVR2DatasetMapper
from fiber_det.data.vqa_mapper import VQADatasetMapper
from fiber_det.evaluation.build import build_fiber_evaluator
from fiber_det.evaluation.captioning import CaptionEvaluator
from fiber_det.evaluation.nlvr2 import NLVR2Evaluator
from fiber_det.evaluation.retrieval import RetrievalEvaluator
from fiber_det.evaluation.vqa import VQAEvaluator

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = ["a red square", "two green triangles", "a yellow star", "the small purple hexagon"]


def _train_coarse():
    spec = importlib.util.spec_from_file_location(
        "train_coarse", ROOT / "tools" / "train_coarse.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_data(root: Path) -> None:
    """Four images; a JSONL training corpus and a Karpathy-format json whose test split has them."""
    rng = np.random.default_rng(0)
    images = []
    for index, caption in enumerate(CAPTIONS):
        size = (40 + 8 * index, 48)
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{index}.png")
        images.append(
            {"filename": f"{index}.png", "split": "test", "sentences": [{"raw": caption}]}
        )
    lines = [json.dumps({"image": f"{i}.png", "caption": c}) for i, c in enumerate(CAPTIONS)]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    (root / "karpathy.json").write_text(json.dumps({"images": images}))


def _register(root: Path) -> None:
    for name in ("coarse_smoke_train", "coarse_smoke_test"):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
    register_image_text_dataset(
        "coarse_smoke_train", lambda: load_caption_corpus(str(root / "train.jsonl"), str(root))
    )
    register_image_text_dataset(
        "coarse_smoke_test",
        lambda: load_karpathy_json(str(root / "karpathy.json"), str(root), "test", False),
    )


def _args(root: Path, tokenizer_dir: Path, *extra: str):
    options = [
        "INPUT.TEXT.TOKENIZER", str(tokenizer_dir),
        "MODEL.FIBER.TEXT.VOCAB_SIZE", "400",
        "MODEL.DEVICE", "cpu",
        "DATASETS.TRAIN", "('coarse_smoke_train',)",
        "DATASETS.TEST", "('coarse_smoke_test',)",
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.MAX_ITER", "2",
        "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "2",
        "TEST.EVAL_PERIOD", "0",
        "MODEL.PRETRAIN.QUEUE_SIZE", "8",
        "OUTPUT_DIR", str(root / "output"),
        *extra,
    ]  # fmt: skip
    argv = ["--config-file", str(ROOT / "configs" / "coarse_grained" / "tiny.yaml")]
    return default_argument_parser().parse_args([*argv, *options])


def _train_in_two_processes(root: str, tokenizer_dir: str, *extra: str) -> None:
    root_path = Path(root)
    _register(root_path)
    _train_coarse().main(_args(root_path, Path(tokenizer_dir), *extra))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "unused")


def test_train_resume_and_eval(tmp_path, tiny_tokenizer_dir):
    _make_data(tmp_path)
    launch(
        _train_in_two_processes, 2, dist_url="auto", args=(str(tmp_path), str(tiny_tokenizer_dir))
    )
    output = tmp_path / "output"
    assert (output / "model_final.pth").is_file()
    assert (output / "last_checkpoint").read_text().strip() == "model_final.pth"
    _register(tmp_path)
    train_coarse = _train_coarse()
    args = _args(tmp_path, tiny_tokenizer_dir, "SOLVER.MAX_ITER", "3")
    args.resume = True
    train_coarse.main(args)
    iterations = [json.loads(line)["iteration"] for line in (output / "metrics.json").open()]
    assert iterations == [1, 2, 2, 3]  # the second run resumed at iteration 2
    weights = str(output / "model_final.pth")
    args = _args(tmp_path, tiny_tokenizer_dir, "MODEL.WEIGHTS", weights)
    args.eval_only = True
    results = train_coarse.main(args)
    recalls = results["retrieval"]
    assert set(recalls) >= {"itc_tr_r1", "itc_ir_r10", "itm_tr_r1", "itm_r_mean"}
    assert recalls["itc_tr_r10"] == 100.0  # 4 candidates
    written = json.loads(
        (output / "inference" / "coarse_smoke_test" / "retrieval_results.json").read_text()
    )
    assert written == pytest.approx(recalls)


def _cfg(tokenizer_dir: Path, architecture: str, *opts: str):
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / "coarse_grained" / "tiny.yaml"))
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", architecture, *opts])
    cfg.INPUT.TEXT.TOKENIZER = str(tokenizer_dir)
    cfg.MODEL.PRETRAIN.CAPTION.MASK_TOKEN_ID = 4  # the <mask> of fiber_det's tokenizers
    return cfg


@pytest.mark.parametrize(
    "architecture, mapper_class",
    [
        ("FiberPretrainModel", ImageTextDatasetMapper),
        ("FiberVQAModel", VQADatasetMapper),
        ("FiberNLVR2Model", NLVR2DatasetMapper),
        ("FiberCaptionModel", CaptionDatasetMapper),
    ],
)
def test_mapper_follows_the_meta_architecture(tiny_tokenizer_dir, architecture, mapper_class):
    cfg = _cfg(tiny_tokenizer_dir, architecture)
    for is_train in (True, False):
        mapper = _train_coarse().build_coarse_mapper(cfg, is_train)
        assert type(mapper) is mapper_class and mapper.is_train is is_train


def test_unknown_meta_architecture_is_named(tiny_tokenizer_dir):
    cfg = _cfg(tiny_tokenizer_dir, "GroundingDetector")
    with pytest.raises(ValueError, match="'GroundingDetector' is not a coarse-stage model"):
        _train_coarse().build_coarse_mapper(cfg, True)


def test_unused_parameters_are_tolerated_where_modules_go_unused(tiny_tokenizer_dir):
    trainer = _train_coarse().CoarseTrainer
    assert not trainer.find_unused_parameters(_cfg(tiny_tokenizer_dir, "FiberPretrainModel"))
    no_mlm = _cfg(tiny_tokenizer_dir, "FiberPretrainModel", "MODEL.PRETRAIN.MLM_WEIGHT", "0.0")
    assert trainer.find_unused_parameters(no_mlm)
    assert trainer.find_unused_parameters(_cfg(tiny_tokenizer_dir, "FiberVQAModel"))


class _PairScorer(torch.nn.Module):
    def itm_match_scores(self, images, texts):
        return torch.zeros(len(images))


def _register_typed(name: str, evaluator_type: str, **metadata) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, list)
    MetadataCatalog.get(name).set(evaluator_type=evaluator_type, **metadata)


def test_evaluator_follows_the_evaluator_type(tmp_path, tiny_tokenizer_dir):
    answers = ["yes"] * 9 + ["two"] * 10 + ["red"] * 8  # "red" is below the 9-answer cut
    annotations = {"annotations": [{"multiple_choice_answer": a} for a in answers]}
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    vocabulary_files = [str(tmp_path / "annotations.json")]
    _register_typed("unit_typed_vqa", "vqa", answer_vocabulary_files=vocabulary_files)
    _register_typed("unit_typed_nlvr2", "nlvr2")
    _register_typed("unit_typed_caption", "caption")
    _register_typed("unit_typed_retrieval", "retrieval")
    _register_typed("unit_typed_other", "segmentation")
    cfg = _cfg(tiny_tokenizer_dir, "FiberVQAModel", "MODEL.PRETRAIN.NUM_ANSWERS", "2")
    vqa = build_fiber_evaluator(cfg, "unit_typed_vqa", str(tmp_path))
    assert isinstance(vqa, VQAEvaluator) and vqa._vocabulary == ["yes", "2"]
    assert isinstance(build_fiber_evaluator(cfg, "unit_typed_nlvr2", str(tmp_path)), NLVR2Evaluator)
    caption = build_fiber_evaluator(cfg, "unit_typed_caption", str(tmp_path))
    assert isinstance(caption, CaptionEvaluator)
    assert caption.tokenizer.decode([0, 2]) == "<s></s>"
    scorer = _PairScorer()
    retrieval = build_fiber_evaluator(cfg, "unit_typed_retrieval", str(tmp_path), model=scorer)
    assert isinstance(retrieval, RetrievalEvaluator)
    assert retrieval.scorer == scorer.itm_match_scores and retrieval.itm_top_k == 4
    with pytest.raises(ValueError, match="has 2 answers but MODEL.PRETRAIN.NUM_ANSWERS is 3"):
        cfg.MODEL.PRETRAIN.NUM_ANSWERS = 3
        build_fiber_evaluator(cfg, "unit_typed_vqa", str(tmp_path))
    with pytest.raises(ValueError, match="ITM_RERANK_TOP_K 4 scores pairs .* Linear has none"):
        build_fiber_evaluator(
            cfg, "unit_typed_retrieval", str(tmp_path), model=torch.nn.Linear(1, 1)
        )
    cfg.MODEL.PRETRAIN.ITM_RERANK_TOP_K = 0  # ITC only: no pair scorer needed
    assert build_fiber_evaluator(cfg, "unit_typed_retrieval", str(tmp_path)).scorer is None
    with pytest.raises(ValueError, match="evaluator_type 'segmentation'"):
        build_fiber_evaluator(cfg, "unit_typed_other", str(tmp_path))
