"""DyHead tower: scale-, spatial- and task-aware attention over the FPN levels.

Written from the FIBER fine-grained spec (d.1) of microsoft/FIBER's VLDyHead (a GLIP fork):
each block runs a modulated deformable 3x3 conv + GroupNorm on the same level, on the next
finer level (stride 2) and on the next coarser level (then bilinear upsampling); a hard-sigmoid
scale attention weighs the contributions, and DyReLU (the task attention) follows.
"""

import torch
import torch.nn.functional as F
from torch import nn

from fiber_det.modeling.grounding.deform_conv import modulated_deform_conv2d

NUM_TAPS = 9  # a 3x3 kernel


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6, the original's h_sigmoid."""
    return F.relu6(x + 3.0) / 6.0


def _make_divisible(value: float, divisor: int = 4) -> int:
    """Round `value` to a multiple of `divisor`, not below 90% of it (MobileNet's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class DyReLU(nn.Module):
    """Task-aware attention: out = max(x * a1 + b1, x * a2 + b2), (a, b) from pooled x.

    a1 = (s1 - 0.5) * 2 + 1, a2 = (s2 - 0.5) * 2, b = s_b - 0.5 with s = hard-sigmoid of a
    two-layer MLP on the global average (reduction 4).
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.channels = channels
        squeeze = _make_divisible(channels // reduction, 4)
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, 4 * channels)

    def forward(self, x: torch.Tensor, overwrite_input: bool = False) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W). Without autograd and with `overwrite_input`, x's memory
        holds the result (one fresh map fewer; for a caller that owns x)."""
        pooled = x.mean(dim=(2, 3))
        coeffs = hard_sigmoid(self.fc2(F.relu(self.fc1(pooled))))[:, :, None, None]
        a1, b1, a2, b2 = torch.split(coeffs, self.channels, dim=1)
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        if torch.is_grad_enabled():  # the original's operations, for bit-identical training
            return torch.max(x * a1 + (b1 - 0.5), x * a2 + (b2 - 0.5))
        # the same operations in place; x * a keeps x's (channels-last) layout, which
        # addcmul with the (B, C, 1, 1) term first does not (4x slower)
        first = (x * a1).add_(b1 - 0.5)
        second = x.mul_(a2) if overwrite_input else x * a2
        second.add_(b2 - 0.5)
        return torch.maximum(first, second, out=second)


class ModulatedDeformConvNorm(nn.Module):
    """Modulated deformable 3x3 conv (DCNv2, torchvision's function) followed by GroupNorm."""

    def __init__(self, channels: int, stride: int, gn_groups: int):
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        bound = 1.0 / (channels * NUM_TAPS) ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
        self.norm = nn.GroupNorm(gn_groups, channels)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), offset (B, 18, Ho, Wo), mask (B, 9, Ho, Wo) -> (B, C, Ho, Wo)."""
        out = modulated_deform_conv2d(
            x.float(), offset.float(), self.weight, self.bias, self.stride, 1, mask.float()
        )
        return self.norm(out)


def _reinterpret_prefix(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, K, H, W) -> (B, K, height, width): the first K * height * width values per image.

    The original's CUDA kernel never checks the offset/mask shape: for the conv on the coarser
    level it reads each image's (K, H, W) block (flattened in (c, h, w) order) as if it were
    (K, height, width). The released weights were trained with that read, so it is reproduced
    here exactly (fine_grained_spec.md h.1); torchvision's deform_conv2d then computes what the
    original computed.
    """
    batch, channels = maps.shape[:2]
    return maps.reshape(batch, -1)[:, : channels * height * width].reshape(
        batch, channels, height, width
    )


def scale_weighted_mean(parts: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """mean over i of parts[i] * weights[i]: parts (B, C, H, W) each, weights (n, B, 1, 1, 1).

    With autograd, the original's operations (stack, multiply, mean: bit-identical training);
    without, accumulated in place into the first part (a fresh map nothing else holds).
    """
    if torch.is_grad_enabled():
        return (torch.stack(parts) * weights).mean(dim=0)
    mean = parts[0].mul_(weights[0])
    for part, weight in zip(parts[1:], weights[1:]):
        mean = mean.addcmul_(part, weight)
    return mean.div_(len(parts))


class DyHeadBlock(nn.Module):
    """One DyHead block over all levels: list of (B, C, H_l, W_l) -> the same shapes."""

    def __init__(self, channels: int, gn_groups: int):
        super().__init__()
        self.conv_coarser = ModulatedDeformConvNorm(channels, 1, gn_groups)
        self.conv_same = ModulatedDeformConvNorm(channels, 1, gn_groups)
        self.conv_finer = ModulatedDeformConvNorm(channels, 2, gn_groups)
        self.scale_attention = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.normal_(self.scale_attention.weight, std=0.01)
        nn.init.zeros_(self.scale_attention.bias)
        self.task_attention = DyReLU(channels)
        self.offset = nn.Conv2d(channels, 3 * NUM_TAPS, kernel_size=3, padding=1)

    def _level(self, features: list[torch.Tensor], level: int) -> torch.Tensor:
        """Scale-weighted mean of the (2 or 3) contributions to `level`: (B, C, H, W)."""
        feature = features[level]
        offset_mask = self.offset(feature)
        offset = offset_mask[:, : 2 * NUM_TAPS]
        mask = offset_mask[:, 2 * NUM_TAPS :].sigmoid()
        parts = [self.conv_same(feature, offset, mask)]
        if level > 0:
            parts.append(self.conv_finer(features[level - 1], offset, mask))
        if level < len(features) - 1:
            coarser = features[level + 1]
            height, width = coarser.shape[-2:]
            out = self.conv_coarser(
                coarser,
                _reinterpret_prefix(offset, height, width),
                _reinterpret_prefix(mask, height, width),
            )
            parts.append(
                F.interpolate(out, size=feature.shape[-2:], mode="bilinear", align_corners=True)
            )
        pooled = torch.cat([part.mean(dim=(-2, -1), keepdim=True) for part in parts])
        weights = hard_sigmoid(F.relu(self.scale_attention(pooled)))
        return scale_weighted_mean(parts, weights.view(len(parts), -1, 1, 1, 1))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        # `_level` returns a fresh map nothing else holds: DyReLU may overwrite it
        return [
            self.task_attention(self._level(features, level), overwrite_input=True)
            for level in range(len(features))
        ]


class DyHeadTower(nn.Module):
    """`num_blocks` DyHead blocks in sequence (6 in FIBER-B)."""

    def __init__(self, channels: int, num_blocks: int, gn_groups: int):
        super().__init__()
        if channels % gn_groups:
            raise ValueError(
                f"MODEL.DYHEAD.GN_GROUPS={gn_groups} does not divide the {channels} channels"
            )
        self.blocks = nn.ModuleList(DyHeadBlock(channels, gn_groups) for _ in range(num_blocks))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """list of (B, C, H_l, W_l) -> list of (B, C, H_l, W_l)."""
        if not torch.is_grad_enabled() and features[0].device.type == "cpu":
            # the CPU inference convs read channels-last maps: convert each level once
            features = [f.contiguous(memory_format=torch.channels_last) for f in features]
        for block in self.blocks:
            features = block(features)
        return features
