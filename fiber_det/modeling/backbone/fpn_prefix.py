"""detectron2's FPN continued from an image prefix: its text-independent levels done once.

With k prompts per image only the FPN levels above the first fused block depend on the text
(FIBER-B: res4, res5; res3 comes from the prefix). detectron2's FPN computes level l as
    P_l = output_conv_l(lateral_l(res_l) + upsample2x(top_down_{l+1})).
Without an output norm and with "sum" fusion the output conv is linear, so P_l splits into
    output_conv_l(lateral_l(res_l))        once per image (`FpnPrefix.outputs`, bias included)
  + conv_l(upsample2x(top_down_{l+1}))     per prompt, without bias.
The per-prompt part reads a nearest-upsampled map, so each of the four output phases
(row parity, column parity) is a 2x2 conv of the coarse map: `conv_of_upsampled` computes it
at the coarse resolution with 16 instead of 36 weight taps per coarse position. Same maths as
`FPN.forward`, summed in another order. The top block and the text-dependent levels run as
detectron2 runs them, with its own modules.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.modeling import FPN

# Rows: output phase (0 even, 1 odd); columns: the 3 taps of the fine kernel. Row p sums the
# taps that read the same coarse pixel at coarse offsets (p - 1, p).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


@dataclass
class FpnPrefix:
    """Per text-independent FPN level ("res3", ...): `laterals` lateral_conv(res) and
    `outputs` output_conv(lateral) with its bias, each (B, C, H, W) for B images;
    `phase_kernels` its output conv's `phase_weights` (4 * C, C, 2, 2)."""

    laterals: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    phase_kernels: dict[str, torch.Tensor]


def output_conv_is_linear(norm: str, fuse_type: str) -> bool:
    """Whether detectron2's FPN built with `norm` / `fuse_type` allows the split."""
    return norm == "" and fuse_type == "sum"


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """3x3 kernel (O, C, 3, 3) -> the four phases' 2x2 kernels stacked (4 * O, C, 2, 2), in
    phase order (0, 0), (0, 1), (1, 0), (1, 1) (row parity, column parity)."""
    taps = _PHASE_TAPS.to(weight)
    phases = torch.einsum("api,ocij,bqj->abocpq", taps, weight, taps)
    return phases.flatten(0, 2)


def conv_of_upsampled(phase_kernels: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """A 3x3 conv (padding 1, no bias) of the 2x nearest upsampling of `coarse` (B, C, h, w),
    given its `phase_weights` (4 * O, C, 2, 2) -> (B, O, 2h, 2w), computed at the coarse
    resolution."""
    batch, _, height, width = coarse.shape
    out_channels = phase_kernels.shape[0] // 4
    stacked = F.conv2d(coarse, phase_kernels, padding=1)
    stacked = stacked.unflatten(1, (2, 2, out_channels))
    rows = []
    for row in range(2):
        cols = [stacked[:, row, col, :, row : row + height, col : col + width] for col in range(2)]
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=3).reshape(batch, out_channels, 2 * height, 2 * width)


def levels_top_down(fpn: FPN):
    """(res name, lateral conv, output conv) of each FPN input level, coarsest first."""
    return zip(reversed(fpn.in_features), fpn.lateral_convs, fpn.output_convs)


def encode_fpn_prefix(fpn: FPN, features: dict[str, torch.Tensor]) -> FpnPrefix:
    """The text-independent FPN work on the prefix's finished res `features` (B, C, H, W)."""
    laterals, outputs, phase_kernels = {}, {}, {}
    for name, lateral_conv, output_conv in levels_top_down(fpn):
        if name in features:
            laterals[name] = lateral_conv(features[name])
            outputs[name] = output_conv(laterals[name])
            phase_kernels[name] = phase_weights(output_conv.weight)
    return FpnPrefix(laterals, outputs, phase_kernels)


def _per_prompt(images: torch.Tensor, texts: torch.Tensor, repeats: int) -> torch.Tensor:
    """`texts` (k * B, ...) plus `images` (B, ...) repeated k times image-major."""
    summed = texts.unflatten(0, (images.shape[0], repeats)) + images[:, None]
    return summed.flatten(0, 1)


def fpn_from_prefix(
    fpn: FPN, prefix: FpnPrefix, features: dict[str, torch.Tensor], repeats: int
) -> dict[str, torch.Tensor]:
    """detectron2's `FPN.forward` for k = `repeats` prompts per image: `features` holds the
    res maps (k * B, C, H, W); levels below the coarsest found in `prefix` (B images) take
    their text-independent part from it.
    Returns "p3".."p7" -> (k * B, C', H', W') as `fpn(features)` would."""
    levels = list(levels_top_down(fpn))
    results, previous = [], None
    for index, (name, lateral_conv, output_conv) in enumerate(levels):
        needed_below = index < len(levels) - 1
        if name not in prefix.outputs or previous is None:  # as FPN.forward
            lateral = lateral_conv(features[name])
            if previous is not None:
                lateral = lateral + F.interpolate(previous, scale_factor=2.0, mode="nearest")
            results.insert(0, output_conv(lateral))
            previous = lateral
        else:
            from_above = conv_of_upsampled(prefix.phase_kernels[name], previous)
            results.insert(0, _per_prompt(prefix.outputs[name], from_above, repeats))
            if needed_below:
                upsampled = F.interpolate(previous, scale_factor=2.0, mode="nearest")
                previous = _per_prompt(prefix.laterals[name], upsampled, repeats)
    names = list(fpn.output_shape())
    top_block = fpn.top_block
    if top_block is not None:
        top_input = features.get(top_block.in_feature)
        if top_input is None:
            top_input = results[names.index(top_block.in_feature)]
        results.extend(top_block(top_input))
    return dict(zip(names, results))
