"""detectron2's FPN split at the image prefix: phase kernels by hand, equality with FPN.forward."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec

from fiber_det.modeling.backbone.fpn import build_fiber_fpn_backbone
from fiber_det.modeling.backbone.fpn_prefix import conv_of_upsampled, phase_weights
from tests.modeling.backbone.tiny import random_text, set_gates, tiny_trunk_cfg

ATOL = 1e-5


def test_phase_weights_sum_the_taps_that_read_one_coarse_pixel():
    weight = torch.arange(9.0).view(1, 1, 3, 3)  # rows [0 1 2] [3 4 5] [6 7 8]
    phases = phase_weights(weight)
    assert phases.shape == (4, 1, 2, 2)
    # even rows read coarse rows (i-1, i) with fine taps (0), (1 + 2); odd rows (0 + 1), (2)
    expected = [
        [[0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]],  # (even, even)
        [[0 + 1, 2], [3 + 4 + 6 + 7, 5 + 8]],  # (even, odd)
        [[0 + 3, 1 + 2 + 4 + 5], [6, 7 + 8]],  # (odd, even)
        [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8]],  # (odd, odd)
    ]
    assert phases[:, 0].tolist() == expected


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (4, 4)])
def test_conv_of_upsampled_equals_conv_after_nearest_upsampling(size):
    torch.manual_seed(0)
    weight = torch.randn(7, 5, 3, 3)
    coarse = torch.randn(2, 5, *size)
    upsampled = F.interpolate(coarse, scale_factor=2.0, mode="nearest")
    expected = F.conv2d(upsampled, weight, padding=1)
    got = conv_of_upsampled(phase_weights(weight), coarse)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("fused_layers", "levels"), [(3, ["res3"]), (2, ["res3", "res4"])])
def test_prompts_from_the_split_prefix_match_detectron2s_fpn(fused_layers, levels):
    """3 fused pairs leave res3 text-independent (as FIBER-B), 2 leave res3 and res4."""
    cfg = tiny_trunk_cfg(**{"FUSION.NUM_LAYERS": fused_layers})
    backbone = build_fiber_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    set_gates(backbone)
    images = torch.randn(2, 3, 64, 96)
    ids, mask = random_text(6, 7, [7, 5, 3, 7, 6, 2])
    with torch.no_grad():
        full = backbone(images.repeat_interleave(3, dim=0), ids, mask)
        prefix = backbone.encode_image_prefix(images)
        continued = backbone.forward_from_prefix(prefix, ids, mask)
    assert sorted(prefix.fpn.outputs) == levels
    assert list(continued.features) == ["p3", "p4", "p5", "p6", "p7"]
    for name, expected in full.features.items():
        torch.testing.assert_close(continued.features[name], expected, atol=ATOL, rtol=0)


def test_fpn_stays_whole_for_one_prompt_or_a_nonlinear_output_conv():
    images = torch.randn(1, 3, 64, 64)
    ids, mask = random_text(1, 5, [5])
    backbone = build_fiber_fpn_backbone(tiny_trunk_cfg(), ShapeSpec(channels=3)).eval()
    with torch.no_grad():
        assert backbone.encode_image_prefix(images, prompts_per_image=1).fpn is None
        assert backbone.encode_image_prefix(images, prompts_per_image=2).fpn is not None
    cfg = tiny_trunk_cfg()
    cfg.MODEL.FPN.NORM = "GN"
    cfg.MODEL.FPN.OUT_CHANNELS = 32  # GroupNorm(32, C)
    normed = build_fiber_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    with torch.no_grad():
        prefix = normed.encode_image_prefix(images)
        continued = normed.forward_from_prefix(prefix, ids, mask)
        full = normed(images, ids, mask)
    assert prefix.fpn is None
    for name, expected in full.features.items():
        torch.testing.assert_close(continued.features[name], expected, atol=ATOL, rtol=0)
