"""The Swin tower: window policies, the shifted-window mask, equality with timm's Swin, and
the inference path equal to the training path."""

import pytest
import torch
from timm.models.swin_transformer import SwinTransformer, WindowAttention

from fiber_det.modeling.backbone import windows as windows_module
from fiber_det.modeling.backbone.fusion import extended_attention_bias
from fiber_det.modeling.backbone.swin import FusedSwin, SwinBlock
from fiber_det.modeling.backbone.windows import (
    attend_shifted,
    edge_window_ids,
    merge_windows,
    partition_windows,
    real_runs,
    shift_mask,
    window_and_shift,
)
from tests.modeling.backbone.tiny import timm_swin_state_dict


def test_window_policies():
    # fine-grained: fixed window, shift on odd blocks even when the grid is smaller
    assert window_and_shift(3, 5, 4, shifted=True, policy="pad_and_shift") == (4, 2)
    assert window_and_shift(3, 5, 4, shifted=False, policy="pad_and_shift") == (4, 0)
    # coarse-grained: window clamped to the grid and no shift where the grid fits in it
    assert window_and_shift(2, 2, 2, shifted=True, policy="clamp") == (2, 0)
    assert window_and_shift(4, 4, 2, shifted=True, policy="clamp") == (2, 1)


def test_shift_mask_hand_computed():
    # 4x4 map, window 2, shift 1: rows/cols split into regions [0, 2), [2, 3), [3, 4).
    mask = shift_mask(4, 4, 2, 1, torch.device("cpu"), torch.float32)
    assert mask.shape == (4, 4, 4)
    assert torch.count_nonzero(mask[0]) == 0  # top-left window lies inside region (0, 0)
    # last window holds (2,2),(2,3),(3,2),(3,3): four different regions, all separated
    expected_last = torch.full((4, 4), -100.0).fill_diagonal_(0.0)
    torch.testing.assert_close(mask[3], expected_last)
    # top-right window holds (0,2),(0,3),(1,2),(1,3): columns 2 and 3 are different regions
    same_column = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]).bool()
    torch.testing.assert_close(mask[1], torch.where(same_column, 0.0, -100.0))


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_unfused_swin_equals_timm(use_sdpa):
    """Every stage grid (32, 16, 8, 4) is a multiple of the window and larger than it, where
    timm's block (shift, then pad) and the original (pad, then shift) agree."""
    swin = FusedSwin(4, 16, (2, 2, 2, 2), (1, 2, 2, 4), 2, 4.0, 0.0, 32, 0, use_sdpa=use_sdpa)
    reference = SwinTransformer(
        img_size=(128, 128), patch_size=4, embed_dim=16, depths=(2, 2, 2, 2),
        num_heads=(1, 2, 2, 4), window_size=2, num_classes=0, drop_path_rate=0.0,
    ).eval()  # fmt: skip
    missing, unexpected = reference.load_state_dict(timm_swin_state_dict(swin.eval()), strict=False)
    assert not unexpected and all(k.startswith(("norm.", "head.")) for k in missing)
    images = torch.randn(2, 3, 128, 128)
    stages = reference.forward_intermediates(images, norm=False, intermediates_only=True)
    tokens = swin.patch_embed(images)
    for stage in range(4):
        for block in range(2):
            tokens = swin.run_block(stage, block, tokens)
        res = swin.stage_output(stage, tokens, fused=False)
        expected = swin.stage_norms[stage](stages[stage].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(res, expected, atol=1e-5, rtol=1e-5)
        if stage < 3:
            tokens = swin.downsample(stage, tokens)


def test_bad_sizes_are_reported():
    swin = FusedSwin(4, 16, (1, 1), (1, 2), 2, 4.0, 0.0, 32, 0)
    with pytest.raises(ValueError, match="3x5"):
        swin.downsample(0, torch.zeros(1, 3, 5, 16))
    with pytest.raises(ValueError, match="window_policy"):
        FusedSwin(window_policy="shifted")
    clamp = FusedSwin(4, 16, (1, 1), (1, 2), 4, 4.0, 0.0, 32, 0, window_policy="clamp")
    with pytest.raises(ValueError, match="WINDOW_SIZE"):
        clamp.run_block(0, 0, torch.zeros(1, 2, 2, 16))


def test_edge_windows_are_where_the_shift_mask_is_not_zero():
    mask = shift_mask(12, 16, 4, 2, torch.device("cpu"), torch.float32)  # 3 x 4 windows
    masked = [i for i in range(12) if torch.count_nonzero(mask[i])]
    assert sorted(edge_window_ids(3, 4)) == masked == [3, 7, 8, 9, 10, 11]
    assert edge_window_ids(3, 4) == [3, 7, 8, 9, 10, 11]  # last column, then the last row
    assert edge_window_ids(1, 3) == [0, 1, 2] and edge_window_ids(3, 1) == [0, 1, 2]


def test_real_runs_hand_computed():
    """(dst, src, length) runs of the real positions: a padded axis of 8 with 5 real, read
    from 0, rolled by 2, and the wrapped last window of 4 rolled by 2."""
    assert real_runs(0, 8, 8, 5) == [(0, 0, 5)]
    assert real_runs(2, 8, 8, 5) == [(0, 2, 3), (6, 0, 2)]
    assert real_runs(6, 4, 8, 5) == [(2, 0, 2)]
    assert real_runs(6, 4, 8, 8) == [(0, 6, 2), (2, 0, 2)]
    assert real_runs(2, 4, 4, 1) == [(2, 0, 1)]


@pytest.mark.parametrize("height, width", [(12, 16), (4, 12), (12, 4), (4, 4)])
def test_attend_shifted_equals_roll_attend_roll(height, width):
    """The original's procedure: roll by -shift, attend in windows with the shift mask, merge,
    roll back."""
    torch.manual_seed(0)
    attention = WindowAttention(8, num_heads=2, window_size=4)
    x = torch.randn(2, height, width, 8)
    mask = shift_mask(height, width, 4, 2, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        windows = partition_windows(torch.roll(x, (-2, -2), (1, 2)), 4)
        expected = merge_windows(attention(windows, mask=mask), 4, height, width)
        expected = torch.roll(expected, (2, 2), (1, 2))
        torch.testing.assert_close(attend_shifted(attention, x, 4, 2), expected)


@pytest.mark.parametrize("use_sdpa", [False, True])
@pytest.mark.parametrize("chunk_elements", [2**21, 1])
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("height, width", [(14, 21), (12, 8), (3, 5), (9, 4), (1, 6), (6, 1)])
def test_inference_block_equals_the_training_block(
    height, width, shifted, chunk_elements, use_sdpa, monkeypatch
):
    """Without autograd a block attends without rolling, masks only the edge windows, runs the
    MLP in chunks (one window / one token at a time with `chunk_elements` 1) and adds the
    residuals in place: the values of the training path (the original's operations), and
    the input is left as it was. Grids: padded both ways (the qkv and projection of real
    tokens only), unpadded, one window row, one window column, fewer real rows (columns)
    than the shift; SDPA and explicit attention."""
    monkeypatch.setattr(windows_module, "CPU_CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    block = SwinBlock(16, 2, 4, shifted, 4.0, 0.0, 24, "pad_and_shift", False, use_sdpa).eval()
    torch.nn.init.constant_(block.i2t.gate, 0.5)
    x = torch.randn(2, height, width, 16)
    text = torch.randn(2, 5, 24)
    text_bias = extended_attention_bias(torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]), x.dtype)
    for fused in (False, True):
        arguments = (text, text_bias) if fused else ()
        expected = block(x, *arguments)  # autograd on
        given = x.clone()
        with torch.no_grad():
            torch.testing.assert_close(block(given, *arguments), expected, atol=2e-6, rtol=1e-5)
        assert torch.equal(given, x)


@pytest.mark.parametrize("height, width", [(8, 12), (7, 10)])
@pytest.mark.parametrize("shifted", [False, True])
def test_inference_block_keeps_the_residual_dtype_under_autocast(shifted, height, width):
    """With bf16 autocast the attention branch comes out in bf16; the inference path must add
    it to the float32 residual stream as the training path does, not into the bf16 buffer."""
    torch.manual_seed(0)
    block = SwinBlock(16, 2, 4, shifted, 4.0, 0.0, None, "pad_and_shift", False, True).eval()
    x = torch.randn(1, height, width, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = block(x)
        with torch.no_grad():
            given = block(x)
    assert given.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(given, expected, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("shifted", [False, True])
def test_inference_off_the_cpu_takes_one_pass_over_all_windows(shifted, monkeypatch):
    """The row-by-row / chunked attention paths are for CPU caches; on another device (here
    the meta device, shapes only) inference attends over every window at once, as training."""
    from fiber_det.modeling.backbone import swin as swin_module

    def refuse(*args, **kwargs):
        raise AssertionError("a CPU inference path ran off the CPU")

    for name in ("attend_unpadded", "attend_shifted", "attend_in_chunks"):
        monkeypatch.setattr(swin_module, name, refuse)

    def build():
        return SwinBlock(16, 2, 4, shifted, 4.0, 0.0, None, "pad_and_shift", False, True).eval()

    with torch.no_grad():
        out = build().to("meta")(torch.empty(2, 7, 10, 16, device="meta"))
        assert out.shape == (2, 7, 10, 16) and out.device.type == "meta"
        with pytest.raises(AssertionError, match="CPU inference path"):
            build()(torch.randn(2, 7, 10, 16))
