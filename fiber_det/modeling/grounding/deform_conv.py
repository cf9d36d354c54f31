"""Modulated deformable convolution (DCNv2) with a fast CPU path.

torchvision's `deform_conv2d` is the reference; its CPU backward is a scalar loop that takes
about two thirds of a tiny detector's CPU training step. On CPU this module computes the same
function in one of two ways, both with torchvision's bilinear rule (corners outside the image
contribute 0):

- when a gradient is needed (and while exporting: ONNX has GridSample), `grid_sample` and one
  matrix product, which autograd differentiates with vectorised kernels;
- otherwise (inference) the four corners of every tap are read by index arithmetic and summed
  with their bilinear weights times the mask in one `embedding_bag` gather, channels last, so
  that the taps of an output location are contiguous and one GEMM per block of locations
  finishes the conv (its output is channels last too).

On other devices torchvision's kernel is used.
"""

import torch
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

from fiber_det.modeling.onednn_linear import onednn_linear, onednn_linear_available

LOCATIONS_PER_BLOCK = 512  # output locations per gather + GEMM: (512, 9 * 256) fp32 is 4.7 MB


def sampling_positions(
    offset: torch.Tensor, kernel_size: tuple[int, int], stride: int, padding: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates y, x (B, K, Ho, Wo) of every tap k of every output.

    offset (B, 2K, Ho, Wo) holds (dy, dx) per tap, taps in row-major kernel order
    (torchvision's layout); tap (i, j) of output (y, x) samples the input at
    (y * stride - padding + i + dy, x * stride - padding + j + dx).
    """
    batch, _, out_h, out_w = offset.shape
    kernel_h, kernel_w = kernel_size
    dtype, device = offset.dtype, offset.device
    taps_y = torch.arange(kernel_h, dtype=dtype, device=device).repeat_interleave(kernel_w)
    taps_x = torch.arange(kernel_w, dtype=dtype, device=device).repeat(kernel_h)
    base_y = torch.arange(out_h, dtype=dtype, device=device) * stride - padding
    base_x = torch.arange(out_w, dtype=dtype, device=device) * stride - padding
    offset = offset.view(batch, kernel_h * kernel_w, 2, out_h, out_w)
    y = base_y[None, None, :, None] + taps_y[None, :, None, None] + offset[:, :, 0]
    x = base_x[None, None, None, :] + taps_x[None, :, None, None] + offset[:, :, 1]
    return y, x


def sampling_grid(
    offset: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: int,
    padding: int,
    input_size: tuple[int, int],
) -> torch.Tensor:
    """Normalised grid_sample coordinates (B, K * Ho, Wo, 2) of `sampling_positions`."""
    batch, _, out_h, out_w = offset.shape
    kernel_h, kernel_w = kernel_size
    height, width = input_size
    y, x = sampling_positions(offset, kernel_size, stride, padding)
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
    height, width = x.shape[-2:]
    kernel_h, kernel_w = weight.shape[-2:]
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
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, offset, weight, mask))
    # the grid_sample path is the one that exports (ONNX GridSample); the gather path is eager
    if needs_grad or torch.compiler.is_exporting():
        out = sampled_deform_conv2d(x, offset, weight, stride, padding, mask)
        return out if bias is None else out + bias[None, :, None, None]
    out = gathered_deform_conv2d(x, offset, weight, stride, padding, mask)
    return out if bias is None else out.add_(bias[None, :, None, None])


def sampled_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    padding: int,
    mask: torch.Tensor,
) -> torch.Tensor:
    """The conv without bias through `grid_sample` and one einsum (differentiable):
    x (B, C, H, W) -> (B, O, Ho, Wo)."""
    batch, channels = x.shape[:2]
    out_channels, _, kernel_h, kernel_w = weight.shape
    taps, (out_h, out_w) = kernel_h * kernel_w, offset.shape[-2:]
    grid = sampling_grid(offset, (kernel_h, kernel_w), stride, padding, x.shape[-2:])
    sampled = torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).view(batch, channels, taps, out_h, out_w)
    columns = (sampled * mask[:, None]).flatten(1, 2)
    return torch.einsum("bkhw,ok->bohw", columns, weight.reshape(out_channels, -1))


def bilinear_corners(
    y: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel indices and weights (B, Ho, Wo, K, 4) of the four corners of every sample.

    y, x, mask (B, K, Ho, Wo). A corner outside the H x W image gets index 0 and weight 0;
    inside, its weight is the bilinear weight times the mask.
    """
    y, x, mask = (t.permute(0, 2, 3, 1) for t in (y, x, mask))  # stacks land contiguous
    y0, x0 = y.floor(), x.floor()
    fy, fx = y - y0, x - x0
    indices, weights = [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            cy, cx = y0 + dy, x0 + dx
            inside = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
            flat = (cy.clamp(0, height - 1) * width + cx.clamp(0, width - 1)).long()
            indices.append(torch.where(inside, flat, 0))
            weights.append(torch.where(inside, wy * wx * mask, 0.0))
    return torch.stack(indices, dim=-1), torch.stack(weights, dim=-1)


def gathered_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    padding: int,
    mask: torch.Tensor,
) -> torch.Tensor:
    """The conv without bias, no autograd: x (B, C, H, W) -> (B, O, Ho, Wo) in channels-last
    memory (what it reads fastest, so a DyHead tower stays channels last from block to block).

    Each image is read as an (H*W, C) table (a view when x is channels last). For
    LOCATIONS_PER_BLOCK output locations at a time, one `embedding_bag` sums the four weighted
    corners of every (location, tap) into columns (block, K*C) and one GEMM, columns x
    weight^T (K*C, O), writes their rows of the (B, Ho*Wo, O) result; blocks keep the columns
    in cache instead of materialising (Ho*Wo, K*C). In fp32 the GEMM runs through oneDNN when
    torch has it (faster than MKL's sgemm on AMD CPUs; see onednn_linear.py), except while
    torch.compile traces.
    """
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    locations, taps = out_h * out_w, kernel_h * kernel_w
    y, x_pos = sampling_positions(offset, (kernel_h, kernel_w), stride, padding)
    indices, weights = bilinear_corners(y, x_pos, mask, height, width)
    indices = indices.view(batch, locations * taps, 4)
    weights = weights.view(batch, locations * taps, 4)
    tables = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
    matrix = weight.permute(0, 2, 3, 1).reshape(out_channels, taps * channels)
    out = x.new_empty(batch, locations, out_channels)
    compiling = torch.compiler.is_compiling()  # inductor plans its own GEMMs
    onednn = x.dtype == torch.float32 and onednn_linear_available() and not compiling
    block = LOCATIONS_PER_BLOCK
    for image in range(batch):
        table = tables[image].contiguous()
        for first in range(0, locations, block):
            rows = slice(first * taps, min(first + block, locations) * taps)
            columns = torch.nn.functional.embedding_bag(
                indices[image, rows], table, per_sample_weights=weights[image, rows], mode="sum"
            )
            rows_out = out[image, first : first + block]
            if onednn:
                rows_out.copy_(onednn_linear(columns.view(-1, taps * channels), matrix))
            else:
                torch.mm(columns.view(-1, taps * channels), matrix.t(), out=rows_out)
    return out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)
