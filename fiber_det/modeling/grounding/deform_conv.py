"""Modulated deformable convolution (DCNv2) with a fast CPU path.

torchvision's `deform_conv2d` is the reference; its CPU backward is a scalar loop that takes
about two thirds of a tiny detector's CPU training step. On CPU this module computes the same
function with `grid_sample` (zero-padded bilinear sampling, exactly torchvision's rule: corners
outside the image contribute 0) and one matrix product, which autograd differentiates with
vectorised kernels. On other devices torchvision's kernel is used.
"""

import torch
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d


def sampling_grid(
    offset: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: int,
    padding: int,
    input_size: tuple[int, int],
) -> torch.Tensor:
    """Normalised grid_sample coordinates (B, K * Ho, Wo, 2) of every tap k of every output.

    offset (B, 2K, Ho, Wo) holds (dy, dx) per tap, taps in row-major kernel order
    (torchvision's layout); tap (i, j) of output (y, x) samples the input at
    (y * stride - padding + i + dy, x * stride - padding + j + dx).
    """
    batch, _, out_h, out_w = offset.shape
    kernel_h, kernel_w = kernel_size
    height, width = input_size
    dtype, device = offset.dtype, offset.device
    taps_y = torch.arange(kernel_h, dtype=dtype, device=device).repeat_interleave(kernel_w)
    taps_x = torch.arange(kernel_w, dtype=dtype, device=device).repeat(kernel_h)
    base_y = torch.arange(out_h, dtype=dtype, device=device) * stride - padding
    base_x = torch.arange(out_w, dtype=dtype, device=device) * stride - padding
    offset = offset.view(batch, kernel_h * kernel_w, 2, out_h, out_w)
    y = base_y[None, None, :, None] + taps_y[None, :, None, None] + offset[:, :, 0]
    x = base_x[None, None, None, :] + taps_x[None, :, None, None] + offset[:, :, 1]
    # align_corners=False: pixel p sits at normalised (2p + 1) / size - 1
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)
    return grid.view(batch, kernel_h * kernel_w * out_h, out_w, 2)


def modulated_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    mask: torch.Tensor,
) -> torch.Tensor:
    """torchvision's deform_conv2d(x, offset, weight, bias, stride, padding, mask=mask), one
    offset group, dilation 1: x (B, C, H, W), offset (B, 2K, Ho, Wo), weight (O, C, kh, kw),
    mask (B, K, Ho, Wo) -> (B, O, Ho, Wo). On CPU: grid_sample, then one matrix product."""
    if x.device.type != "cpu":
        return torchvision_deform_conv2d(x, offset, weight, bias, stride, padding, mask=mask)
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    taps, (out_h, out_w) = kernel_h * kernel_w, offset.shape[-2:]
    expected = (
        (height + 2 * padding - kernel_h) // stride + 1,
        (width + 2 * padding - kernel_w) // stride + 1,
    )
    if (out_h, out_w) != expected or offset.shape[1] != 2 * taps or mask.shape[1] != taps:
        raise ValueError(
            f"deformable conv of a {height}x{width} input (kernel {kernel_h}x{kernel_w}, stride "
            f"{stride}, padding {padding}) needs offset (B, {2 * taps}, {expected[0]}, "
            f"{expected[1]}) and mask (B, {taps}, ...); got {tuple(offset.shape)} and "
            f"{tuple(mask.shape)}"
        )
    grid = sampling_grid(offset, (kernel_h, kernel_w), stride, padding, x.shape[-2:])
    sampled = torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).view(batch, channels, taps, out_h, out_w)
    columns = (sampled * mask[:, None]).flatten(1, 2)
    out = torch.einsum("bkhw,ok->bohw", columns, weight.reshape(out_channels, -1))
    return out if bias is None else out + bias[None, :, None, None]
