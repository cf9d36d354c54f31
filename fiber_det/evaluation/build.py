"""Pick the evaluator(s) of a dataset from its `evaluator_type` in MetadataCatalog."""

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators, LVISEvaluator
from torch import nn

from fiber_det.data.datasets.vqa import answer_vocabulary
from fiber_det.data.tokenizer import build_tokenizer
from fiber_det.evaluation.captioning import CaptionEvaluator
from fiber_det.evaluation.flickr import FlickrRecallEvaluator
from fiber_det.evaluation.lvis_fixed_ap import LVISFixedAPEvaluator, restore_numpy_float_alias
from fiber_det.evaluation.nlvr2 import NLVR2Evaluator
from fiber_det.evaluation.refexp import RefExpEvaluator
from fiber_det.evaluation.retrieval import RetrievalEvaluator
from fiber_det.evaluation.vqa import VQAEvaluator

EVALUATOR_TYPES = (
    "coco",
    "odinw",
    "lvis",
    "flickr",
    "refexp",
    "retrieval",
    "vqa",
    "nlvr2",
    "caption",
)


def build_fiber_evaluator(
    cfg, dataset_name: str, output_dir: str, model: nn.Module | None = None
) -> DatasetEvaluator:
    """coco / odinw: COCOEvaluator; lvis: LVISEvaluator (+ Fixed AP when TEST.FIXED_AP_TOPK);
    flickr: FlickrRecallEvaluator; refexp: RefExpEvaluator; the coarse tasks: see
    `build_coarse_evaluator` (retrieval needs the `model` that scores image-text pairs)."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type in ("coco", "odinw"):
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_dir)
    if evaluator_type == "lvis":
        restore_numpy_float_alias()
        evaluators = [
            LVISEvaluator(
                dataset_name,
                tasks=("bbox",),
                output_dir=output_dir,
                max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            )
        ]
        if cfg.TEST.FIXED_AP_TOPK > 0:
            evaluators.append(
                LVISFixedAPEvaluator(dataset_name, output_dir, topk=cfg.TEST.FIXED_AP_TOPK)
            )
        return DatasetEvaluators(evaluators)
    if evaluator_type == "flickr":
        return FlickrRecallEvaluator(dataset_name, output_dir)
    if evaluator_type == "refexp":
        return RefExpEvaluator(dataset_name, output_dir)
    if evaluator_type in ("retrieval", "vqa", "nlvr2", "caption"):
        return build_coarse_evaluator(cfg, dataset_name, evaluator_type, output_dir, model)
    raise ValueError(
        f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; "
        f"fiber_det evaluates {EVALUATOR_TYPES}"
    )


def build_coarse_evaluator(
    cfg, dataset_name: str, evaluator_type: str, output_dir: str, model: nn.Module | None
) -> DatasetEvaluator:
    """retrieval: RetrievalEvaluator re-ranking the ITC top MODEL.PRETRAIN.ITM_RERANK_TOP_K
    with `model.itm_match_scores` (0: ITC only, no model needed); vqa: VQAEvaluator (the
    dataset's answer vocabulary must have MODEL.PRETRAIN.NUM_ANSWERS answers); nlvr2:
    NLVR2Evaluator; caption: CaptionEvaluator that decodes "caption_ids" with the tokenizer of
    INPUT.TEXT.TOKENIZER."""
    if evaluator_type == "retrieval":
        scorer, top_k = (
            getattr(model, "itm_match_scores", None),
            cfg.MODEL.PRETRAIN.ITM_RERANK_TOP_K,
        )
        if scorer is None and top_k != 0:
            raise ValueError(
                f"retrieval on {dataset_name!r} with MODEL.PRETRAIN.ITM_RERANK_TOP_K {top_k} "
                f"scores pairs with a model's `itm_match_scores`; {type(model).__name__} has none"
            )
        return RetrievalEvaluator(
            dataset_name, scorer=scorer, itm_top_k=top_k, output_dir=output_dir
        )
    if evaluator_type == "vqa":
        vocabulary = answer_vocabulary(dataset_name)
        if len(vocabulary) != cfg.MODEL.PRETRAIN.NUM_ANSWERS:
            raise ValueError(
                f"dataset {dataset_name!r} has {len(vocabulary)} answers but "
                f"MODEL.PRETRAIN.NUM_ANSWERS is {cfg.MODEL.PRETRAIN.NUM_ANSWERS}"
            )
        return VQAEvaluator(dataset_name, output_dir, vocabulary=vocabulary)
    if evaluator_type == "nlvr2":
        return NLVR2Evaluator(dataset_name, output_dir)
    tokenizer = build_tokenizer(cfg.INPUT.TEXT.TOKENIZER)
    return CaptionEvaluator(dataset_name, output_dir, tokenizer=tokenizer)
