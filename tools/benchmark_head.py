"""tools/benchmark.py subcommands of the DyHead: its deformable conv and the whole head on CPU,
each with the achieved GFLOP/s next to the fp32 matmul rate measured in the same process."""

import json

import torch
from benchmark_common import count_gflop, matmul_gflops, matmul_rates, subcommand, time_calls

# FPN levels P3-P7 of an 800x1333 image padded to 800x1344 (strides 8 to 128)
FIBER_B_LEVELS = [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]


def best_ms(function, iterations: int) -> float:
    """Fastest of `iterations` calls after one warm-up, in milliseconds."""
    return round(min(time_calls(function, iterations, 1, "cpu")), 1)


def deform_conv_flops(batch: int, channels: int, height: int, width: int) -> int:
    """Multiply-adds x 2 of one 3x3 deformable conv, C -> C, stride 1."""
    return 2 * batch * channels * channels * 9 * height * width


def measure_deform_conv(shape: str, iterations: int) -> dict:
    """One DyHead deformable 3x3 conv on (B, C, H, W) = `shape`. Forward without autograd
    (inference) of torchvision's kernel, the grid_sample path and the gather path; forward +
    backward of torchvision's kernel and the grid_sample path (the one used for training)."""
    from torchvision.ops import deform_conv2d

    from fiber_det.modeling.grounding.deform_conv import (
        gathered_deform_conv2d,
        modulated_deform_conv2d,
        sampled_deform_conv2d,
    )

    batch, channels, height, width = (int(v) for v in shape.split("x"))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, generator=generator).requires_grad_()
    offset = torch.randn(batch, 18, height, width, generator=generator).requires_grad_()
    mask = torch.rand(batch, 9, height, width, generator=generator).requires_grad_()
    weight = torch.randn(channels, channels, 3, 3, generator=generator).requires_grad_()

    def torchvision_path():
        return deform_conv2d(x, offset, weight, None, 1, 1, mask=mask)

    def grid_sample_path():
        return modulated_deform_conv2d(x, offset, weight, None, 1, 1, mask)

    result = {"shape": shape, "threads": torch.get_num_threads()}
    with torch.no_grad():
        result["torchvision_fwd_ms"] = best_ms(torchvision_path, iterations)
        result["grid_sample_fwd_ms"] = best_ms(
            lambda: sampled_deform_conv2d(x, offset, weight, 1, 1, mask), iterations
        )
        gather_ms = best_ms(
            lambda: gathered_deform_conv2d(x, offset, weight, 1, 1, mask), iterations
        )
    result["gather_fwd_ms"] = gather_ms
    for name, forward in (("torchvision", torchvision_path), ("grid_sample", grid_sample_path)):
        result[f"{name}_fwd_bwd_ms"] = best_ms(lambda f=forward: f().sum().backward(), iterations)
    flops = deform_conv_flops(batch, channels, height, width)
    result["gather_fwd_gflops"] = round(flops / gather_ms / 1e6, 1)
    result["matmul_gflops"] = matmul_gflops()
    return result


@subcommand(
    "deform-conv",
    "DyHead deformable conv on CPU: torchvision vs the grid_sample and gather paths",
    [
        (["--shapes"], {"nargs": "+", "default": ["8x32x28x28", "1x256x100x168"]}),
        (["--iterations"], {"type": int, "default": 3}),
    ],
)
def benchmark_deform_conv(args) -> None:
    """Print one JSON line per input shape (B x C x H x W), best of the timed calls."""
    for shape in args.shapes:
        print(json.dumps(measure_deform_conv(shape, args.iterations)), flush=True)


def fiber_b_head(text_len: int):
    """A FIBER-B grounding head (256 channels, 6 DyHead blocks, RoBERTa-base text width) with
    random weights, its P3-P7 features of one 800x1333 image and one prompt of `text_len`."""
    from fiber_det.modeling.grounding.head import GroundingHead

    torch.manual_seed(0)
    head = GroundingHead(channels=256, num_levels=5, text_dim=768, num_blocks=6).eval()
    features = [torch.randn(1, 256, h, w) for h, w in FIBER_B_LEVELS]
    return head, features, torch.randn(1, text_len, 768)


def measure_head(text_len: int, iterations: int) -> dict:
    """FIBER-B head inference: FLOPs (torch.utils.flop_counter; the deformable convs count as
    their GEMMs), time with the gather conv (the inference path) and with the grid_sample conv
    (what inference ran before; swapped in for this measurement only), and the matmul rate."""
    from fiber_det.modeling.grounding import deform_conv

    head, features, text = fiber_b_head(text_len)
    with torch.no_grad():
        flops = count_gflop(lambda: head(features, text)) * 1e9
        inference_ms = best_ms(lambda: head(features, text), iterations)
        gathered = deform_conv.gathered_deform_conv2d
        deform_conv.gathered_deform_conv2d = deform_conv.sampled_deform_conv2d
        recording_ms = best_ms(lambda: head(features, text), iterations)
        deform_conv.gathered_deform_conv2d = gathered
    achieved = flops / inference_ms / 1e6
    return {
        "text_len": text_len,
        "threads": torch.get_num_threads(),
        "head_gflop": round(flops / 1e9, 1),
        "inference_ms": inference_ms,
        "grid_sample_path_ms": recording_ms,
        "speedup": round(recording_ms / inference_ms, 2),
        "inference_gflops": round(achieved, 1),
        **matmul_rates(achieved),
    }


@subcommand(
    "head",
    "FIBER-B DyHead + grounding head inference at 800x1333 (CPU), GFLOP/s vs the matmul rate",
    [
        (["--text-len"], {"type": int, "default": 256}),
        (["--iterations"], {"type": int, "default": 2}),
    ],
)
def benchmark_head(args) -> None:
    """Print one JSON line."""
    print(json.dumps(measure_head(args.text_len, args.iterations)), flush=True)
