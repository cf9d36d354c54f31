"""The only place where fiber_det declares config keys. Every key carries a comment.

Each area of the project owns one section function below; `add_fiber_config` calls them all.
"""

from detectron2.config import CfgNode as CN


def _add_trunk_config(cfg: CN) -> None:
    """MODEL.FIBER: the fused Swin + RoBERTa trunk (FPN sizes: detectron2's MODEL.FPN.*)."""
    cfg.MODEL.FIBER = CN()
    cfg.MODEL.FIBER.USE_SDPA = True  # torch scaled_dot_product_attention in every attention
    cfg.MODEL.FIBER.USE_CHECKPOINT = False  # activation checkpointing per Swin block / text layer
    # CPU fp32 inference: linear layers through oneDNN instead of F.linear's BLAS (MKL is slower
    # on AMD CPUs; modeling/onednn_linear.py). Training, autocast, export and GPUs are unaffected.
    cfg.MODEL.FIBER.ONEDNN_CPU_LINEAR = True
    cfg.MODEL.FIBER.SWIN = CN()
    cfg.MODEL.FIBER.SWIN.PATCH_SIZE = 4  # patch embedding stride (res2 stride)
    cfg.MODEL.FIBER.SWIN.EMBED_DIM = 128  # stage-1 width; stage i has EMBED_DIM * 2**i
    cfg.MODEL.FIBER.SWIN.DEPTHS = [2, 2, 18, 2]  # blocks per stage (FIBER-B)
    cfg.MODEL.FIBER.SWIN.NUM_HEADS = [4, 8, 16, 32]  # attention heads per stage
    cfg.MODEL.FIBER.SWIN.WINDOW_SIZE = 12  # attention window (coarse stage: image size / 32)
    cfg.MODEL.FIBER.SWIN.MLP_RATIO = 4.0  # MLP hidden width / block width
    cfg.MODEL.FIBER.SWIN.DROP_PATH_RATE = 0.4  # stochastic depth, linear 0 -> rate over blocks
    # "pad_and_shift": fixed window, pad bottom/right, shift every odd block (fine-grained);
    # "clamp": window = grid and no shift where the grid is not larger than it (coarse-grained)
    cfg.MODEL.FIBER.SWIN.WINDOW_POLICY = "pad_and_shift"
    # "per_stage": LayerNorm on res3..res5, Identity on res2 (fine-grained); "final": one
    # LayerNorm on the last stage, applied on the unfused path only (coarse-grained)
    cfg.MODEL.FIBER.SWIN.OUTPUT_NORMS = "per_stage"
    cfg.MODEL.FIBER.SWIN.FREEZE_AT = 0  # 0 none, 1 patch embedding, k: also stages 1..k-1
    cfg.MODEL.FIBER.SWIN.WEIGHTS = ""  # Swin checkpoint file (microsoft or timm layout) or ""
    cfg.MODEL.FIBER.TEXT = CN()
    # "roberta" (FIBER's text tower) or "bert" (BERT-family: GLIP's text tower, MiniLM; absolute
    # position ids, no padding row); the layers and their parameter names are the same
    cfg.MODEL.FIBER.TEXT.ARCHITECTURE = "roberta"
    # transformers directory (or hub name) of that architecture: its config.json sets the sizes
    # below and its weights initialise the text tower; "" = random init with the sizes below
    cfg.MODEL.FIBER.TEXT.WEIGHTS = ""
    cfg.MODEL.FIBER.TEXT.VOCAB_SIZE = 50265  # token vocabulary
    cfg.MODEL.FIBER.TEXT.HIDDEN_SIZE = 768  # text width D
    cfg.MODEL.FIBER.TEXT.NUM_LAYERS = 12  # encoder layers
    cfg.MODEL.FIBER.TEXT.NUM_HEADS = 12  # attention heads (self and text->image)
    cfg.MODEL.FIBER.TEXT.INTERMEDIATE_SIZE = 3072  # FFN width
    cfg.MODEL.FIBER.TEXT.MAX_POSITION_EMBEDDINGS = 514  # position table (pad id + 1 + tokens)
    cfg.MODEL.FIBER.TEXT.TYPE_VOCAB_SIZE = 1  # token-type table (RoBERTa: 1)
    cfg.MODEL.FIBER.TEXT.LAYER_NORM_EPS = 1e-5  # LayerNorm eps of the text tower
    cfg.MODEL.FIBER.TEXT.PAD_TOKEN_ID = 1  # <pad> id (position ids skip it)
    cfg.MODEL.FIBER.TEXT.DROPOUT = 0.1  # hidden and attention dropout of the text tower
    # 0 none, 1 the embeddings, k: also layers 1..k-1 (no gradient, no backward through them)
    cfg.MODEL.FIBER.TEXT.FREEZE_AT = 0
    cfg.MODEL.FIBER.FUSION = CN()
    cfg.MODEL.FIBER.FUSION.ENABLED = True  # False: always two independent encoders
    # K: the last K Swin blocks pair with the last K text layers (FIBER-B: 6 = 4 + 2)
    cfg.MODEL.FIBER.FUSION.NUM_LAYERS = 6
    cfg.MODEL.FIBER.FUSION.QUERY_NORM = False  # LayerNorm on the image query (v3 / coarse)
    # the last text layer's output LayerNorm on the fused path (coarse `last_norm=False`: False)
    cfg.MODEL.FIBER.FUSION.TEXT_LAST_NORM = True


def _add_head_config(cfg: CN) -> None:
    """MODEL.DYHEAD / MODEL.GROUNDING: the grounding detector on top of the trunk."""
    cfg.MODEL.DYHEAD = CN()
    cfg.MODEL.DYHEAD.NAME = "GroundingHead"  # GROUNDING_HEAD_REGISTRY entry
    cfg.MODEL.DYHEAD.NUM_BLOCKS = 6  # DyHead blocks in the tower (FIBER-B: 6)
    cfg.MODEL.DYHEAD.GN_GROUPS = 16  # GroupNorm groups after each deformable conv
    cfg.MODEL.DYHEAD.PRIOR_PROB = 0.01  # initial token probability: bias0 = -log((1 - p) / p)
    cfg.MODEL.DYHEAD.LOG_SCALE = 0.0  # initial learnable log temperature of the token logits
    cfg.MODEL.DYHEAD.LOGIT_CLAMP = 50000.0  # token logits are clamped to [-v, v]
    cfg.MODEL.GROUNDING = CN()
    # FPN levels fed to the head, finest first (strides from the backbone's output_shape)
    cfg.MODEL.GROUNDING.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    cfg.MODEL.GROUNDING.ANCHOR_SIZES = [64, 128, 256, 512, 1024]  # one square anchor per level
    cfg.MODEL.GROUNDING.ATSS_TOPK = 9  # ATSS candidates per level and GT (by centre distance)
    cfg.MODEL.GROUNDING.FOCAL_ALPHA = 0.25  # token sigmoid focal loss alpha
    cfg.MODEL.GROUNDING.FOCAL_GAMMA = 2.0  # token sigmoid focal loss gamma
    cfg.MODEL.GROUNDING.REG_LOSS_WEIGHT = 2.0  # weight of the centerness-weighted GIoU loss
    cfg.MODEL.GROUNDING.SCORE_THRESH_TEST = 0.05  # class score threshold before centerness
    cfg.MODEL.GROUNDING.PRE_NMS_TOPK_TEST = 1000  # candidates kept per level and image
    cfg.MODEL.GROUNDING.NMS_THRESH_TEST = 0.6  # class-wise NMS IoU; cap: TEST.DETECTIONS_PER_IMAGE
    # prompt chunks per fused pass at inference, after the image prefix: 1 runs them one at a time
    # (as the original does; on a 2-core Intel CPU also the fastest: FIBER-B, LVIS-1203, 800x1333
    # in 70 s and 2.2 GB, against 92-101 s and 6.9 GB for all 31 chunks in one pass), k batches k,
    # 0 all
    cfg.MODEL.GROUNDING.PROMPTS_PER_PASS = 1


def _add_data_config(cfg: CN) -> None:
    """INPUT / DATASETS / TEST additions: prompts, tokenizer, evaluation protocol."""
    cfg.INPUT.TEXT = CN()
    # tokenizer: a local directory written by save_pretrained (or a hub name when online)
    cfg.INPUT.TEXT.TOKENIZER = "roberta-base"
    # token limit of one prompt incl. <s> and </s> (the original's MAX_QUERY_LEN)
    cfg.INPUT.TEXT.MAX_QUERY_LEN = 256
    # training prompt for detection data whose metadata names no prompt_policy:
    # "all_classes_shuffled" (COCO fine-tuning) or "positives_negatives" (Objects365 style)
    cfg.INPUT.TEXT.DETECTION_PROMPT = "all_classes_shuffled"
    # positives_negatives policy: most negatives per prompt (the original's RANDOM_SAMPLE_NEG)
    cfg.INPUT.TEXT.MAX_NEGATIVES = 85
    # positives_negatives policy: P(one negative), P(no negative), P(all MAX_NEGATIVES);
    # otherwise uniform in 1..MAX_NEGATIVES (the original's CONTROL_PROB without drop-positive)
    cfg.INPUT.TEXT.NEGATIVE_CONTROL_PROBS = (0.05, 0.05, 0.5)
    # json {dataset_name: [{"prefix", "name", "suffix"} per class]}: per-class caption prompts
    # (GLIP/FIBER's ODinW CAPTION_PROMPT); "" = plain class names
    cfg.INPUT.TEXT.CAPTION_PROMPT_FILE = ""
    # the original's training sizes: shorter side chosen from 480..800, longer side <= 1333
    cfg.INPUT.MIN_SIZE_TRAIN = (480, 560, 640, 720, 800)
    # at most this many classes per evaluation prompt (0 = only the token limit; LVIS uses 40)
    cfg.TEST.CHUNK_SIZE = 0
    # LVIS Fixed AP: detections kept per category over the split (0 = report standard AP only)
    cfg.TEST.FIXED_AP_TOPK = 10000


def _add_coarse_config(cfg: CN) -> None:
    """MODEL.PRETRAIN: the coarse image-text stage (ITC / ITM / MLM) and downstream heads."""
    cfg.MODEL.PRETRAIN = CN()
    # Width of the cross-modal transforms, poolers and ITC embedding (FIBER-B: 768).
    cfg.MODEL.PRETRAIN.HIDDEN_SIZE = 768
    # Loss weights; a weight of 0 also skips that pass (the original sums them 1:1:1).
    cfg.MODEL.PRETRAIN.ITC_WEIGHT = 1.0
    cfg.MODEL.PRETRAIN.ITM_WEIGHT = 1.0
    cfg.MODEL.PRETRAIN.MLM_WEIGHT = 1.0
    # Initial ITC temperature (a learnable scalar) and the range it is clamped to before use.
    cfg.MODEL.PRETRAIN.TEMPERATURE = 0.07
    cfg.MODEL.PRETRAIN.TEMPERATURE_RANGE = (0.001, 1.0)
    # Detached past ITC features kept as extra negatives (original: 4096; 0 = global batch only).
    cfg.MODEL.PRETRAIN.QUEUE_SIZE = 4096
    # LayerNorm eps of the MLM head (1e-12 in the original, from a separate RobertaConfig).
    cfg.MODEL.PRETRAIN.MLM_HEAD_EPS = 1e-12
    # Fraction of non-special tokens selected for MLM (80 % <mask> / 10 % random / 10 % kept).
    cfg.MODEL.PRETRAIN.MLM_PROBABILITY = 0.15
    # Square input size (bicubic resize, no crop) and caption token limit incl. <s> and </s>.
    cfg.MODEL.PRETRAIN.IMAGE_SIZE = 384
    cfg.MODEL.PRETRAIN.MAX_TEXT_LEN = 40
    # Training images through albef_randaug (crop, flip, RandAugment; every fine-tune, spec d.2)
    # instead of the plain bicubic resize.
    cfg.MODEL.PRETRAIN.AUGMENT = False
    # VQA answer vocabulary size: the vqa_classifier's outputs (VQAv2: 3129 answers).
    cfg.MODEL.PRETRAIN.NUM_ANSWERS = 3129
    # Retrieval evaluation: ITM re-ranks the ITC top-k candidates of every query (0 = ITC only,
    # -1 = ITM on every image-text pair, the original's exhaustive protocol, spec c.3).
    cfg.MODEL.PRETRAIN.ITM_RERANK_TOP_K = 16
    # ITM negatives: "hard" (pre-training: one image and one caption per pair sampled from the
    # ITC similarities, 3B pairs) or "random" (task_finetune_irtr_itm_*: B pairs, B // 2 of them
    # with the image swapped for a random other image of the global batch, spec b.2 / c.3).
    cfg.MODEL.PRETRAIN.ITM_NEGATIVES = "hard"
    # Captioning (FiberCaptionModel, spec c.4).
    cfg.MODEL.PRETRAIN.CAPTION = CN()
    # Beams at inference (1 = greedy), length-normalised; max tokens incl. <s> (original: 50).
    cfg.MODEL.PRETRAIN.CAPTION.BEAM_SIZE = 5
    cfg.MODEL.PRETRAIN.CAPTION.MAX_LENGTH = 50
    # <mask> id, never generated (roberta-base: 50264; tokenizers trained by fiber_det: 4).
    cfg.MODEL.PRETRAIN.CAPTION.MASK_TOKEN_ID = 50264
    # "mle", or CIDEr optimisation: "cider_reinforce" (the original's constant baseline 1.0) or
    # "cider_scst" (greedy-caption baseline); NUM_SAMPLES sampled captions per image, total loss
    # MLE_WEIGHT * MLE + (1 - MLE_WEIGHT) * RL (original: 5 samples, 0.3).
    cfg.MODEL.PRETRAIN.CAPTION.OBJECTIVE = "mle"
    cfg.MODEL.PRETRAIN.CAPTION.NUM_SAMPLES = 5
    cfg.MODEL.PRETRAIN.CAPTION.MLE_WEIGHT = 0.3
    # Test-set examples (images, questions, image pairs) per process and batch in evaluation.
    cfg.MODEL.PRETRAIN.EVAL_BATCH_SIZE = 16


def _add_solver_config(cfg: CN) -> None:
    """SOLVER additions shared by both trainers (param groups, lr factors)."""
    # "ADAMW" or "SGD" (SGD uses detectron2's MOMENTUM / NESTEROV).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # AdamW betas and eps (coarse pre-training: (0.9, 0.98), 1e-8; fine stage: torch defaults).
    cfg.SOLVER.BETAS = (0.9, 0.999)
    cfg.SOLVER.EPS = 1e-8
    # Param-group rules by parameter name: "fine" (fine_grained_spec g) or "coarse" (coarse d.6).
    cfg.SOLVER.PARAM_GROUPS = "fine"
    # fine: parameters whose name contains one of these belong to the text tower, lr LANG_LR.
    cfg.SOLVER.LANG_KEYWORDS = ["text_backbone"]
    cfg.SOLVER.LANG_LR = 1e-5
    # fine: image-tower name keywords, lr BASE_LR x IMAGE_LR_FACTOR (BACKBONE_BODY_LR_FACTOR).
    cfg.SOLVER.IMAGE_KEYWORDS = ["image_backbone"]
    cfg.SOLVER.IMAGE_LR_FACTOR = 1.0
    # fine: weight decay of names containing "norm" is multiplied by this (after the bias rule).
    cfg.SOLVER.WEIGHT_DECAY_NORM_FACTOR = 1.0
    # coarse: names containing any of these get no weight decay (substring match as METER; the
    # original's "norm." rule on fiber_det names, so the i2t query LayerNorm keeps its decay).
    cfg.SOLVER.NO_DECAY_KEYWORDS = [
        "bias", "LayerNorm.", "norm1.", "norm2.", "patch_embed.norm.", "downsample.norm.",
        "final_norm.",
    ]  # fmt: skip
    # coarse: head parameters (lr x HEAD_LR_FACTOR; 5 in pre-training, 50 for VQA / NLVR2).
    cfg.SOLVER.HEAD_KEYWORDS = ["mlm_score", "itm_score", "vqa_classifier", "nlvr2_classifier"]
    cfg.SOLVER.HEAD_LR_FACTOR = 5.0
    # coarse: cross-modal parameters (transforms, poolers, cross-attention, gates), lr x factor.
    cfg.SOLVER.CROSS_MODAL_KEYWORDS = ["cross_modal", "i2t", "t2i"]
    cfg.SOLVER.CROSS_MODAL_LR_FACTOR = 5.0
    # with detectron2's SOLVER.AMP.ENABLED (CUDA): the autocast dtype, "float16" (the original's
    # fp16 mixed precision) or "bfloat16" (Ampere and newer GPUs)
    cfg.SOLVER.AMP.PRECISION = "float16"


def _add_ema_config(cfg: CN) -> None:
    """MODEL.EMA: moving average of the weights (fiber_det.ema), saved as `model_ema`."""
    cfg.MODEL.EMA = CN()
    # True: average the weights after every step; evaluation and --eval-only use the average
    cfg.MODEL.EMA.ENABLED = False
    cfg.MODEL.EMA.DECAY = 0.999  # ema = DECAY * ema + (1 - DECAY) * weights (original: 0.999)


def add_fiber_config(cfg: CN) -> None:
    """Add every fiber_det key (with its default) to a detectron2 `get_cfg()` node, in place."""
    _add_trunk_config(cfg)
    _add_head_config(cfg)
    _add_data_config(cfg)
    _add_coarse_config(cfg)
    _add_solver_config(cfg)
    _add_ema_config(cfg)


def get_fiber_cfg() -> CN:
    """A fresh detectron2 config with fiber_det's keys added."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_fiber_config(cfg)
    return cfg
