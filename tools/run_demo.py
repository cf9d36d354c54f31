#!/usr/bin/env python
"""`make demo`: fiber_det's whole job on a 2-core CPU, without downloads.

Steps: generate the synthetic grounding world -> (with --text-tower random only: train a
byte-level BPE tokenizer on its corpus; the default text tower is the pretrained all-MiniLM-L6-v2
with its WordPiece tokenizer) -> coarse stage (ITC + ITM + MLM, short) -> fine-grained grounding
training (tools/train_net.py's Trainer, trunk initialised from the coarse stage; detection data
alone first, then the whole mix, see --detection-share) -> evaluation with the real evaluators
(COCO AP on seen classes and on the held-out colour-shape combinations, Flickr-style Recall@1,
RefCOCO-style P@1) -> OUT/metrics.json, OUT/loss_curve.png, OUT/test_grid.png,
OUT/zero_shot.png (held-out pairs named in a free-form caption) and the saved model OUT/model
(config.yaml + model.safetensors + tokenizer; `make serve` serves it).

    python tools/run_demo.py [--out output/quickstart] [--seed N] [--fine-iters N] [--skip-coarse]
                             [--threads N] [--text-tower minilm|random] [--detection-share F]
                             [KEY VALUE ...]   (overrides of the fine config)

The world goes to $DETECTRON2_DATASETS/synthetic (registered on import as synthetic_*); another
--data-dir is registered as quickstart_*. configs/quickstart/*.yaml size the tiny model.
"""

import argparse
import importlib.util
import json
import logging
import os
import time
from pathlib import Path

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

import fiber_det  # noqa: F401  (registers datasets and model parts)
from fiber_det.checkpoint import load_official_state_dict, save_converted_checkpoint
from fiber_det.config import get_fiber_cfg
from fiber_det.conversion import convert_and_check
from fiber_det.data.tokenizer import train_byte_level_bpe
from fiber_det.quickstart import SyntheticConfig, generate_synthetic_dataset
from fiber_det.quickstart.register import DEFAULT_PREFIX, register_synthetic_world
from fiber_det.runtime import keep_freed_memory

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
QUICKSTART_CONFIGS = REPO / "configs" / "quickstart"
QUICKSTART_PREFIX = "quickstart"
# Seconds per unit of each step measured on 2 busy cores (images, iterations, test passes),
# for the overall ETA; the ETA is rescaled by the pace actually observed.
SECONDS_PER = {"image": 0.03, "coarse_iter": 2.0, "fine_iter": 0.55, "test_pass": 0.1}
TARGETS = {"seen_AP50": 90.0, "heldout_AP50": 50.0, "grounding_R@1": 80.0, "refcoco_P@1": 80.0}
# The text tower: all-MiniLM-L6-v2 (pretrained BERT-family, unpacked by tools/install_env.sh; the
# quickstart configs' default) or FIBER's RoBERTa layout at toy width from random init, with a
# byte-level BPE tokenizer trained on the world's corpus.
MINILM_DIR = REPO / "weights" / "all-MiniLM-L6-v2"
RANDOM_TEXT_TOWER = {
    "MODEL.FIBER.TEXT.ARCHITECTURE": "roberta",
    "MODEL.FIBER.TEXT.WEIGHTS": "",
    "MODEL.FIBER.TEXT.VOCAB_SIZE": 400,
    "MODEL.FIBER.TEXT.HIDDEN_SIZE": 64,
    "MODEL.FIBER.TEXT.NUM_LAYERS": 3,
    "MODEL.FIBER.TEXT.NUM_HEADS": 2,
    "MODEL.FIBER.TEXT.INTERMEDIATE_SIZE": 128,
    "MODEL.FIBER.TEXT.MAX_POSITION_EMBEDDINGS": 130,
    "MODEL.FIBER.TEXT.DROPOUT": 0.0,
    "MODEL.FIBER.TEXT.FREEZE_AT": 0,
}
RANDOM_TEXT_LR = {"SOLVER.LANG_LR": 2e-3}  # fine stage: the tower learns from scratch


def load_tool(name: str):
    """Import tools/NAME.py (the tools folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Progress:
    """Prints each step with elapsed time and an overall ETA scaled by the pace so far."""

    def __init__(self, expected_seconds: dict[str, float]):
        self.expected, self.start, self.done = expected_seconds, time.perf_counter(), []

    def begin(self, step: str) -> None:
        elapsed = time.perf_counter() - self.start
        spent = sum(self.expected[s] for s in self.done)
        pace = elapsed / spent if spent and elapsed > 30 else 1.0
        eta = pace * (sum(self.expected.values()) - spent)
        number = list(self.expected).index(step) + 1
        print(
            f"\n[quickstart] step {number}/{len(self.expected)}: {step} "
            f"(elapsed {elapsed / 60:.1f} min, overall ETA ~{eta / 60:.1f} min)",
            flush=True,
        )

    def end(self, step: str) -> None:
        self.done.append(step)


def expected_seconds(images: int, test_images: int, coarse_iters: int, fine_iters: int):
    """Expected seconds of each step (coarse_iters 0: skipped), for Progress."""
    steps = {
        "data": SECONDS_PER["image"] * images,
        "tokenizer": 3.0,
        "coarse": 15 + SECONDS_PER["coarse_iter"] * coarse_iters,
        "fine": 15 + SECONDS_PER["fine_iter"] * fine_iters,
        # detection on test + heldout, ~3 grounding captions and ~2 expressions per test image
        "evaluation": 10 + SECONDS_PER["test_pass"] * 7 * test_images,
        "pictures": 10.0,
    }
    if coarse_iters == 0:
        del steps["coarse"]
    return steps


def world_prefix(data_dir: Path) -> str:
    """`synthetic` for the world registered on import, else `quickstart` (registered here)."""
    default_root = Path(os.getenv("DETECTRON2_DATASETS", "datasets")).expanduser() / "synthetic"
    same = data_dir.resolve() == default_root.resolve()
    return DEFAULT_PREFIX if same else QUICKSTART_PREFIX


def make_data(data_dir: Path, config: SyntheticConfig) -> str:
    """Generate the world (replacing an older one) and register it; returns the name prefix."""
    generate_synthetic_dataset(data_dir, config, overwrite=True)
    prefix = world_prefix(data_dir)
    if prefix == QUICKSTART_PREFIX:
        for name in [n for n in DatasetCatalog.list() if n.startswith(QUICKSTART_PREFIX + "_")]:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_synthetic_world(str(data_dir), QUICKSTART_PREFIX)
    return prefix


def make_tokenizer(data_dir: Path, out_dir: Path, vocab_size: int) -> Path:
    """Train the byte-level BPE tokenizer on the world's corpus.txt; returns its directory."""
    lines = (data_dir / "corpus.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = train_byte_level_bpe(lines, out_dir, vocab_size)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens > VOCAB_SIZE {vocab_size}")
    print(f"[quickstart] tokenizer: {len(tokenizer)} tokens -> {out_dir}")
    return out_dir


def _renamed(names, prefix: str) -> tuple[str, ...]:
    """Dataset names of the config moved from the `synthetic` prefix to `prefix`."""
    return tuple(
        prefix + n[len(DEFAULT_PREFIX) :] if n.startswith(DEFAULT_PREFIX) else n for n in names
    )


def build_cfg(config_file: Path, prefix: str, tokenizer: Path, out_dir: Path, opts: list[str]):
    """A frozen fiber_det config for the world `prefix`, the tokenizer and an output folder."""
    cfg = get_fiber_cfg()
    cfg.merge_from_file(str(config_file))
    cfg.DATASETS.TRAIN = _renamed(cfg.DATASETS.TRAIN, prefix)
    cfg.DATASETS.TEST = _renamed(cfg.DATASETS.TEST, prefix)
    cfg.INPUT.TEXT.TOKENIZER = str(tokenizer)
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.merge_from_list(opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def loss_history(trainer, key: str = "total_loss") -> list[tuple[int, float]]:
    """(iteration, loss) of every training iteration, from the trainer's EventStorage."""
    return [(int(it), float(v)) for v, it in trainer.storage.history(key).values()]


def train_coarse(cfg) -> tuple[Path, list[tuple[int, float]]]:
    """Run the coarse stage; returns its checkpoint and loss curve."""
    seed_all_rng(cfg.SEED)
    trainer = load_tool("train_coarse").CoarseTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return Path(cfg.OUTPUT_DIR) / "model_final.pth", loss_history(trainer)


def coarse_trunk_for_detector(coarse_checkpoint: Path, fine_cfg, out: Path) -> tuple[Path, int]:
    """The coarse model's trunk as the detector's initial weights, through the converter's own
    path (what tools/convert_checkpoint.py --format coarse-trunk runs): renamed, checked against
    the detector, coarse-only tensors dropped with their reason. Returns (path, tensors written)."""
    state_dict = load_official_state_dict(str(coarse_checkpoint))
    result, _, errors = convert_and_check(state_dict, "coarse-trunk", fine_cfg)
    if errors:
        raise ValueError(f"{coarse_checkpoint}: cannot initialise the detector: {errors[:5]}")
    save_converted_checkpoint(result.state_dict, str(out), source=str(coarse_checkpoint))
    return out, len(result.state_dict)


def train_fine(cfgs: list) -> tuple[torch.nn.Module, list[tuple[int, float]]]:
    """Fine-grained training through tools/train_net.py's Trainer, one run per phase, each
    phase starting from the previous one's final weights; returns (model, loss curve)."""
    curve, weights = [], None
    for cfg in cfgs:
        if weights:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.WEIGHTS = str(weights)
            cfg.freeze()
        seed_all_rng(cfg.SEED)
        trainer = load_tool("train_net").Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        curve += [(len(curve) + it, loss) for it, loss in loss_history(trainer)]
        weights = Path(cfg.OUTPUT_DIR) / "model_final.pth"
    return trainer.model.eval(), curve


def fine_phases(args, prefix: str, tokenizer: Path, out: Path, opts: list[str]) -> list:
    """The fine stage's configs: detection data alone for `--detection-share` of the iterations
    with the config's whole schedule (warm-up, lr steps at 75 % and 90 %), where every object
    of every image is named and every class is in the prompt (the strongest signal), then the
    whole mix of the config (detection, grounding captions, referring expressions) at the
    final, decayed lr."""
    config = build_cfg(Path(args.config), prefix, tokenizer, out / "grounding", opts)
    total = config.SOLVER.MAX_ITER
    first = round(total * args.detection_share)
    if first == 0:
        return [config]
    detection = f'("{prefix}_train",)'
    phase_one = [*opts, *_iteration_opts(first), "DATASETS.TRAIN", detection]
    if first == total:
        return [build_cfg(Path(args.config), prefix, tokenizer, out / "grounding", phase_one)]
    decayed = config.SOLVER.GAMMA**2  # the lr after phase one's two steps
    phase_two = [*opts, "SOLVER.MAX_ITER", str(total - first), "SOLVER.STEPS", "()"]
    phase_two += [
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.BASE_LR",
        str(config.SOLVER.BASE_LR * decayed),
    ]
    phase_two += ["SOLVER.LANG_LR", str(config.SOLVER.LANG_LR * decayed)]
    return [
        build_cfg(Path(args.config), prefix, tokenizer, out / "grounding" / "detection", phase_one),
        build_cfg(Path(args.config), prefix, tokenizer, out / "grounding", phase_two),
    ]


def summarize(results: dict, prefix: str) -> dict:
    """The headline numbers (percent) from train_net.evaluate's per-dataset results."""
    return {
        "seen_AP50": results[f"{prefix}_test"]["bbox"]["AP50"],
        "seen_AP": results[f"{prefix}_test"]["bbox"]["AP"],
        "heldout_AP50": results[f"{prefix}_heldout"]["bbox"]["AP50"],
        "heldout_AP": results[f"{prefix}_heldout"]["bbox"]["AP"],
        "grounding_R@1": results[f"{prefix}_grounding_test"]["flickr_any_box"]["R@1"],
        "grounding_R@5": results[f"{prefix}_grounding_test"]["flickr_any_box"]["R@5"],
        "refcoco_P@1": results[f"{prefix}_refcoco_test"]["refexp"]["P@1"],
    }


def choose_threads(requested: int) -> int:
    """`requested`, or (0) every core: a brief load when the demo starts must not halve its
    budget (it did when the choice followed the load average)."""
    return requested if requested > 0 else os.cpu_count() or 1


def text_tower(kind: str, tokenizer_dir: Path) -> tuple[list[str], list[str], Path]:
    """(fine config overrides, coarse config overrides, tokenizer directory) of --text-tower."""
    if kind == "minilm":
        if not (MINILM_DIR / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"{MINILM_DIR} is missing: run tools/install_env.sh (make demo does), or pass "
                "--text-tower random"
            )
        opts = [
            "MODEL.FIBER.TEXT.ARCHITECTURE",
            "bert",
            "MODEL.FIBER.TEXT.WEIGHTS",
            str(MINILM_DIR),
        ]
        return opts, opts, MINILM_DIR
    opts = [str(v) for item in RANDOM_TEXT_TOWER.items() for v in item]
    return opts + [str(v) for item in RANDOM_TEXT_LR.items() for v in item], opts, tokenizer_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    datasets = Path(os.getenv("DETECTRON2_DATASETS", "datasets")).expanduser()
    parser.add_argument("--out", default="output/quickstart", help="outputs folder")
    parser.add_argument("--data-dir", default=str(datasets / "synthetic"), help="world folder")
    parser.add_argument("--config", default=str(QUICKSTART_CONFIGS / "grounding_tiny.yaml"))
    parser.add_argument("--coarse-config", default=str(QUICKSTART_CONFIGS / "coarse_tiny.yaml"))
    parser.add_argument("--seed", type=int, default=0, help="world and training seed")
    parser.add_argument("--train-images", type=int, default=400, help="train split size")
    parser.add_argument("--test-images", type=int, default=100, help="test and heldout sizes")
    parser.add_argument("--coarse-iters", type=int, default=None, help="default: its config")
    parser.add_argument("--fine-iters", type=int, default=None, help="default: its config")
    parser.add_argument("--skip-coarse", action="store_true", help="fine stage from scratch")
    parser.add_argument(
        "--detection-share",
        type=float,
        default=0.75,
        help="share of the fine iterations on detection data alone, before the whole mix",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument(
        "--text-tower",
        choices=("minilm", "random"),
        default="minilm",
        help="pretrained all-MiniLM-L6-v2 (weights/, from install_env.sh) or a toy RoBERTa "
        "from random init with a BPE tokenizer trained on the world",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="fine config overrides KEY VALUE")
    return parser.parse_args(argv)


def _iteration_opts(iters: int | None) -> list[str]:
    """SOLVER overrides for a run of `iters` iterations (lr steps at 75 % and 90 %)."""
    if iters is None:
        return []
    steps = f"({int(iters * 0.75)}, {int(iters * 0.9)})"
    warmup = str(min(50, max(iters // 10, 1)))
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", steps, "SOLVER.WARMUP_ITERS", warmup]


def run(args: argparse.Namespace) -> dict:
    """The whole quickstart; returns the metrics document written to OUT/metrics.json."""
    out, data_dir = Path(args.out), Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(choose_threads(args.threads))
    print(f"[quickstart] {torch.get_num_threads()} torch thread(s), load {os.getloadavg()[0]:.1f}")
    prefix = world_prefix(data_dir)
    fine_text, coarse_text, tokenizer = text_tower(args.text_tower, out / "tokenizer")
    fine_opts = ["SEED", str(args.seed), *fine_text, *_iteration_opts(args.fine_iters), *args.opts]
    fine_cfg = build_cfg(Path(args.config), prefix, tokenizer, out / "grounding", fine_opts)
    coarse_opts = ["SEED", str(args.seed), *coarse_text, *_iteration_opts(args.coarse_iters)]
    coarse_cfg = build_cfg(Path(args.coarse_config), prefix, tokenizer, out / "coarse", coarse_opts)
    sizes = {"train": args.train_images, "val": 20, "test": args.test_images}
    world = SyntheticConfig(seed=args.seed, split_sizes=sizes | {"heldout": args.test_images})
    coarse_iters = 0 if args.skip_coarse else coarse_cfg.SOLVER.MAX_ITER
    progress = Progress(
        expected_seconds(
            sum(world.split_sizes.values()),
            args.test_images,
            coarse_iters,
            fine_cfg.SOLVER.MAX_ITER,
        )
    )
    timings = {}

    def step(name: str, function, *arguments):
        progress.begin(name)
        start = time.perf_counter()
        value = function(*arguments)
        timings[name] = round(time.perf_counter() - start, 1)
        progress.end(name)
        return value

    step("data", make_data, data_dir, world)
    if args.text_tower == "random":
        vocab_size = fine_cfg.MODEL.FIBER.TEXT.VOCAB_SIZE
        step("tokenizer", make_tokenizer, data_dir, tokenizer, vocab_size)
    curves = {}
    if not args.skip_coarse:
        checkpoint, curves["coarse"] = step("coarse", train_coarse, coarse_cfg)
        weights, count = coarse_trunk_for_detector(
            checkpoint, fine_cfg, out / "coarse" / "trunk_for_detector.pth"
        )
        print(f"[quickstart] {count} trunk tensors of the coarse stage initialise the detector")
        fine_opts += ["MODEL.WEIGHTS", str(weights)]
    phases = fine_phases(args, prefix, tokenizer, out, fine_opts)
    model, curves["fine-grained"] = step("fine", train_fine, phases)
    fine_cfg = phases[-1]
    results = step("evaluation", load_tool("train_net").evaluate, fine_cfg, model)
    step("pictures", make_pictures, fine_cfg, model, prefix, curves, out, args.seed)
    run_info = {
        "coarse_stage": "skipped (--skip-coarse)" if args.skip_coarse else "ran",
        "iterations": {"coarse": coarse_iters, "fine": [c.SOLVER.MAX_ITER for c in phases]},
        "torch_threads": torch.get_num_threads(),
        "seconds": timings,
    }
    return write_report(out, summarize(results, prefix), results, curves, run_info)


def make_pictures(cfg, model, prefix: str, curves: dict, out: Path, seed: int) -> None:
    """OUT/loss_curve.png, OUT/test_grid.png, OUT/zero_shot.png and the saved model OUT/model
    (what `make serve` and `tools/demo.py --model` load)."""
    from fiber_det.predictor import GroundingPredictor

    pictures = load_tool("quickstart_pictures")
    pictures.plot_losses(curves, out / "loss_curve.png")
    predictor = GroundingPredictor(cfg, model=model)
    pictures.draw_grid(predictor, prefix, out / "test_grid.png")
    pictures.draw_zero_shot(predictor, out / "zero_shot.png", seed=1000 + seed)
    predictor.save_pretrained(out / "model")
    print(f"[quickstart] saved model -> {out / 'model'} (serve it: make serve)")


def write_report(out: Path, metrics: dict, results: dict, curves: dict, run_info: dict) -> dict:
    """Write OUT/metrics.json, print the headline numbers; returns the document."""
    document = {
        "metrics": metrics,
        "targets": TARGETS,
        "targets_met": {key: metrics[key] >= value for key, value in TARGETS.items()},
        **run_info,
        "results": results,
        "loss_curves": curves,
    }
    (out / "metrics.json").write_text(json.dumps(document, indent=1) + "\n")
    total = sum(run_info["seconds"].values()) / 60
    print(f"\n[quickstart] done in {total:.1f} min -> {out / 'metrics.json'}")
    for key, value in metrics.items():
        target = f"   (target >= {TARGETS[key]:.0f})" if key in TARGETS else ""
        print(f"  {key:>14}: {value:6.1f}{target}")
    return document


def main(argv: list[str] | None = None) -> dict:
    setup_logger()
    setup_logger(name="fvcore")
    logging.getLogger("detectron2.engine.defaults").setLevel(logging.WARNING)
    keep_freed_memory()
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
