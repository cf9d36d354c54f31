"""The CPU deformable conv (grid_sample) equals torchvision's deform_conv2d, gradients too."""

import pytest
import torch
from torchvision.ops import deform_conv2d

from fiber_det.modeling.grounding import deform_conv
from fiber_det.modeling.grounding.deform_conv import (
    bilinear_corners,
    modulated_deform_conv2d,
    sampling_grid,
)
from fiber_det.modeling.onednn_linear import onednn_linear


def _inputs(size: tuple[int, int], stride: int, offset_scale: float, integer: bool = False):
    generator = torch.Generator().manual_seed(0)
    height, width = size
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    offset = rand(2, 18, out_h, out_w) * offset_scale
    if integer:  # taps landing exactly on pixels and on the borders -1 and H
        offset = offset.round()
    mask = torch.rand(2, 9, out_h, out_w, generator=generator, dtype=torch.float64)
    tensors = (rand(2, 3, height, width), offset, rand(4, 3, 3, 3), rand(4), mask)
    return [t.requires_grad_() for t in tensors]


@pytest.mark.parametrize(
    "size, stride, offset_scale, integer",
    [
        ((7, 9), 1, 2.0, False),
        ((8, 6), 2, 3.0, False),
        ((5, 5), 1, 2.0, True),
        ((1, 1), 1, 1.0, False),
    ],
)
def test_sampling_equals_torchvision_values_and_gradients(
    size, stride, offset_scale, integer, monkeypatch
):
    x, offset, weight, bias, mask = _inputs(size, stride, offset_scale, integer)
    expected = deform_conv2d(x, offset, weight, bias, stride, 1, mask=mask)
    monkeypatch.setattr(deform_conv, "torchvision_deform_conv2d", None)  # CPU: never called
    actual = modulated_deform_conv2d(x, offset, weight, bias, stride, 1, mask)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)
    if integer:
        return  # on a pixel the derivative has a kink; the two take different one-sided ones
    upstream = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, offset, weight, bias, mask), upstream)
    actual_grads = torch.autograd.grad(actual, (x, offset, weight, bias, mask), upstream)
    for got, want in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_grid_of_zero_offsets_hand_values():
    # input 2 x 4, stride 1, padding 1: output (0, 0), tap (0, 0) samples pixel (-1, -1)
    grid = sampling_grid(torch.zeros(1, 18, 2, 4), (3, 3), 1, 1, (2, 4))
    assert grid.shape == (1, 9 * 2, 4, 2)
    # x: (2 * -1 + 1) / 4 - 1 = -1.25, y: (2 * -1 + 1) / 2 - 1 = -1.5
    torch.testing.assert_close(grid[0, 0, 0], torch.tensor([-1.25, -1.5]))
    # tap 4 (the centre) of output (1, 3) samples pixel (1, 3): x 7 / 4 - 1, y 3 / 2 - 1
    torch.testing.assert_close(grid[0, 4 * 2 + 1, 3], torch.tensor([0.75, 0.5]))


def test_offset_of_the_wrong_size_names_the_expected_shape():
    x, offset, weight, bias, mask = _inputs((7, 9), 1, 1.0)
    with pytest.raises(ValueError, match=r"needs offset \(B, 18, 7, 9\).*got \(2, 18, 4, 5\)"):
        modulated_deform_conv2d(x, offset[..., :4, :5], weight, bias, 1, 1, mask[..., :4, :5])


@pytest.mark.parametrize(
    "batch, channels, size, stride, offset_scale, block",
    [
        (2, 3, (7, 9), 1, 4.0, 5),  # taps far outside the image, blocks of 5 locations
        (1, 8, (8, 6), 2, 2.0, 512),  # stride 2, one block
        (3, 4, (5, 11), 1, 0.5, 7),  # last block shorter than the others
        (1, 2, (1, 1), 1, 1.0, 1),
    ],
)
@pytest.mark.parametrize("onednn, compiling", [(True, False), (False, False), (True, True)])
def test_inference_gather_path_equals_torchvision(
    batch, channels, size, stride, offset_scale, block, onednn, compiling, monkeypatch
):
    """With oneDNN (one GEMM per block and image) and with torch.mm (torch without oneDNN, or
    while torch.compile traces: inductor does not know the oneDNN op's layout)."""
    generator = torch.Generator().manual_seed(1)
    height, width = size
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    x = torch.randn(batch, channels, height, width, generator=generator)
    offset = torch.randn(batch, 18, out_h, out_w, generator=generator) * offset_scale
    mask = torch.rand(batch, 9, out_h, out_w, generator=generator)
    weight = torch.randn(5, channels, 3, 3, generator=generator) / 3
    bias = torch.randn(5, generator=generator)
    expected = deform_conv2d(x, offset, weight, bias, stride, 1, mask=mask)
    monkeypatch.setattr(deform_conv, "LOCATIONS_PER_BLOCK", block)
    monkeypatch.setattr(deform_conv, "sampled_deform_conv2d", None)  # no grad: never used
    monkeypatch.setattr(deform_conv, "onednn_linear_available", lambda: onednn)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    gemms = []
    monkeypatch.setattr(
        deform_conv, "onednn_linear", lambda *args: gemms.append(1) or onednn_linear(*args)
    )
    with torch.no_grad():
        actual = modulated_deform_conv2d(x, offset, weight, bias, stride, 1, mask)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    assert len(gemms) == (batch * -(-out_h * out_w // block) if onednn and not compiling else 0)


def test_gather_corners_hand_values():
    # sample (y, x) = (0.25, 1.5) in a 2 x 2 image, mask 0.5: corners (0, 1), (0, 2), (1, 1),
    # (1, 2); column 2 lies outside -> index 0 with weight 0
    y, x = torch.tensor([0.25]).view(1, 1, 1, 1), torch.tensor([1.5]).view(1, 1, 1, 1)
    indices, weights = bilinear_corners(y, x, torch.full((1, 1, 1, 1), 0.5), 2, 2)
    assert indices.flatten().tolist() == [1, 0, 3, 0]
    assert weights.flatten().tolist() == [0.1875, 0.0, 0.0625, 0.0]


def test_gather_path_reads_and_writes_channels_last():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 5, 7, generator=generator)
    offset = torch.randn(2, 18, 5, 7, generator=generator)
    mask = torch.rand(2, 9, 5, 7, generator=generator)
    weight = torch.randn(4, 6, 3, 3, generator=generator)
    expected = deform_conv2d(x, offset, weight, None, 1, 1, mask=mask)
    with torch.no_grad():
        actual = modulated_deform_conv2d(
            x.contiguous(memory_format=torch.channels_last), offset, weight, None, 1, 1, mask
        )
    assert actual.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
