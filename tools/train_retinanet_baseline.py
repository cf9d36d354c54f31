#!/usr/bin/env python
"""Train or evaluate detectron2's stock RetinaNet on COCO-format jsons: the standard detector
fiber_det's numbers are compared with on the same data and CPU budget.

    python tools/train_retinanet_baseline.py --config-file configs/trees/retinanet_R18_GN.yaml \
        --dataset trees_train=datasets/trees/train.json:datasets/trees/train \
        --dataset trees_val=datasets/trees/val.json:datasets/trees/val [--eval-only] [KEY VALUE ...]

The config is merged onto detectron2's model-zoo COCO-Detection/retinanet_R_50_FPN_1x.yaml;
the datasets are registered with detectron2's own `register_coco_instances`, trained by its
`DefaultTrainer` and scored by its `COCOEvaluator`: nothing of fiber_det's model, data or
solver is involved. MODEL.RETINANET.NUM_CLASSES is set from the first DATASETS.TRAIN json.
"""

import os

from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator

from fiber_det.data.datasets.user import add_dataset_argument, dataset_class_names

ZOO_CONFIG = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"


class BaselineTrainer(DefaultTrainer):
    """DefaultTrainer with COCOEvaluator (DefaultTrainer leaves build_evaluator open)."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder)


def setup(args):
    """Model-zoo RetinaNet config + args.config_file + args.opts; registers args.dataset."""
    for spec in args.dataset:
        register_coco_instances(spec.name, {}, spec.json_file, spec.image_root)
    cfg = model_zoo.get_config(ZOO_CONFIG)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    jsons = {spec.name: spec.json_file for spec in args.dataset}
    if cfg.DATASETS.TRAIN and cfg.DATASETS.TRAIN[0] in jsons:
        cfg.MODEL.RETINANET.NUM_CLASSES = len(dataset_class_names(jsons[cfg.DATASETS.TRAIN[0]]))
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = BaselineTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return BaselineTrainer.test(cfg, model)
    trainer = BaselineTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    """detectron2's argument parser plus --dataset NAME=path/to.json:path/images."""
    parser = default_argument_parser()
    add_dataset_argument(parser)
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
