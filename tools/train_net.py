#!/usr/bin/env python
"""Train or evaluate the FIBER grounding detector with detectron2's DefaultTrainer.

    python tools/train_net.py --config-file configs/... [--eval-only] [--save-pretrained DIR] \
        [--dataset NAME=path/to.json:path/images ...] [KEY VALUE ...]

--dataset registers a COCO-format detection json (its category names become the prompt) or an
MDETR-format grounding json under NAME, for DATASETS.TRAIN / DATASETS.TEST to use, e.g.
`--dataset trees_train=train.json:images DATASETS.TRAIN '("trees_train",)'`.

Evaluation picks its protocol from each test set's `evaluator_type` (COCO / LVIS + Fixed AP /
ODinW / Flickr30k Entities / RefCOCO*); with ODinW test sets the per-dataset AP table and the
ODinW average are written beside the other results. --save-pretrained DIR writes the final
model as a saved-model directory (config.yaml, model.safetensors, tokenizer), which
`GroundingPredictor.from_pretrained(DIR)`, `tools/demo.py --model DIR` and `tools/serve.py` load.
"""

import os
from collections import OrderedDict

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

import fiber_det  # noqa: F401  (registers datasets and model parts)
from fiber_det.data.datasets.catalog import check_dataset_name, get_tagged_dataset_dicts
from fiber_det.data.datasets.user import add_dataset_argument, register_dataset_specs
from fiber_det.data.grounding_mapper import GroundingDatasetMapper
from fiber_det.data.tokenizer import build_tokenizer, check_tokenizer_fits
from fiber_det.engine import FiberTrainer, load_weights, setup_cfg
from fiber_det.evaluation.build import build_fiber_evaluator
from fiber_det.evaluation.odinw import summarize_odinw
from fiber_det.pretrained import save_pretrained


class Trainer(FiberTrainer):
    """FiberTrainer with the grounding mapper and fiber_det evaluators."""

    @classmethod
    def build_train_loader(cls, cfg):
        dataset = get_tagged_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        mapper = GroundingDatasetMapper(cfg, is_train=True)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        check_dataset_name(dataset_name)
        mapper = GroundingDatasetMapper(cfg, is_train=False, dataset_name=dataset_name)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_fiber_evaluator(cfg, dataset_name, output_folder)


def evaluate(cfg, model) -> OrderedDict:
    """Run every test set; add the ODinW summary when ODinW sets are among them."""
    results = Trainer.test(cfg, model)
    if len(cfg.DATASETS.TEST) == 1:
        results = OrderedDict({cfg.DATASETS.TEST[0]: results})
    odinw = summarize_odinw(results, os.path.join(cfg.OUTPUT_DIR, "inference"))
    if odinw:
        results["odinw"] = odinw
    return results


def save_model_directory(cfg, model, directory: str) -> None:
    """The model as a saved-model directory (main process only)."""
    if comm.is_main_process():
        save_pretrained(directory, model, cfg, build_tokenizer(cfg.INPUT.TEXT.TOKENIZER))
        print(f"saved the model to {directory} (GroundingPredictor.from_pretrained)")


def main(args):
    cfg = setup_cfg(args)
    tokenizer = build_tokenizer(cfg.INPUT.TEXT.TOKENIZER)
    check_tokenizer_fits(tokenizer, cfg)
    if args.dataset:
        register_dataset_specs(args.dataset, tokenizer)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_weights(cfg, model, args.resume)
        results = evaluate(cfg, model)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
        model = trainer.evaluation_model()
    if args.save_pretrained:
        save_model_directory(cfg, model, args.save_pretrained)
    return results


def argument_parser():
    """detectron2's argument parser plus --save-pretrained and --dataset."""
    parser = default_argument_parser()
    add_dataset_argument(parser)
    parser.add_argument(
        "--save-pretrained",
        metavar="DIR",
        default="",
        help="after training (or --eval-only): write the model to DIR as a saved-model directory",
    )
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
