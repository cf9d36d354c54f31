"""tools/benchmark.py subcommands of the coarse stage: training steps, caption decoding and
ITM retrieval cost."""

import json
import os
import statistics
import time

import torch
from benchmark_common import peak_rss_mib, run_child, subcommand, time_calls

# ---------------------------------------------------------------------------------------------
# coarse


COARSE_CONFIGS = {
    "tiny": "configs/coarse_grained/tiny.yaml",
    "fiber-b": "configs/coarse_grained/pretrain_mlm_itm_itc.yaml",
}


def coarse_batch(batch_size: int, image_size: int, text_len: int, vocab: int) -> list[dict]:
    """Random uint8 images and captions of `text_len` tokens, 15 % of them masked for MLM."""
    batch = []
    for index in range(batch_size):
        ids = torch.randint(5, vocab, (text_len,))
        ids[0], ids[-1] = 0, 2
        labels = torch.where(torch.rand(text_len) < 0.15, ids, torch.full_like(ids, -100))
        labels[1] = ids[1]
        masked = torch.where(labels != -100, torch.full_like(ids, 4), ids)
        text = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        text.update(mlm_input_ids=masked, mlm_labels=labels)
        image = torch.randint(0, 256, (3, image_size, image_size), dtype=torch.uint8)
        batch.append({"image": image, "image_id": index, "texts": [text]})
    return batch


def measure_coarse_case(args) -> dict:
    """One training step (ITC + 3B-pair ITM + MLM, backward, AdamW) of the coarse model."""
    from detectron2.modeling import build_model

    from fiber_det.config import get_fiber_cfg
    from fiber_det.solver import build_optimizer

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = get_fiber_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", COARSE_CONFIGS[args.model]))
    cfg.MODEL.PRETRAIN.IMAGE_SIZE = args.image_size
    cfg.MODEL.FIBER.SWIN.WINDOW_SIZE = args.image_size // 32
    cfg.MODEL.DEVICE = device
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    vocab = model.trunk.text_vocab_size
    batch = coarse_batch(args.batch_size, args.image_size, args.text_len, vocab)

    def step() -> None:
        losses = model(batch)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = peak_rss_mib()
    times = time_calls(step, args.iters, args.warmup, device)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else peak_rss_mib() - rss_before
    )
    return {
        "model": args.model,
        "image_size": args.image_size,
        "batch": args.batch_size,
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "train_step_ms": round(min(times), 1),
        "train_step_ms_median": round(statistics.median(times), 1),
        "peak_mem_mib": round(peak, 1),
    }


@subcommand(
    "coarse",
    "coarse-stage training step (ITC + ITM + MLM, backward, AdamW): time and peak memory",
    [
        (["--models"], {"nargs": "+", "default": ["tiny", "fiber-b"]}),
        (["--image-size"], {"type": int, "default": 384}),
        (["--batch-size"], {"type": int, "default": 8}),
        (["--text-len"], {"type": int, "default": 40}),
        (["--iters"], {"type": int, "default": 2}),
        (["--warmup"], {"type": int, "default": 1}),
        (["--case"], {"metavar": "MODEL", "help": "internal"}),
    ],
)
def benchmark_coarse(args) -> None:
    """Print one JSON line per model, each measured in a fresh process."""
    if args.case:
        args.model = args.case
        print(json.dumps(measure_coarse_case(args)))
        return
    for model in args.models:
        argv = ["coarse", "--case", model, "--image-size", str(args.image_size)]
        argv += ["--batch-size", str(args.batch_size), "--text-len", str(args.text_len)]
        argv += ["--iters", str(args.iters), "--warmup", str(args.warmup)]
        print(json.dumps(run_child(argv)), flush=True)


# ---------------------------------------------------------------------------------------------
# caption


@subcommand(
    "caption",
    "caption decoding (beam search, every beam run to --max-length): images/s with and without "
    "the key/value cache",
    [
        (["--models"], {"nargs": "+", "default": ["tiny"]}),
        (["--image-size"], {"type": int, "default": 128}),
        (["--batch-size"], {"type": int, "default": 4}),
        (["--beam-size"], {"type": int, "default": 5}),
        (["--max-length"], {"type": int, "default": 50}),
    ],
)
def benchmark_caption(args) -> None:
    """One JSON line per model (random weights; no beam ends early, so both runs decode
    --max-length tokens; image encoding included). FIBER-B: `--models fiber-b --image-size 576`."""
    for name in args.models:
        print(json.dumps(measure_caption_decode(name, args)), flush=True)


def measure_caption_decode(name: str, args) -> dict:
    """Images/s of beam search with and without the key/value cache for one model."""
    from detectron2.modeling import build_model

    from fiber_det.config import get_fiber_cfg
    from fiber_det.modeling.vision_language.beam_search import beam_search
    from fiber_det.modeling.vision_language.caption_model import reorder_decoding_state

    torch.manual_seed(0)
    cfg = get_fiber_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", COARSE_CONFIGS[name]))
    cfg.MODEL.META_ARCHITECTURE = "FiberCaptionModel"
    cfg.MODEL.PRETRAIN.IMAGE_SIZE = args.image_size
    cfg.MODEL.FIBER.SWIN.WINDOW_SIZE = args.image_size // 32
    cfg.MODEL.PRETRAIN.CAPTION.MASK_TOKEN_ID = cfg.MODEL.FIBER.TEXT.VOCAB_SIZE - 1
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(cfg).eval()
    images = list(torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size)))
    ids = model.special_ids
    options = {"beam_size": args.beam_size, "max_length": args.max_length, "end_ids": (-1,)}
    options.update(pad_id=ids["pad"], suppress_ids=(ids["mask"],))
    options["reorder_state"] = reorder_decoding_state

    def decode(cached: bool) -> None:
        state = {"image": model.encode_images(model.normalize_images(images)), "cache": None}
        start = torch.full((len(images), 1), ids["bos"], device=model.device)
        beam_search(model.decoding_step(cached), start, state, **options)

    result = {"model": name, "image_size": args.image_size, "batch": args.batch_size}
    with torch.no_grad():
        for cached in (True, False):
            seconds = min(time_calls(lambda c=cached: decode(c), 2, 1, cfg.MODEL.DEVICE)) / 1e3
            result[f"{'cached' if cached else 'uncached'}_images_per_s"] = round(
                len(images) / seconds, 2
            )
    return {**result, "beam": args.beam_size, "tokens": args.max_length - 1}


# ---------------------------------------------------------------------------------------------
# retrieval


RETRIEVAL_PAIRS = {"tiny": 32, "fiber-b": 2}  # the evaluator scores chunks of 32 pairs


def measure_retrieval_case(args) -> dict:
    """Seconds per ITC image / text pass and per ITM pair (one image prefix per chunk of
    --pairs texts, as the evaluator's image-major chunks, and one image per pair)."""
    from detectron2.modeling import build_model

    from fiber_det.config import get_fiber_cfg

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = get_fiber_cfg()
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", COARSE_CONFIGS[args.model]))
    cfg.MODEL.DEVICE = device
    model = build_model(cfg).eval()
    size, pairs = cfg.MODEL.PRETRAIN.IMAGE_SIZE, args.pairs or RETRIEVAL_PAIRS[args.model]
    vocab = model.trunk.text_vocab_size
    batch = coarse_batch(pairs, size, args.text_len, vocab)
    images, texts = [b["image"] for b in batch], [b["texts"][0] for b in batch]
    ids = torch.stack([t["input_ids"] for t in texts]).to(device)
    mask = torch.ones_like(ids)

    def seconds(function) -> float:
        return min(time_calls(function, args.iters, 1, device)) / 1000

    with torch.no_grad():
        image_s = seconds(lambda: model.encode_image_itc(model.normalize_images(images))) / pairs
        text_s = seconds(lambda: model.encode_text_itc(ids, mask)) / pairs
        one_image = torch.zeros(pairs, dtype=torch.long)
        shared_s = seconds(lambda: model.itm_match_scores(images[:1], texts, one_image)) / pairs
        distinct_s = seconds(lambda: model.itm_match_scores(images, texts)) / pairs
    case = {
        "model": args.model,
        "image_size": size,
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "pairs_per_batch": pairs,
        "itc_image_s": image_s,
        "itc_text_s": text_s,
        "itm_pair_s": shared_s,
        "itm_pair_distinct_images_s": distinct_s,
    }
    if args.model in args.check_models:
        case["gallery_check"] = check_small_gallery(model, size, vocab, shared_s, args)
    return case


def check_small_gallery(model, image_size: int, vocab: int, pair_s: float, args) -> list[dict]:
    """RetrievalEvaluator on --check-images (N) images x 5 random captions each, ITM on the ITC
    top-(N / 4) and on all pairs: measured evaluate() seconds against pairs x `pair_s`."""
    from fiber_det.evaluation.retrieval import RetrievalEvaluator

    samples = coarse_batch(args.check_images, image_size, args.text_len, vocab)
    captions = coarse_batch(5 * args.check_images, 1, args.text_len, vocab)
    for index, sample in enumerate(samples):
        sample["texts"] = [c["texts"][0] for c in captions[5 * index : 5 * index + 5]]
    with torch.no_grad():
        outputs = [model([sample])[0] for sample in samples]
    checks = []
    for top_k in (max(1, args.check_images // 4), -1):
        evaluator = RetrievalEvaluator(scorer=model.itm_match_scores, itm_top_k=top_k)
        for sample, output in zip(samples, outputs, strict=True):
            evaluator.process([sample], [output])
        start = time.perf_counter()
        pairs = evaluator.evaluate()["retrieval"]["itm_pairs_scored"]
        measured = time.perf_counter() - start
        checks.append({"itm_top_k": top_k, "pairs": int(pairs), "measured_s": round(measured, 2)})
        checks[-1]["predicted_s"] = round(pairs * pair_s, 2)
    return checks


def retrieval_cost_rows(case: dict, images: int, texts: int, top_ks: list[int]) -> list[list]:
    """Extrapolated (mode, fused passes, seconds, hours) for an images x texts gallery: ITC
    alone, ITM on the ITC top-k (at most k x (images + texts) distinct pairs, plus ITC), and
    ITM on all images x texts pairs (the original's protocol, no ITC)."""
    itc_s = images * case["itc_image_s"] + texts * case["itc_text_s"]
    rows = [["ITC", 0, itc_s]]
    for k in top_ks:
        pairs = min(k * (images + texts), images * texts)
        rows.append([f"ITM on ITC top-{k}", pairs, itc_s + pairs * case["itm_pair_s"]])
    rows.append(["ITM, all pairs", images * texts, images * texts * case["itm_pair_s"]])
    return [[mode, pairs, round(s), round(s / 3600, 2)] for mode, pairs, s in rows]


@subcommand(
    "retrieval",
    "retrieval cost of a 1k image x 5k text gallery: ITC, ITM on the ITC top-k, ITM on all "
    "pairs (extrapolated from measured pass times)",
    [
        (["--models"], {"nargs": "+", "default": ["tiny", "fiber-b"]}),
        (["--images"], {"type": int, "default": 1000}),
        (["--texts"], {"type": int, "default": 5000}),
        (["--top-k"], {"type": int, "nargs": "+", "default": [16, 128]}),
        (
            ["--pairs"],
            {"type": int, "default": 0, "help": "pairs per timed batch (0: 32 tiny, 2 fiber-b)"},
        ),
        (
            ["--check-models"],
            {"nargs": "*", "default": ["tiny"], "help": "also time the evaluator"},
        ),
        (["--check-images"], {"type": int, "default": 16}),
        (["--text-len"], {"type": int, "default": 16}),
        (["--iters"], {"type": int, "default": 1}),
        (["--threads"], {"type": int, "default": 0, "help": "CPU threads (0: torch's default)"}),
        (["--case"], {"metavar": "MODEL", "help": "internal"}),
    ],
)
def benchmark_retrieval(args) -> None:
    """Per model (fresh process; the model's config image size, random weights): one JSON line
    of measured pass times, then a table of the extrapolated gallery cost."""
    from tabulate import tabulate

    if args.case:
        args.model = args.case
        print(json.dumps(measure_retrieval_case(args)))
        return
    for model in args.models:
        argv = ["retrieval", "--case", model, "--pairs", str(args.pairs)]
        argv += ["--text-len", str(args.text_len), "--iters", str(args.iters)]
        argv += ["--threads", str(args.threads), "--top-k", *map(str, args.top_k)]
        argv += ["--check-images", str(args.check_images), "--check-models", *args.check_models]
        case = run_child(argv)
        print(json.dumps(case), flush=True)
        if "error" in case:
            continue
        rows = retrieval_cost_rows(case, args.images, args.texts, args.top_k)
        title = f"{model} ({case['image_size']} px, {case['device']}), "
        print(title + f"{args.images} images x {args.texts} texts:")
        print(tabulate(rows, headers=["mode", "fused passes", "seconds", "hours"]), flush=True)
        if "gallery_check" in case:
            print(f"evaluator on {args.check_images} x {5 * args.check_images}, measured:")
            print(tabulate(case["gallery_check"], headers="keys"), flush=True)
