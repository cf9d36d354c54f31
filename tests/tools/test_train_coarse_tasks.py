"""tools/train_coarse.py on the synthetic world's downstream tasks: a tiny model trained from
random init for a few hundred iterations answers "what colour is the <shape>?" well beyond what
the question alone gives; fine-tuned from that VQA trunk, the caption model writes captions
that name the object's colour and beat any frequent constant caption; NLVR2 trains and
evaluates through the same entry point. Each run trains, then scores with --eval-only, which
prints the task's table and writes its JSON.

The world is the easiest the generator makes (one object per image, three colours and shapes):
from random init (the gates of FIBER's fusion start at 0) the tiny model needs it to learn
within a CPU-minute. Fixed seeds; measured margins are noted at each assertion.
"""

import importlib.util
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from pycocoevalcap.cider.cider import Cider

from fiber_det.data.datasets.vqa import answer_vocabulary
from fiber_det.data.tokenizer import train_byte_level_bpe
from fiber_det.engine import setup_cfg
from fiber_det.evaluation.vqa import vqa_accuracy
from fiber_det.modeling.vision_language.caption_rewards import TokenCiderReward
from fiber_det.quickstart import SyntheticConfig, generate_synthetic_dataset
from fiber_det.quickstart.register import register_synthetic_world

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "tasks_unit"
WORLD = SyntheticConfig(
    seed=0,
    split_sizes={"train": 400, "val": 60, "test": 2, "heldout": 1},
    min_side=130,
    max_side=160,
    min_objects=1,
    max_objects=1,
    captions_per_image=1,
    refs_per_image=1,
    num_colours=3,
    num_shapes=3,
    num_heldout=1,
    vqa_questions_per_image=1,
    vqa_question_kinds=("colour",),
)


def _train_coarse():
    spec = importlib.util.spec_from_file_location(
        "train_coarse", ROOT / "tools" / "train_coarse.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The world on disk, registered as tasks_unit_*, and a tokenizer trained on its corpus."""
    root = tmp_path_factory.mktemp("tasks")
    generate_synthetic_dataset(root / "world", WORLD, log=len)
    corpus = (root / "world" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    train_byte_level_bpe(corpus, root / "tokenizer", vocab_size=400)
    for name in [n for n in DatasetCatalog.list() if n.startswith(PREFIX + "_")]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_synthetic_world(str(root / "world"), PREFIX)
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread for the whole module (module fixtures train too): the margins were
    measured so, and tiny models run far faster on one thread of a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_then_evaluate(root: Path, config: str, task: str, *opts: str) -> dict:
    """Train with tools/train_coarse.py, then score the final weights with --eval-only."""
    options = [
        "INPUT.TEXT.TOKENIZER", str(root / "tokenizer"),
        "DATASETS.TRAIN", f"('{PREFIX}_{task}_train',)",
        "DATASETS.TEST", f"('{PREFIX}_{task}_val',)",
        "OUTPUT_DIR", str(root / task),
        *opts,
    ]  # fmt: skip
    argv = ["--config-file", str(ROOT / "configs" / "quickstart" / config), *options]
    train_coarse = _train_coarse()
    train_coarse.main(default_argument_parser().parse_args(argv))
    weights = ["MODEL.WEIGHTS", str(root / task / "model_final.pth")]
    args = default_argument_parser().parse_args([*argv, *weights])
    args.eval_only = True
    return train_coarse.main(args)


def _words(caption: str) -> str:
    """What the COCO caption evaluation compares: lowercased words without punctuation."""
    return " ".join(re.findall(r"[a-z0-9]+", caption.lower()))


def _objects(root: Path, split: str) -> dict[int, tuple[str, str]]:
    """image id -> (colour, shape) of its single object."""
    content = json.loads((root / "world" / "annotations" / f"instances_{split}.json").read_text())
    return {
        a["image_id"]: (a["attributes"]["colour"], a["attributes"]["shape"])
        for a in content["annotations"]
    }


@pytest.fixture(scope="module")
def vqa_run(world) -> dict:
    """VQA trained from random init (its trunk also starts the captioning run)."""
    vocabulary = answer_vocabulary(f"{PREFIX}_vqa_train")
    return _train_then_evaluate(
        world, "vqa_tiny.yaml", "vqa", "MODEL.PRETRAIN.NUM_ANSWERS", str(len(vocabulary))
    )


def test_vqa_answers_what_colour_beyond_the_question_prior(world, vqa_run):
    results = vqa_run
    accuracy = results["vqa"]["accuracy"]
    written = world / "vqa" / "inference" / f"{PREFIX}_vqa_val" / f"vqa_{PREFIX}_vqa_val.json"
    assert json.loads(written.read_text()) == pytest.approx(results["vqa"])
    # The question-only baseline: the most frequent training answer, scored by the same metric.
    train = DatasetCatalog.get(f"{PREFIX}_vqa_train")
    prior = Counter(a for r in train for a in r["answers"]).most_common(1)[0][0]
    val = DatasetCatalog.get(f"{PREFIX}_vqa_val")
    baseline = 100 * sum(vqa_accuracy(prior, r["answers"]) for r in val) / len(val)
    assert results["vqa"]["num_questions"] == len(val) == 60
    # Measured: 91.0 against 53.5 for the prior "blue" (other trainer seeds on a world with
    # another val split: 68 and 76.5 against 47).
    assert accuracy > baseline + 15.0, (accuracy, baseline)


def test_captions_name_the_colour_and_beat_a_constant_caption(world, vqa_run):
    vqa_weights = str(world / "vqa" / "model_final.pth")  # the trunk; the decoder starts anew
    results = _train_then_evaluate(
        world, "caption_tiny.yaml", "captioning", "MODEL.WEIGHTS", vqa_weights
    )
    metrics = results["captioning"]
    folder = world / "captioning" / "inference" / f"{PREFIX}_captioning_val"
    captions = json.loads((folder / f"captions_{PREFIX}_captioning_val.json").read_text())
    assert len(captions) == metrics["num_images"] == 60
    # A constant caption: the best of the five most frequent training captions, scored by
    # pycocoevalcap's CIDEr-D on the same (lowercased, punctuation-free) words as the evaluator.
    train = DatasetCatalog.get(f"{PREFIX}_captioning_train")
    frequent = Counter(c for r in train for c in r["captions"]).most_common(5)
    val = DatasetCatalog.get(f"{PREFIX}_captioning_val")
    references = {r["image_id"]: [_words(c) for c in r["captions"]] for r in val}
    constant = max(
        100 * Cider().compute_score(references, dict.fromkeys(references, [_words(c)]))[0]
        for c, _ in frequent
    )
    # Measured: CIDEr 280.7 against 174.5 for "An image with a blue circle.".
    assert metrics["CIDEr"] > constant + 50.0, (metrics["CIDEr"], constant)
    objects = _objects(world, "val")
    named = sum(objects[c["image_id"]][0] in c["caption"].split() for c in captions) / 60
    majority = Counter(colour for colour, _ in objects.values()).most_common(1)[0][1] / 60
    # Measured: 97 % of the captions name the object's colour; the most frequent colour is 40 %
    # of the images (the shape, 37 %, is not learned yet at this budget).
    assert named > majority + 0.3, (named, majority)


def test_nlvr2_trains_and_reports_accuracy(world):
    results = _train_then_evaluate(world, "nlvr2_tiny.yaml", "nlvr2", "SOLVER.MAX_ITER", "3")
    metrics = results["nlvr2"]
    assert metrics["num_examples"] == 60  # 30 pairs, a true and a false statement each
    folder = world / "nlvr2" / "inference" / f"{PREFIX}_nlvr2_val"
    lines = (folder / f"nlvr2_predictions_{PREFIX}_nlvr2_val.csv").read_text().splitlines()
    assert len(lines) == 60 and all(line.endswith((",True", ",False")) for line in lines)
    labels = {r["identifier"]: r["label"] for r in DatasetCatalog.get(f"{PREFIX}_nlvr2_val")}
    predicted = dict(line.split(",") for line in lines)
    correct = sum(int(predicted[key] == "True") == label for key, label in labels.items())
    assert metrics["accuracy"] == pytest.approx(100.0 * correct / len(labels))
    assert torch.load(world / "nlvr2" / "model_final.pth", weights_only=False)["iteration"] == 2


def test_cider_optimisation_rewards_with_the_training_corpus(world):
    """CoarseTrainer hands a CIDEr optimisation run the reward of the training references
    (one document per training image), and both caption losses train."""
    options = [
        "INPUT.TEXT.TOKENIZER", str(world / "tokenizer"),
        "DATASETS.TRAIN", f"('{PREFIX}_captioning_train',)",
        "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(world / "cider"),
        "MODEL.PRETRAIN.CAPTION.OBJECTIVE", "cider_scst",
        "MODEL.PRETRAIN.CAPTION.NUM_SAMPLES", "2",
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.MAX_ITER", "2",
    ]  # fmt: skip
    config = str(ROOT / "configs" / "quickstart" / "caption_tiny.yaml")
    cfg = setup_cfg(default_argument_parser().parse_args(["--config-file", config, *options]))
    trainer = _train_coarse().CoarseTrainer(cfg)
    reward = trainer.model.caption_reward
    assert isinstance(reward, TokenCiderReward)
    assert reward.cider.log_num_documents == pytest.approx(math.log(WORLD.split_sizes["train"]))
    trainer.train()
    last = [json.loads(line) for line in (world / "cider" / "metrics.json").open()][-1]
    assert last["iteration"] == 1
    assert math.isfinite(last["loss_caption_rl"]) and last["loss_caption"] > 0
