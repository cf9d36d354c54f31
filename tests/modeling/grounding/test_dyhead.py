"""DyHead pieces: DyReLU, modulated deformable conv, the offset-prefix quirk, batch invariance."""

import torch
import torch.nn.functional as F
from torch import nn

from fiber_det.modeling.grounding.dyhead import (
    DyHeadTower,
    DyReLU,
    ModulatedDeformConvNorm,
    _reinterpret_prefix,
    hard_sigmoid,
)
from fiber_det.modeling.grounding.head import GroundingHead


def test_hard_sigmoid_hand_values():
    assert hard_sigmoid(torch.tensor([-4.0, 0.0, 1.5, 4.0])).tolist() == [0.0, 0.5, 0.75, 1.0]


def test_dyrelu_with_zero_mlp_is_relu():
    dyrelu = DyReLU(8)
    for layer in (dyrelu.fc1, dyrelu.fc2):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(dyrelu(x), F.relu(x))  # a1 = 1, a2 = 0, b1 = b2 = 0


def test_dyrelu_overwrite_input_gives_the_same_values_in_the_input_memory():
    torch.manual_seed(0)
    dyrelu = DyReLU(8)
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    with torch.enable_grad():
        reference = dyrelu(x.clone())  # the original's operations
    with torch.no_grad():
        kept = x.clone()
        assert torch.equal(dyrelu(kept), reference.detach()) and torch.equal(kept, x)
        out = dyrelu(x, overwrite_input=True)
    assert out.data_ptr() == x.data_ptr() and torch.equal(out, reference.detach())


def test_deform_conv_with_zero_offsets_and_unit_mask_is_a_plain_conv():
    op = ModulatedDeformConvNorm(4, stride=2, gn_groups=2)
    x = torch.randn(1, 4, 8, 8)
    offset, mask = torch.zeros(1, 18, 4, 4), torch.ones(1, 9, 4, 4)
    expected = op.norm(F.conv2d(x, op.weight, op.bias, stride=2, padding=1))
    torch.testing.assert_close(op(x, offset, mask), expected)


def test_prefix_reinterpretation_reads_the_flat_buffer():
    maps = torch.arange(2 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 2, 4, 6)
    out = _reinterpret_prefix(maps, 2, 3)
    # image 1 starts at 48; its first 2 * 2 * 3 = 12 values, as (2, 2, 3)
    assert out[1].flatten().tolist() == list(range(48, 60))
    assert out[0, 1].tolist() == [[6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]  # not a crop of channel 1


def _features(batch: int) -> list[torch.Tensor]:
    return [torch.randn(batch, 8, h, w) for h, w in ((16, 20), (8, 10), (4, 5))]


def test_tower_keeps_level_shapes():
    tower = DyHeadTower(8, num_blocks=2, gn_groups=4)
    features = _features(2)
    assert [t.shape for t in tower(features)] == [f.shape for f in features]


def test_head_is_batch_invariant():
    head = GroundingHead(channels=8, num_levels=3, text_dim=6, num_blocks=2, gn_groups=4).eval()
    features = _features(3)
    text = torch.randn(3, 5, 6) * torch.tensor([1, 1, 1, 0, 0.0])[:, None]
    with torch.no_grad():
        batched = head(features, text)
        single = head([f[1:2] for f in features], text[1:2])
    for name in ("box_regression", "centerness", "token_logits"):
        for ours, alone in zip(getattr(batched, name), getattr(single, name)):
            torch.testing.assert_close(ours[1:2], alone, atol=1e-5, rtol=0)


def test_inference_path_equals_the_training_path():
    # without autograd: gather deformable convs, channels-last maps, in-place scale mean and
    # DyReLU; with it: grid_sample convs and the original's stack / multiply / mean
    torch.manual_seed(0)
    tower = DyHeadTower(channels=16, num_blocks=2, gn_groups=4)
    features = [torch.randn(2, 16, h, w) for h, w in ((12, 20), (6, 10), (3, 5))]
    inputs = [f.clone() for f in features]
    channels_last = [f.contiguous(memory_format=torch.channels_last) for f in inputs]
    with torch.no_grad():
        inference = tower(inputs)
        from_channels_last = tower(channels_last)
    training = tower([f.clone().requires_grad_() for f in features])
    for fast, same, reference in zip(inference, from_channels_last, training):
        assert fast.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(fast, same)
        torch.testing.assert_close(fast, reference.detach(), rtol=0, atol=1e-5)
    for given in (inputs, channels_last):  # the in-place steps touch only the tower's own maps
        assert all(torch.equal(a, b) for a, b in zip(given, features))
