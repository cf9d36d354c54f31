"""CPU inference: fp32 matrix products through oneDNN's matmul.

`F.linear` and `torch.mm` on a CPU run the BLAS torch was built with (MKL in the PyPI wheels).
On AMD CPUs MKL's sgemm takes a slower code path than on Intel ones: on a 2-core AMD EPYC
(AVX-512) it ran FIBER-B's linear shapes at 106-203 GFLOP/s where oneDNN, which torch also
ships, ran them at 157-225 (`tools/benchmark.py targets` reports both rates). `OneDnnLinears`
routes the fp32 `F.linear` calls of an inference forward on a CPU to oneDNN (the trunk enters it
through `onednn_linears_on_cpu`; the DyHead's CPU deformable conv calls `onednn_linear` itself);
everything else (autograd, autocast, export tracing, other devices and dtypes) keeps torch's path.

oneDNN's linear is reached through `torch.ops.mkldnn._linear_pointwise`, the op torch's own
inductor compiles CPU linears to. It is internal to torch: the version tested is pinned in
requirements.lock and tests/test_upstream_contracts.py names torch when the op goes away or
changes.
"""

import functools
import threading

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from fiber_det.modeling.backbone.windows import eager_inference

_ACTIVE = threading.local()


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN and its linear op."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return torch.ops.mkldnn._linear_pointwise.default is not None
    except (AttributeError, RuntimeError):
        return False


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` through oneDNN: x (..., K), weight (N, K) -> (..., N)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _linear_arguments(input, weight, bias=None):
    """F.linear's arguments, however they were passed."""
    return input, weight, bias


def _routable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        x.device.type == "cpu"
        and x.dim() >= 2
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    )


class OneDnnLinears(TorchFunctionMode):
    """Inside this mode, fp32 CPU `F.linear` calls without autograd run `onednn_linear`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            linear_args = _linear_arguments(*args, **kwargs)
            if _routable(*linear_args):
                return onednn_linear(*linear_args)
        return func(*args, **kwargs)


def onednn_linears_on_cpu(method):
    """Decorate a module method: when `self.onednn_cpu_linear` is set, oneDNN is available, the
    call runs eagerly without autograd (no export or compile tracing) and the module's weights
    are on a CPU, run the method inside `OneDnnLinears` (once: nested decorated calls reuse the
    outer mode)."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        if (
            getattr(_ACTIVE, "on", False)
            or not self.onednn_cpu_linear
            or not eager_inference()
            or torch.compiler.is_compiling()
            or not onednn_linear_available()
            or next(self.parameters()).device.type != "cpu"
        ):
            return method(self, *args, **kwargs)
        _ACTIVE.on = True
        try:
            with OneDnnLinears():
                return method(self, *args, **kwargs)
        finally:
            _ACTIVE.on = False

    return wrapped
