"""tools/train_net.py wiring: loaders, evaluator choice and the one-command ODinW summary."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from fiber_det.checkpoint import read_model_weights
from fiber_det.config import get_fiber_cfg
from fiber_det.data.datasets.detection import register_detection_dataset
from fiber_det.data.datasets.grounding import register_grounding_dataset
from fiber_det.evaluation.build import build_fiber_evaluator
from fiber_det.evaluation.flickr import FlickrRecallEvaluator
from fiber_det.predictor import GroundingPredictor
from tests.conftest import REPO_ROOT
from tests.data.formats import coco_json, flickr_json
from tests.modeling.grounding.tiny_detector import tiny_grounding_cfg
from tests.tools.tool_module import load_tool

TRAIN_NET = Path(__file__).resolve().parents[2] / "tools" / "train_net.py"


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class GroundTruthModel(torch.nn.Module):
    """Answers every image with its own ground-truth boxes (score 1): a perfect detector."""

    def __init__(self, dataset_names):
        super().__init__()
        self.records = {
            (r["file_name"]): r for name in dataset_names for r in DatasetCatalog.get(name)
        }

    def forward(self, inputs):
        outputs = []
        for item in inputs:
            assert item["prompts"] and item["image"].dtype == torch.uint8
            annotations = self.records[item["file_name"]]["annotations"]
            boxes = [
                BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations
            ]
            instances = Instances((item["height"], item["width"]))
            instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
            instances.scores = torch.ones(len(boxes))
            instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
            outputs.append({"instances": instances})
        return outputs


@pytest.fixture(scope="module")
def odinw_pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("odinw")
    names = []
    for index, classes in enumerate((["fish", "shark"], ["pothole"])):
        name = f"test_odinw_{index}_test"
        boxes = [[(len(classes) - 1, [4, 4, 20, 16])], [(0, [30, 10, 12, 30])]]
        json_file = coco_json(tmp / f"{index}.json", tmp / f"img{index}", classes, boxes)
        register_detection_dataset(name, str(json_file), str(tmp / f"img{index}"), "odinw")
        names.append(name)
    return names


def _cfg(tmp_path, tokenizer_dir, test_sets):
    cfg = get_fiber_cfg()
    cfg.DATASETS.TEST = tuple(test_sets)
    cfg.INPUT.TEXT.TOKENIZER = str(tokenizer_dir)
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_odinw_one_command_summary(tmp_path, tiny_tokenizer_dir, odinw_pair):
    train_net = _train_net()
    cfg = _cfg(tmp_path, tiny_tokenizer_dir, odinw_pair)
    results = train_net.evaluate(cfg, GroundTruthModel(odinw_pair))
    assert [results[name]["bbox"]["AP"] for name in odinw_pair] == pytest.approx([100.0, 100.0])
    assert results["odinw"]["odinw_average_AP"] == pytest.approx(100.0)
    assert (tmp_path / "inference" / "odinw_summary.json").is_file()


def test_train_loader_emits_the_contract(tmp_path, tiny_tokenizer_dir, odinw_pair):
    train_net = _train_net()
    cfg = _cfg(tmp_path, tiny_tokenizer_dir, odinw_pair)
    cfg.DATASETS.TRAIN = tuple(odinw_pair)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    batch = next(iter(train_net.Trainer.build_train_loader(cfg)))
    assert len(batch) == 2
    for item in batch:
        (prompt,) = item["prompts"]
        instances = item["instances"]
        assert instances.gt_positive_map.shape == (1, len(prompt["input_ids"]))
        assert instances.gt_positive_map.sum() > 0 and len(instances.gt_boxes) == 1


def test_evaluator_choice_and_unknown_name(tmp_path, tiny_tokenizer_dir, odinw_pair):
    cfg = _cfg(tmp_path, tiny_tokenizer_dir, odinw_pair)
    assert isinstance(build_fiber_evaluator(cfg, odinw_pair[0], str(tmp_path)), COCOEvaluator)
    register_grounding_dataset(
        "test_train_net_flickr", str(flickr_json(tmp_path)), str(tmp_path / "images")
    )
    evaluator = build_fiber_evaluator(cfg, "test_train_net_flickr", str(tmp_path))
    assert isinstance(evaluator, FlickrRecallEvaluator)
    register_grounding_dataset("test_train_net_train_only", "x.json", "img", evaluator_type="")
    with pytest.raises(ValueError, match="'test_train_net_train_only' has evaluator_type ''"):
        build_fiber_evaluator(cfg, "test_train_net_train_only", str(tmp_path))
    with pytest.raises(KeyError, match="unknown dataset name 'odinw_nope_test'"):
        _train_net().Trainer.build_test_loader(cfg, "odinw_nope_test")


def test_training_writes_a_saved_model_directory(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    train_net = _train_net()
    cfg = tiny_grounding_cfg(len(tiny_tokenizer))
    boxes = [[(0, [4, 4, 20, 16])], [(0, [30, 10, 12, 30])]]
    json_file = coco_json(tmp_path / "fish.json", tmp_path / "images", ["fish"], boxes)
    register_detection_dataset("test_save_pretrained", str(json_file), str(tmp_path / "images"))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("test_save_pretrained",), ()
    cfg.INPUT.TEXT.TOKENIZER = str(tiny_tokenizer_dir)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.DATALOADER.NUM_WORKERS = (64,), 0
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.WARMUP_ITERS = 2, 2, 1
    cfg.OUTPUT_DIR = str(tmp_path / "train")
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    argv = ["--config-file", str(tmp_path / "tiny.yaml"), "--save-pretrained", str(tmp_path / "m")]
    train_net.main(train_net.argument_parser().parse_args(argv))
    saved = read_model_weights(tmp_path / "m" / "model.safetensors")
    final = read_model_weights(tmp_path / "train" / "model_final.pth")
    assert saved.keys() == final.keys()
    assert all(torch.equal(saved[key], final[key]) for key in final)
    predictor = GroundingPredictor.from_pretrained(str(tmp_path / "m"))
    assert predictor.cfg.DATASETS.TRAIN == ("test_save_pretrained",)  # the full merged config


def test_dataset_flag_trains_and_evaluates(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    train_net = _train_net()
    cfg = tiny_grounding_cfg(len(tiny_tokenizer))
    boxes = [[(0, [4, 4, 20, 16])], [(1, [30, 10, 12, 30])]]
    json_file = coco_json(tmp_path / "trees.json", tmp_path / "images", ["tree", "bush"], boxes)
    cfg.INPUT.TEXT.TOKENIZER = str(tiny_tokenizer_dir)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST, cfg.DATALOADER.NUM_WORKERS = (64,), 64, 0
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.WARMUP_ITERS = 2, 2, 1
    cfg.MODEL.GROUNDING.SCORE_THRESH_TEST = 0.0  # a 2-step model scores low: keep its boxes
    cfg.OUTPUT_DIR = str(tmp_path / "train")
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    spec = f"{json_file}:{tmp_path / 'images'}"
    argv = ["--config-file", str(tmp_path / "tiny.yaml")]
    argv += ["--dataset", f"test_flag_train={spec}"]
    argv += ["DATASETS.TRAIN", '("test_flag_train",)']
    train_net.main(train_net.argument_parser().parse_args(argv))
    assert DatasetCatalog.get("test_flag_train")[0]["dataset_name"] == "test_flag_train"
    argv = ["--config-file", str(tmp_path / "tiny.yaml"), "--eval-only"]
    argv += ["--dataset", f"test_flag_test={spec}", "DATASETS.TEST", '("test_flag_test",)']
    argv += ["MODEL.WEIGHTS", str(tmp_path / "train" / "model_final.pth")]
    results = train_net.main(train_net.argument_parser().parse_args(argv))
    assert set(results["test_flag_test"]["bbox"]) >= {"AP", "AP50", "AP-tree", "AP-bush"}


def test_ema_is_saved_evaluated_and_resumed(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    train_net = _train_net()
    cfg = tiny_grounding_cfg(len(tiny_tokenizer))
    json_file = coco_json(
        tmp_path / "t.json", tmp_path / "images", ["tree"], [[(0, [4, 4, 20, 16])]]
    )
    register_detection_dataset("test_ema_train", str(json_file), str(tmp_path / "images"))
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("test_ema_train",), ()
    cfg.INPUT.TEXT.TOKENIZER = str(tiny_tokenizer_dir)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.DATALOADER.NUM_WORKERS = (64,), 0
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.WARMUP_ITERS = 2, 1, 1
    cfg.MODEL.EMA.ENABLED, cfg.MODEL.EMA.DECAY = True, 0.5
    cfg.OUTPUT_DIR = str(tmp_path / "train")
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.evaluation_model() is trainer.ema.module
    final = torch.load(tmp_path / "train" / "model_final.pth", weights_only=False)
    assert final["model_ema"].keys() == final["model"].keys()
    assert any(not torch.equal(final["model_ema"][k], final["model"][k]) for k in final["model"])
    resumed = train_net.Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.ema.restored and resumed.start_iter == 2
    ema_state = resumed.ema.module.state_dict()
    assert all(torch.equal(ema_state[k], v) for k, v in final["model_ema"].items())


def test_retinanet_baseline_trains_and_evaluates_on_a_dataset_flag(tmp_path):
    baseline = load_tool("train_retinanet_baseline")
    boxes = [[(0, [4, 4, 20, 16])], [(1, [30, 10, 12, 30])]]
    json_file = coco_json(tmp_path / "trees.json", tmp_path / "images", ["tree", "bush"], boxes)
    spec = f"{json_file}:{tmp_path / 'images'}"
    argv = ["--config-file", str(REPO_ROOT / "configs" / "trees" / "retinanet_R18_GN.yaml")]
    argv += ["--dataset", f"test_retina_train={spec}", "--dataset", f"test_retina_val={spec}"]
    argv += ["DATASETS.TRAIN", '("test_retina_train",)', "DATASETS.TEST", '("test_retina_val",)']
    argv += ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64", "SOLVER.MAX_ITER", "2"]
    argv += ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "1"]
    argv += ["OUTPUT_DIR", str(tmp_path / "out"), "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    baseline.main(baseline.argument_parser().parse_args(argv))
    results = json.loads(
        (
            tmp_path / "out" / "inference" / "test_retina_val" / "coco_instances_results.json"
        ).read_text()
    )
    assert results and {r["category_id"] for r in results} <= {1, 2}
    used = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["MODEL"]
    assert used["RESNETS"]["DEPTH"] == 18 and used["RETINANET"]["NORM"] == "GN"
    assert used["RETINANET"]["NUM_CLASSES"] == 2 and used["WEIGHTS"] == ""  # from the json
