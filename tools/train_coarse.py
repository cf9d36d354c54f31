#!/usr/bin/env python
"""Train or evaluate every coarse-stage model of FIBER with detectron2's engine: pre-training
(ITC + ITM + MLM) and retrieval fine-tuning, VQAv2, NLVR2 and image captioning.

    python tools/train_coarse.py --config-file configs/coarse_grained/vqa.yaml \
        [--num-gpus N] [--resume] [--eval-only] [KEY VALUE ...]

MODEL.META_ARCHITECTURE picks the dataset mapper (see MAPPERS); every test set is scored by the
evaluator of its MetadataCatalog `evaluator_type` (fiber_det/evaluation/build.py): "retrieval"
(IR / TR Recall@k from ITC, ITM re-ranking of the ITC top MODEL.PRETRAIN.ITM_RERANK_TOP_K),
"vqa", "nlvr2" or "caption"; each prints its metric table and writes its JSON under
OUTPUT_DIR/inference/<dataset>. MODEL.WEIGHTS may be an official coarse checkpoint (renamed on
load by FiberCheckpointer). Several processes go through detectron2's `launch` (NCCL on GPUs,
gloo on the CPU).
"""

import os

from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

import fiber_det  # noqa: F401  (registers datasets and the coarse meta-architectures)
from fiber_det.data.caption_mapper import CaptionDatasetMapper
from fiber_det.data.image_text_mapper import ImageTextDatasetMapper
from fiber_det.data.nlvr2_mapper import NLVR2DatasetMapper
from fiber_det.data.tokenizer import build_tokenizer, check_tokenizer_fits
from fiber_det.data.vqa_mapper import VQADatasetMapper
from fiber_det.engine import FiberTrainer, load_weights, setup_cfg
from fiber_det.evaluation.build import build_fiber_evaluator
from fiber_det.modeling.vision_language.caption_rewards import TokenCiderReward

# META_ARCHITECTURE -> the mapper that feeds it (each mapper module documents its dicts).
MAPPERS = {
    "FiberPretrainModel": ImageTextDatasetMapper,
    "FiberVQAModel": VQADatasetMapper,
    "FiberNLVR2Model": NLVR2DatasetMapper,
    "FiberCaptionModel": CaptionDatasetMapper,
}


def build_coarse_mapper(cfg, is_train: bool):
    """The mapper of cfg.MODEL.META_ARCHITECTURE, built as `Mapper(cfg, is_train)`."""
    architecture = cfg.MODEL.META_ARCHITECTURE
    if architecture not in MAPPERS:
        raise ValueError(
            f"MODEL.META_ARCHITECTURE {architecture!r} is not a coarse-stage model; "
            f"tools/train_coarse.py trains {tuple(MAPPERS)}"
        )
    return MAPPERS[architecture](cfg, is_train)


def build_caption_reward(cfg) -> TokenCiderReward:
    """CIDEr-D on token ids with the document frequencies of the training references (one
    document per image of DATASETS.TRAIN), the reward of CIDEr optimisation (spec c.4)."""
    tokenizer = build_tokenizer(cfg.INPUT.TEXT.TOKENIZER)
    records = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    corpus = build_coarse_mapper(cfg, True).reference_corpus(records)
    return TokenCiderReward(
        corpus, tokenizer.eos_token_id, (tokenizer.bos_token_id, tokenizer.pad_token_id)
    )


class CoarseTrainer(FiberTrainer):
    """FiberTrainer with the task's mapper and one evaluator per test set by evaluator_type;
    CIDEr optimisation gets its reward from the training references."""

    def __init__(self, cfg):
        super().__init__(cfg)
        uses_cider = cfg.MODEL.PRETRAIN.CAPTION.OBJECTIVE != "mle"
        if cfg.MODEL.META_ARCHITECTURE == "FiberCaptionModel" and uses_cider:
            model = getattr(self.model, "module", self.model)
            model.set_caption_reward(build_caption_reward(cfg))

    @classmethod
    def find_unused_parameters(cls, cfg):
        """Passes switched off by a zero loss weight leave their parameters without gradient;
        task models keep modules of the released checkpoints they never run (the `_itc`
        transforms and poolers, the caption decoder's unused projections)."""
        if cfg.MODEL.META_ARCHITECTURE != "FiberPretrainModel":
            return True
        pretrain = cfg.MODEL.PRETRAIN
        return 0 in (pretrain.ITC_WEIGHT, pretrain.ITM_WEIGHT, pretrain.MLM_WEIGHT)

    @classmethod
    def build_train_loader(cls, cfg):
        """Square images of one size: no aspect-ratio grouping (which needs height / width)."""
        mapper = build_coarse_mapper(cfg, True)
        return build_detection_train_loader(cfg, mapper=mapper, aspect_ratio_grouping=False)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = build_coarse_mapper(cfg, False)
        return build_detection_test_loader(
            cfg, dataset_name, mapper=mapper, batch_size=cfg.MODEL.PRETRAIN.EVAL_BATCH_SIZE
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Every test set with the evaluator of its evaluator_type; retrieval re-ranks with the
        model's ITM scorer."""
        if evaluators is None:
            evaluators = [
                build_fiber_evaluator(
                    cfg,
                    name,
                    os.path.join(cfg.OUTPUT_DIR, "inference", name),
                    model=getattr(model, "module", model),
                )
                for name in cfg.DATASETS.TEST
            ]
        return super().test(cfg, model, evaluators)


def main(args):
    cfg = setup_cfg(args)
    check_tokenizer_fits(build_tokenizer(cfg.INPUT.TEXT.TOKENIZER), cfg)
    if args.eval_only:
        model = CoarseTrainer.build_model(cfg)
        load_weights(cfg, model, args.resume)
        results = CoarseTrainer.test(cfg, model)
        comm.synchronize()
        return results
    trainer = CoarseTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
