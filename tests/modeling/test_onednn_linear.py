"""oneDNN linears at CPU inference (the torch op itself: tests/test_upstream_contracts.py):
equal to F.linear on strided inputs; the mode routes only fp32 CPU calls without autograd or
autocast; the trunk enters it once per call and gives the BLAS path's values."""

import pytest
import torch
import torch.nn.functional as F

from fiber_det.modeling import onednn_linear as module
from fiber_det.modeling.backbone.fiber import FiberTrunk
from fiber_det.modeling.onednn_linear import OneDnnLinears, onednn_linear
from tests.modeling.backbone.tiny import random_text, set_gates, tiny_trunk_cfg


@pytest.fixture
def routed(monkeypatch) -> list[tuple]:
    """The (input shape, has bias) of every call the mode sends to oneDNN."""
    calls = []

    def counting(x, weight, bias=None):
        calls.append((tuple(x.shape), bias is not None))
        return onednn_linear(x, weight, bias)

    monkeypatch.setattr(module, "onednn_linear", counting)
    return calls


def test_onednn_linear_equals_f_linear_on_strided_inputs():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 40)[:, :, ::2]  # (6, 5, 20), non-contiguous
    weight = torch.randn(70, 20)[5:65]  # a slice of a larger matrix
    bias = torch.randn(60)
    torch.testing.assert_close(onednn_linear(x, weight, bias), F.linear(x, weight, bias))
    torch.testing.assert_close(
        onednn_linear(x.transpose(0, 1), weight), F.linear(x.transpose(0, 1), weight)
    )


def test_mode_routes_only_fp32_cpu_calls_without_autograd_or_autocast(routed):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 3, 8), torch.randn(4, 8), torch.randn(4)
    with OneDnnLinears():
        with torch.no_grad():
            plain = F.linear(x, weight, bias)
            keywords = F.linear(input=x, weight=weight)
            F.linear(x[0, 0], weight, bias)  # 1-D: oneDNN's op takes 2-D and up
            F.linear(x.double(), weight.double())
        assert routed == [((2, 3, 8), True), ((2, 3, 8), False)]
        leaf = weight.clone().requires_grad_()
        F.linear(x, leaf, bias).sum().backward()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = F.linear(x, weight, bias)
    assert len(routed) == 2 and reduced.dtype == torch.bfloat16
    torch.testing.assert_close(leaf.grad, x.sum((0, 1)).expand(4, 8))
    torch.testing.assert_close(plain, F.linear(x, weight, bias))
    torch.testing.assert_close(keywords, x @ weight.T)


def _trunk(onednn: bool) -> FiberTrunk:
    torch.manual_seed(0)
    trunk = FiberTrunk(tiny_trunk_cfg(ONEDNN_CPU_LINEAR=onednn)).eval()
    set_gates(trunk)
    return trunk


def test_config_switches_the_trunk():
    assert tiny_trunk_cfg().MODEL.FIBER.ONEDNN_CPU_LINEAR is True
    assert _trunk(True).onednn_cpu_linear and not _trunk(False).onednn_cpu_linear


def test_trunk_inference_runs_its_linears_through_onednn_once_per_call(routed, monkeypatch):
    entered = []

    class CountingMode(OneDnnLinears):
        def __enter__(self):
            entered.append(self)
            return super().__enter__()

    monkeypatch.setattr(module, "OneDnnLinears", CountingMode)
    images, (ids, mask) = torch.randn(2, 3, 64, 96), random_text(2, 7, [7, 4])
    blas, onednn = _trunk(False), _trunk(True)
    with torch.no_grad():
        expected = blas(images, ids, mask)
        assert routed == [] and entered == []
        got = onednn(images, ids, mask)  # forward -> encode_image_prefix + forward_fused
    assert len(entered) == 1 and len(routed) > 20
    for name, feature in expected.image.items():
        torch.testing.assert_close(got.image[name], feature, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.text.hidden, expected.text.hidden, atol=1e-5, rtol=1e-5)
    routed.clear()
    onednn(images, ids, mask)  # with autograd: the training path, no oneDNN
    assert routed == [] and len(entered) == 1


def test_trunk_leaves_linears_to_torch_while_compiling(routed, monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    images, (ids, mask) = torch.randn(1, 3, 64, 64), random_text(1, 5, [5])
    with torch.no_grad():
        _trunk(True)(images, ids, mask)
    assert routed == []
