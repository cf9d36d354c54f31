"""Shared pieces of tools/benchmark.py: the subcommand registry, timing, peak memory and the
fresh child process every measurement runs in."""

import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch

SUBCOMMANDS: dict[str, tuple[Callable, str, list]] = {}
BENCHMARK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark.py")


def subcommand(name: str, help: str, arguments: list[tuple[list[str], dict]]):
    """Register `function(args) -> None` as `benchmark.py name`, with argparse `arguments`."""

    def register(function: Callable) -> Callable:
        SUBCOMMANDS[name] = (function, help, arguments)
        return function

    return register


def peak_rss_mib() -> float:
    """Peak resident memory of this whole process so far, weights included (Linux ru_maxrss is
    in KiB); every case runs in its own child process, so this is that case's peak."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def page_faults(function: Callable) -> int:
    """Minor page faults of one call of `function` in this process (pages the kernel had to map
    in: few after warm-up when freed tensors are reused, see fiber_det/runtime.py)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    function()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """FLOPs of the CPU flash-attention kernel, which torch.utils.flop_counter does not count:
    its count for the other SDPA kernels (the original's explicit matmuls are counted)."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def onednn_linear_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of oneDNN's linear (the trunk's CPU inference linears), which torch.utils.flop_counter
    does not count: input (..., K) x weight (N, K)."""
    return 2 * math.prod(input_shape[:-1]) * weight_shape[0] * weight_shape[1]


def count_gflop(function: Callable) -> float:
    """GFLOP of one call of `function` (torch.utils.flop_counter, CPU attention and oneDNN
    linears included)."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flop,
        torch.ops.mkldnn._linear_pointwise: onednn_linear_flop,
    }
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with counter:
        function()
    return counter.get_total_flops() / 1e9


def matmul_gflops(
    size: int = 2048, iterations: int = 3, multiply: Callable = torch.matmul
) -> float:
    """This machine's fp32 matmul rate now: best of `iterations` (size, size) x (size, size)
    products through `multiply(a, b)` (torch's `@` by default)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(time_calls(lambda: multiply(a, b), iterations, 1, "cpu"))
    return round(2 * size**3 / best / 1e6, 1)


def matmul_rates(achieved_gflops: float) -> dict:
    """The matmul rate now through torch's `@` (the BLAS, MKL in the wheels) and through oneDNN
    (what the trunk's CPU inference linears run on), and `achieved_gflops` as a fraction of each."""
    from fiber_det.modeling.onednn_linear import onednn_linear

    torch_rate = matmul_gflops()
    onednn_rate = matmul_gflops(multiply=onednn_linear)  # a @ b.T: the same work
    return {
        "matmul_gflops": torch_rate,
        "fraction_of_matmul": round(achieved_gflops / torch_rate, 2),
        "onednn_matmul_gflops": onednn_rate,
        "fraction_of_onednn_matmul": round(achieved_gflops / onednn_rate, 2),
    }


def time_calls(function: Callable, iterations: int, warmup: int, device: str) -> list[float]:
    """Wall-clock milliseconds of `iterations` calls after `warmup` calls."""
    times = []
    for index in range(warmup + iterations):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        if index >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


def run_child(argv: list[str]) -> dict:
    """Run tools/benchmark.py with `argv` in a fresh process and parse its last output line."""
    command = [sys.executable, BENCHMARK_SCRIPT, *argv]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1:]}
    return json.loads(completed.stdout.strip().splitlines()[-1])
