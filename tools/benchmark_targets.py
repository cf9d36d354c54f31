"""`tools/benchmark.py targets`: the figures of the speed targets (issue 17), each with its ratio,
every measurement in its own child process of one run.

- trunk: fiber_det's FIBER-B trunk + FPN with 40 / 200 / 256 real tokens against the original
  (`--fiber-src`: a microsoft/FIBER checkout, run through ../shared/official), the two
  alternating for `--rounds` rounds, each side's fastest kept; the original both as its script
  runs and with the glibc settings fiber_det's tools apply (freed memory kept for reuse, see
  fiber_det/runtime.py), so the allocator's share of the ratio shows; peak RSS of both; at 256
  tokens (the original's work) also GFLOP/s as a fraction of the matmul rate, through torch's
  `@` and through oneDNN (what fiber_det's CPU inference linears run on).
- head: the FIBER-B head's GFLOP/s as a fraction of the same two matmul rates.
- vocabulary: per-image cost of LVIS-1203 (40 classes per chunk, exact FIBER semantics: the
  backbone's text-independent prefix once (the unfused blocks, the first fused block's window
  attention and i2t queries, its text layer's keys / values of the image, the FPN's res3 level),
  the rest of the fused blocks, FPN and head per chunk (from a two-chunk call), with
  MODEL.GROUNDING.PROMPTS_PER_PASS chunks at a time) against one COCO-80 prompt,
  measured as one detector call (LVIS best of 2, the rest best of 3), with its parts, and the fast
  mode (fusion off, cached text) on both. The same ratio in GFLOP (the whole LVIS call counted,
  its chunks of 8 to 102 tokens as they are) is what the time ratio would be if every part ran
  at the same rate.
- gpu (with a CUDA device): images/s of the detector with one COCO-80 prompt (benchmark_gpu.py).

It ends with a Markdown table of every target: its figure in this run, the goal, met or MISSED
(benchmark_summary.py).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
from benchmark_common import (
    count_gflop,
    matmul_gflops,
    peak_rss_mib,
    run_child,
    subcommand,
    time_calls,
)
from benchmark_gpu import BATCHES, PRECISIONS, RUN_SCOPES, gpu_rows
from benchmark_summary import summary_table

from fiber_det.runtime import glibc_malloc_environment

OFFICIAL_SCRIPT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "..",
    "shared",
    "official",
    "bench_official_trunk.py",
)


def seconds(function, calls: int = 3) -> float:
    """Wall-clock seconds of the fastest of `calls` calls (FIBER-B cases take seconds each)."""
    return min(time_calls(function, calls, 0, "cpu")) / 1000


def class_name_prompts(chunk: int) -> tuple[list[dict], list[dict]]:
    """The prompts of LVIS v1's 1203 names (`chunk` per prompt) and of COCO's 80 names (as many
    per prompt as the 256-token limit takes: one prompt of 176 tokens), tokenized by a byte-level
    BPE trained on the two prompts' text (roberta-base is not on this machine)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    from fiber_det.data.prompts import build_detection_prompts
    from fiber_det.data.tokenizer import train_byte_level_bpe

    lvis = [c["name"].replace("_", " ") for c in LVIS_CATEGORIES]
    coco = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    with tempfile.TemporaryDirectory() as directory:
        corpus = [". ".join(lvis) + ".", ". ".join(coco) + "."]
        tokenizer = train_byte_level_bpe(corpus, directory, vocab_size=4000)
    return (
        build_detection_prompts(lvis, tokenizer, max_per_chunk=chunk),
        build_detection_prompts(coco, tokenizer),
    )


def measure_vocabulary_case(model_name: str, size: str) -> dict:
    """LVIS-1203 (chunks of 40) and COCO-80 (one prompt) per image, fused and fast mode."""
    from benchmark_fine import detector_config
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(detector_config(model_name)).eval()
    height, width = (int(v) for v in size.split("x"))
    request = {
        "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8),
        "height": height,
        "width": width,
    }
    lvis, coco = class_name_prompts(40)
    with torch.no_grad():
        images = model.preprocess_image([request]).tensor
        model([{**request, "prompts": coco}])  # warm-up
        # the prefix as the LVIS call computes it; a two-chunk call holds it and two chunks
        prefix_s = seconds(lambda: model.backbone.encode_image_prefix(images, len(lvis)))
        two_chunks_s = seconds(lambda: model([{**request, "prompts": lvis[:2]}]))
        coco_s = seconds(lambda: model([{**request, "prompts": coco}]))
        lvis_s = seconds(lambda: model([{**request, "prompts": lvis}]), calls=2)  # ~2 minutes each
        work = {
            "prefix": count_gflop(lambda: model.backbone.encode_image_prefix(images, len(lvis))),
            "two_chunks": count_gflop(lambda: model([{**request, "prompts": lvis[:2]}])),
            "coco": count_gflop(lambda: model([{**request, "prompts": coco}])),
            "lvis": count_gflop(lambda: model([{**request, "prompts": lvis}])),
        }
        lvis_text, coco_text = model.encode_vocabulary(lvis), model.encode_vocabulary(coco)
        fast_lvis_s = seconds(lambda: model.inference_unfused([request], lvis, lvis_text))
        fast_coco_s = seconds(lambda: model.inference_unfused([request], coco, coco_text))
    per_chunk_s = (two_chunks_s - prefix_s) / 2
    lvis_from_parts_s = prefix_s + len(lvis) * per_chunk_s
    chunk_gflop = (work["two_chunks"] - work["prefix"]) / 2
    return {
        "model": model_name,
        "size": size,
        "lvis_chunks": len(lvis),
        "coco_prompts": len(coco),
        "coco_tokens": int(max(p["input_ids"].numel() for p in coco)),
        "prefix_once_s": round(prefix_s, 2),
        "fused_blocks_and_head_per_chunk_s": round(per_chunk_s, 2),
        "prefix_gflop": round(work["prefix"]),
        "per_chunk_gflop": round(chunk_gflop),
        "coco_gflop": round(work["coco"]),
        "lvis_chunk_tokens": [int(p["input_ids"].numel()) for p in lvis],
        "lvis_gflop": round(work["lvis"]),
        "lvis_vs_coco_in_gflop": ratio(work["lvis"], work["coco"]),
        "prompts_per_pass": model.prompts_per_pass,
        "lvis_s": round(lvis_s, 2),
        "lvis_from_parts_s": round(lvis_from_parts_s, 2),
        "coco_s": round(coco_s, 2),
        "lvis_vs_coco": ratio(lvis_s, coco_s),
        "lvis_from_parts_vs_coco": ratio(lvis_from_parts_s, coco_s),
        "fast_lvis_s": round(fast_lvis_s, 2),
        "fast_coco_s": round(fast_coco_s, 2),
        "fast_lvis_vs_coco": ratio(fast_lvis_s, coco_s),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "matmul_gflops": matmul_gflops(),
    }


def official_trunk(fiber_src: str, size: str, kept_memory: bool = False) -> dict:
    """The original trunk's min time and peak RSS at `size` (its script: 40 real of 256 tokens);
    `kept_memory`: with the glibc settings fiber_det's tools apply (fiber_det/runtime.py)."""
    height, width = size.split("x")
    env = {**os.environ, "FIBER_SRC": fiber_src, "HF_HUB_OFFLINE": "1"}
    if kept_memory:
        env.update(glibc_malloc_environment())
    completed = subprocess.run(
        [sys.executable, OFFICIAL_SCRIPT, height, width],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    found = re.search(r"min ([\d.]+)\), peak RSS (\d+) MiB", completed.stdout)
    if not found:
        return {"error": (completed.stderr or completed.stdout).strip().splitlines()[-1:]}
    return {"forward_s": float(found.group(1)), "peak_rss_mib": float(found.group(2))}


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 2)


def positive_int(text: str) -> int:
    """argparse type of --rounds: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"needs an integer >= 1, got '{text}'")
    return int(text)


def fastest(results: list[dict], key: str) -> dict:
    """The result with the smallest `key` (the first one, an error, when none has it)."""
    timed = [result for result in results if key in result]
    return min(timed, key=lambda result: result[key]) if timed else results[0]


def trunk_rows(args) -> list[dict]:
    """Print the trunk figures: fiber_det at 40 / 200 / 256 tokens, the original when given.
    The original and fiber_det alternate for `--rounds` rounds and each row keeps each side's
    fastest round: the machine's speed drifts over minutes, so minima taken in the same stretch
    of time are what compare."""
    text_lengths = (40, 200, 256)
    rows = []
    for size in args.sizes:
        officials, officials_kept, ours = [], [], {text_len: [] for text_len in text_lengths}
        for _ in range(args.rounds):
            if args.fiber_src:
                officials.append(official_trunk(args.fiber_src, size))
                officials_kept.append(official_trunk(args.fiber_src, size, kept_memory=True))
            for text_len in text_lengths:
                argv = ["trunk", "--case", "fiber-b", size, "fp32", "--text-len", str(text_len)]
                if text_len == 256:  # equal work with the original: the rate vs the matmul rate
                    argv.append("--flops")
                # three timed calls after one warm-up, as the original's script times it
                ours[text_len].append(run_child(argv + ["--iters", "3", "--warmup", "1"]))
        official = fastest(officials, "forward_s") if officials else None
        official_kept = fastest(officials_kept, "forward_s") if officials_kept else None
        for text_len in text_lengths:
            mine = fastest(ours[text_len], "forward_ms")
            row = {"target": "trunk", "size": size, "real_tokens": text_len, "rounds": args.rounds}
            row["fiber_det"] = mine
            if official:
                row["official_256_padded_40_real"] = official
                row["official_with_kept_memory"] = official_kept
            if official and "forward_s" in official and "forward_ms" in mine:
                row["speedup_vs_official"] = ratio(official["forward_s"] * 1000, mine["forward_ms"])
                row["peak_rss_vs_official"] = ratio(mine["peak_mem_mib"], official["peak_rss_mib"])
            if official_kept and "forward_s" in official_kept and "forward_ms" in mine:
                row["speedup_vs_official_with_kept_memory"] = ratio(
                    official_kept["forward_s"] * 1000, mine["forward_ms"]
                )
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


@subcommand(
    "targets",
    "issue 17's speed targets, each figure with its ratio (FIBER-B on CPU: tens of minutes)",
    [
        (["--parts"], {"nargs": "+", "default": ["head", "vocabulary", "trunk", "gpu"]}),
        (["--sizes"], {"nargs": "+", "default": ["384x384", "800x1344"]}),
        (["--model"], {"default": "fiber-b"}),
        (["--fiber-src"], {"help": "a microsoft/FIBER checkout: also time the original trunk"}),
        (["--rounds"], {"type": positive_int, "default": 2, "help": "trunk: alternate this often"}),
        (["--case"], {"nargs": 2, "metavar": ("MODEL", "SIZE"), "help": "internal"}),
    ],
)
def benchmark_targets(args) -> None:
    """Print one JSON line per figure, then a table of the targets met and missed."""
    if args.case:
        print(json.dumps(measure_vocabulary_case(*args.case)))
        return
    rows = []
    if "head" in args.parts:
        head = {"target": "head >= 0.60 of matmul", **run_child(["head", "--text-len", "200"])}
        print(json.dumps(head), flush=True)
        rows.append(head)
    if "vocabulary" in args.parts:
        case = {"target": "vocabulary", **run_child(["targets", "--case", args.model, "800x1333"])}
        print(json.dumps(case), flush=True)
        rows.append(case)
    if "trunk" in args.parts:
        rows += trunk_rows(args)
    if "gpu" in args.parts:
        gpu_rows(args.model, "800x1333", PRECISIONS, BATCHES, RUN_SCOPES)
    print("\n".join(summary_table(rows)), flush=True)
