"""`tools/benchmark.py gpu`: images/s of the grounding detector on a CUDA device, issue 17's GPU
line: FIBER-B at 800x1333 with one COCO-80 prompt (the way the original evaluates COCO), one
detector call per batch (preprocessing, trunk, FPN, head and post-processing), in fp32 (torch's
defaults: cuDNN convs may use TF32, matmuls do not), TF32 matmuls, bf16 autocast, and bf16 with
torch.compile. Every case runs in its own process; peak memory is torch's max_memory_allocated.
The published anchor: FIBER-B at 3.1 images/s on an A100 (OmDet-Turbo paper, COCO val2017).
"""

import json
import statistics

import torch
from benchmark_common import run_child, subcommand, time_calls

PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_SCOPES = ("none", "head", "all")
BATCHES = (1, 4)  # images per call of the default run
RUN_SCOPES = ("none", "all")  # compile scopes of the default run


def compile_detector(model, scope: str) -> None:
    """torch.compile (nn.Module.compile, in place) what repeats: "head" the FPN and the DyHead,
    "all" also every Swin block and text layer. Swin-B's blocks come in more shape / shift
    variants than Dynamo recompiles one function for by default, hence the higher limit."""
    if scope == "none":
        return
    modules = [model.backbone.fpn, model.head]
    if scope == "all":
        torch._dynamo.config.recompile_limit = 64
        trunk = model.backbone.trunk
        modules += [block for stage in trunk.image_backbone.layers for block in stage.blocks]
        modules += list(trunk.text_backbone.layers)
    for module in modules:
        module.compile()


def measure_gpu_case(model_name: str, size: str, precision: str, scope: str, batch: int) -> dict:
    """Images/s of `batch` images per detector call with the COCO-80 prompt (10 timed calls
    after 3 warm-ups, which also compile)."""
    from benchmark_fine import detector_config
    from benchmark_targets import class_name_prompts
    from detectron2.modeling import build_model

    if not torch.cuda.is_available():
        raise SystemExit("benchmark.py gpu needs a CUDA device")
    torch.manual_seed(0)
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    model = build_model(detector_config(model_name)).eval()
    compile_detector(model, scope)
    height, width = (int(v) for v in size.split("x"))
    _, coco = class_name_prompts(40)
    requests = [
        {
            "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8),
            "height": height,
            "width": width,
            "prompts": coco,
        }
        for _ in range(batch)
    ]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad(), autocast:
        warmup_ms = time_calls(lambda: model(requests), 3, 0, "cuda")
        timed_ms = time_calls(lambda: model(requests), 10, 0, "cuda")
    return {
        "model": model_name,
        "size": size,
        "precision": precision,
        "compile": scope,
        "batch": batch,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "images_per_s": round(batch * 1000 / statistics.median(timed_ms), 2),
        "images_per_s_best": round(batch * 1000 / min(timed_ms), 2),
        "call_ms_median": round(statistics.median(timed_ms), 1),
        "first_call_s": round(warmup_ms[0] / 1000, 1),
        "peak_mem_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


@subcommand(
    "gpu",
    "grounding detector images/s on a CUDA device: fp32, TF32, bf16 autocast, torch.compile",
    [
        (["--model"], {"default": "fiber-b"}),
        (["--size"], {"default": "800x1333"}),
        (["--precisions"], {"nargs": "+", "choices": PRECISIONS, "default": list(PRECISIONS)}),
        (["--batches"], {"nargs": "+", "type": int, "default": list(BATCHES)}),
        (["--compile"], {"nargs": "+", "choices": COMPILE_SCOPES, "default": list(RUN_SCOPES)}),
        (
            ["--case"],
            {"nargs": 3, "metavar": ("PRECISION", "COMPILE", "BATCH"), "help": "internal"},
        ),
    ],
)
def benchmark_gpu(args) -> None:
    """Print one JSON line per case (see gpu_rows)."""
    if args.case:
        precision, scope, batch = args.case
        print(json.dumps(measure_gpu_case(args.model, args.size, precision, scope, int(batch))))
        return
    gpu_rows(args.model, args.size, args.precisions, args.batches, args.compile)


def gpu_rows(model: str, size: str, precisions, batches, scopes) -> None:
    """Every precision at every batch size without compiling, then bf16 at batch 1 with each
    compile scope; one JSON line each (one line saying so without a CUDA device)."""
    if not torch.cuda.is_available():
        print(json.dumps({"target": "gpu images/s", "skipped": "no CUDA device"}), flush=True)
        return
    cases = [(p, "none", b) for b in batches for p in precisions]
    cases += [("bf16", scope, 1) for scope in scopes if scope != "none"]
    for precision, scope, batch in cases:
        argv = ["gpu", "--case", precision, scope, str(batch), "--model", model, "--size", size]
        print(json.dumps({"target": "gpu images/s", **run_child(argv)}), flush=True)
