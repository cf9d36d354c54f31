"""tools/benchmark.py subcommands of the fused trunk and the grounding detector."""

import json
import os
import statistics

import torch
from benchmark_common import (
    count_gflop,
    matmul_rates,
    page_faults,
    peak_rss_mib,
    run_child,
    subcommand,
    time_calls,
)

GROUNDING_CONFIG = "configs/Base-FIBER-Grounding.yaml"

# ---------------------------------------------------------------------------------------------
# trunk


def trunk_config(model: str, use_sdpa: bool):
    """The FIBER-B defaults or a tiny trunk (Swin 32 / (1, 1, 2, 2), RoBERTa 64 x 4 layers)."""
    from fiber_det.config import get_fiber_cfg

    cfg = get_fiber_cfg()
    fiber = cfg.MODEL.FIBER
    fiber.USE_SDPA = use_sdpa
    if model == "tiny":
        fiber.SWIN.EMBED_DIM, fiber.SWIN.DEPTHS, fiber.SWIN.NUM_HEADS = (
            32,
            [1, 1, 2, 2],
            [1, 2, 4, 8],
        )
        fiber.TEXT.HIDDEN_SIZE, fiber.TEXT.NUM_LAYERS, fiber.TEXT.NUM_HEADS = 64, 4, 4
        fiber.TEXT.INTERMEDIATE_SIZE, fiber.FUSION.NUM_LAYERS = 128, 3
        cfg.MODEL.FPN.OUT_CHANNELS = 32
    elif model != "fiber-b":
        raise ValueError(f"unknown model '{model}' (tiny, fiber-b)")
    return cfg


def measure_trunk_case(args) -> dict:
    """One (model, size, dtype) case in this process: full forward, prefix and fused part."""
    from detectron2.layers import ShapeSpec

    from fiber_det.modeling.backbone.fpn import build_fiber_fpn_backbone

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    height, width = (int(v) for v in args.size.split("x"))
    cfg = trunk_config(args.model, args.sdpa)
    backbone = build_fiber_fpn_backbone(cfg, ShapeSpec(channels=3)).to(device).eval()
    images = torch.randn(1, 3, height, width, device=device)
    input_ids = torch.randint(3, 1000, (1, args.text_len), device=device)
    attention_mask = torch.ones_like(input_ids)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), autocast:
        full = time_calls(
            lambda: backbone(images, input_ids, attention_mask), args.iters, args.warmup, device
        )
        prefix = backbone.encode_image_prefix(images)
        prefix_ms = time_calls(lambda: backbone.encode_image_prefix(images), args.iters, 0, device)
        fused_ms = time_calls(
            lambda: backbone.forward_from_prefix(prefix, input_ids, attention_mask),
            args.iters,
            0,
            device,
        )
        faults = page_faults(lambda: backbone(images, input_ids, attention_mask))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mib()
    rate = {}
    if args.flops and device == "cpu":
        rate = work_rate(lambda: backbone(images, input_ids, attention_mask), min(full))
    return {
        "model": args.model,
        "size": args.size,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "params_m": round(sum(p.numel() for p in backbone.parameters()) / 1e6, 2),
        "forward_ms": round(min(full), 1),
        "forward_ms_median": round(statistics.median(full), 1),
        "prefix_ms": round(min(prefix_ms), 1),
        "fused_part_ms": round(min(fused_ms), 1),
        "peak_mem_mib": round(peak, 1),
        "page_faults_per_call": faults,
        **rate,
    }


def work_rate(forward, forward_ms: float) -> dict:
    """GFLOP of one `forward`, the GFLOP/s it ran at in `forward_ms`, and that as a fraction
    of the fp32 matmul rate measured now."""
    with torch.no_grad():
        work = count_gflop(forward)
    achieved = work / forward_ms * 1000
    return {"gflop": round(work, 1), "gflops": round(achieved, 1), **matmul_rates(achieved)}


@subcommand(
    "trunk",
    "fused trunk + FPN forward latency and peak memory",
    [
        (["--models"], {"nargs": "+", "default": ["tiny", "fiber-b"]}),
        (["--sizes"], {"nargs": "+", "default": ["384x384", "800x1344"]}),
        (["--dtypes"], {"nargs": "+", "default": ["fp32", "bf16"]}),
        (["--text-len"], {"type": int, "default": 256}),
        (["--iters"], {"type": int, "default": 2}),
        (["--warmup"], {"type": int, "default": 1}),
        (["--no-sdpa"], {"dest": "sdpa", "action": "store_false"}),
        (["--flops"], {"action": "store_true", "help": "also GFLOP/s vs the matmul rate (CPU)"}),
        (
            ["--bf16-cpu-all"],
            {"action": "store_true", "help": "also run FIBER-B in bf16 on CPU (hours)"},
        ),
        (["--case"], {"nargs": 3, "metavar": ("MODEL", "SIZE", "DTYPE"), "help": "internal"}),
    ],
)
def benchmark_trunk(args) -> None:
    """Print one JSON line per case. bf16 autocast on a CPU without AMX/AVX-512 is some 400x
    slower than fp32 (ENVIRONMENT.md), so on CPU it runs for the tiny model only unless
    --bf16-cpu-all is given."""
    if args.case:
        args.model, args.size, args.dtype = args.case
        print(json.dumps(measure_trunk_case(args)))
        return
    on_cpu = not torch.cuda.is_available()
    for model in args.models:
        for size in args.sizes:
            for dtype in args.dtypes:
                if on_cpu and dtype == "bf16" and model != "tiny" and not args.bf16_cpu_all:
                    skipped = "bf16 autocast on this CPU is ~400x slower (use --bf16-cpu-all)"
                    print(json.dumps({"model": model, "size": size, "skipped": skipped}))
                    continue
                argv = ["trunk", "--case", model, size, dtype, "--text-len", str(args.text_len)]
                argv += ["--iters", str(args.iters), "--warmup", str(args.warmup)]
                argv += [] if args.sdpa else ["--no-sdpa"]
                print(json.dumps(run_child(argv)), flush=True)


# ---------------------------------------------------------------------------------------------
# detector


def detector_config(model: str):
    """The trunk of `trunk_config` under the grounding detector of Base-FIBER-Grounding.yaml."""
    cfg = trunk_config(model, use_sdpa=True)
    cfg.merge_from_file(os.path.join(os.path.dirname(__file__), "..", GROUNDING_CONFIG))
    if model == "tiny":
        cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.DYHEAD.GN_GROUPS = 32, 16
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    return cfg


def vocabulary_prompts(num_classes: int, chunk: int, tokenizer_dir: str) -> list[dict]:
    """`num_classes` made-up two-word class names, tokenized and chunked `chunk` per prompt."""
    from fiber_det.data.prompts import build_detection_prompts
    from fiber_det.data.tokenizer import train_byte_level_bpe

    words = ["red", "small", "wooden", "striped", "metal", "round", "tall", "old"]
    names = [f"{words[i % 8]} object{i}" for i in range(num_classes)]
    tokenizer = train_byte_level_bpe(names, tokenizer_dir, vocab_size=600)
    return build_detection_prompts(names, tokenizer, max_per_chunk=chunk)


def measure_detector_case(args) -> dict:
    """Inference on one image with a `num_classes` vocabulary: all chunks in one call (the trunk
    prefix computed once; chunks MODEL.GROUNDING.PROMPTS_PER_PASS at a time, and all in one
    pass) versus one call per chunk (each from scratch)."""
    import tempfile

    from detectron2.modeling import build_model

    torch.manual_seed(0)
    cfg = detector_config(args.model)
    model = build_model(cfg).eval()
    height, width = (int(v) for v in args.size.split("x"))
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        prompts = vocabulary_prompts(args.num_classes, args.chunk, tokenizer_dir)
    request = {"image": image, "height": height, "width": width}
    with torch.no_grad():
        reused = time_calls(
            lambda: model([{**request, "prompts": prompts}]), 1, 0, cfg.MODEL.DEVICE
        )
        scratch = time_calls(
            lambda: [model([{**request, "prompts": [p]}]) for p in prompts], 1, 0, cfg.MODEL.DEVICE
        )
        peak_rss = peak_rss_mib()
        model.prompts_per_pass = 0
        one_pass = time_calls(
            lambda: model([{**request, "prompts": prompts}]), 1, 0, cfg.MODEL.DEVICE
        )
    return {
        "model": args.model,
        "size": args.size,
        "num_classes": args.num_classes,
        "prompts": len(prompts),
        "prompts_per_pass": cfg.MODEL.GROUNDING.PROMPTS_PER_PASS,
        "prefix_reused_s": round(reused[0] / 1000, 2),
        "prefix_reused_all_chunks_in_one_pass_s": round(one_pass[0] / 1000, 2),
        "each_chunk_from_scratch_s": round(scratch[0] / 1000, 2),
        "peak_rss_mib": round(peak_rss, 1),
        "peak_rss_all_chunks_in_one_pass_mib": round(peak_rss_mib(), 1),
    }


@subcommand(
    "detector",
    "grounding detector inference per image: long vocabularies with and without prefix reuse",
    [
        (["--models"], {"nargs": "+", "default": ["tiny"]}),
        (["--size"], {"default": "800x1333"}),
        (["--num-classes"], {"nargs": "+", "type": int, "default": [80, 1203]}),
        (["--chunk"], {"type": int, "default": 40}),
        (["--case"], {"nargs": 2, "metavar": ("MODEL", "NUM_CLASSES"), "help": "internal"}),
    ],
)
def benchmark_detector(args) -> None:
    """Print one JSON line per (model, vocabulary size), each in a fresh process. FIBER-B takes
    minutes per case on a 2-core CPU: add it with `--models tiny fiber-b`."""
    if args.case:
        args.model, args.num_classes = args.case[0], int(args.case[1])
        print(json.dumps(measure_detector_case(args)))
        return
    for model in args.models:
        for num_classes in args.num_classes:
            argv = ["detector", "--case", model, str(num_classes), "--size", args.size]
            print(json.dumps(run_child(argv + ["--chunk", str(args.chunk)])), flush=True)
