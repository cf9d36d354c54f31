"""The few places where fiber_det relies on more than a package's documented API.

Each is pinned in requirements.lock; each test here fails with the package and its version named,
so a new release that changes one of them is found by `make test-latest`, not by users.
"""

import inspect
from contextlib import contextmanager
from importlib.metadata import version

import pytest
import torch


@contextmanager
def contract(package: str, what: str):
    """Re-raise any failure inside as an AssertionError naming `package` and its version."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - every failure is a broken contract
        raise AssertionError(
            f"{package} {version(package)}: {what} changed ({type(error).__name__}: {error}); "
            "fiber_det was tested with the version in requirements.lock"
        ) from error


def test_timm_window_attention_adds_the_relative_bias_and_the_mask():
    """swin.py builds its blocks on timm's WindowAttention(dim, num_heads, window_size),
    calls it as attn(windows, mask=...) and switches SDPA with its `fused_attn` attribute;
    on padded grids windows.attend_unpadded computes the same attention itself from its
    `qkv`, `proj`, `num_heads` and `relative_position_bias_table[relative_position_index]`."""
    from timm.models.swin_transformer import WindowAttention

    from fiber_det.modeling.backbone.windows import relative_position_bias

    torch.manual_seed(0)
    what = "WindowAttention (constructor, forward(x, mask), fused_attn, qkv, proj, bias table)"
    with contract("timm", what):
        attention = WindowAttention(8, num_heads=2, window_size=2).eval()
        assert "mask" in inspect.signature(attention.forward).parameters
        assert isinstance(attention.fused_attn, bool)
        windows, mask = torch.randn(3, 4, 8), torch.randn(3, 4, 4)
        with torch.no_grad():
            attention.relative_position_bias_table.normal_()
            q, k, v = attention.qkv(windows).view(3, 4, 3, 2, 4).permute(2, 0, 3, 1, 4)
            bias = attention.relative_position_bias_table[attention.relative_position_index]
            logits = q @ k.transpose(-1, -2) * 4**-0.5 + bias.view(4, 4, 2).permute(2, 0, 1)
            context = (logits + mask[:, None]).softmax(-1) @ v
            assert attention.num_heads == 2
            torch.testing.assert_close(
                relative_position_bias(attention), bias.view(4, 4, 2).permute(2, 0, 1)[None]
            )
            expected = attention.proj(context.transpose(1, 2).reshape(3, 4, 8))
            for fused in (False, True):
                attention.fused_attn = fused
                torch.testing.assert_close(attention(windows, mask=mask), expected)


def test_timm_mlp_is_fc1_exact_gelu_fc2():
    """SwinBlock's inference path calls timm's Mlp parts itself (fc1, GELU in place, fc2) and
    WindowAttention's `qkv` width to size its chunks."""
    from timm.layers import Mlp
    from timm.models.swin_transformer import WindowAttention

    torch.manual_seed(0)
    with contract("timm", "Mlp (fc1, act = nn.GELU(), fc2), WindowAttention.qkv"):
        mlp = Mlp(8, 32).eval()
        assert isinstance(mlp.act, torch.nn.GELU) and mlp.act.approximate == "none"
        x = torch.randn(5, 8)
        expected = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x)))
        torch.testing.assert_close(mlp(x), expected)
        assert WindowAttention(8, num_heads=2, window_size=2).qkv.out_features == 24


def test_timm_patch_embed_and_merging_keep_the_original_swin_layout():
    """PatchEmbed(output_fmt="NHWC", strict_img_size=False) and PatchMerging(dim, out_dim) on
    (B, H, W, C) with the original Swin's channel order x(0,0), x(1,0), x(0,1), x(1,1)."""
    from timm.models.swin_transformer import PatchEmbed, PatchMerging

    torch.manual_seed(0)
    with contract("timm", "PatchEmbed / PatchMerging"):
        embed = PatchEmbed(
            img_size=None, patch_size=4, embed_dim=6, norm_layer=None, output_fmt="NHWC",
            strict_img_size=False,
        )  # fmt: skip
        images = torch.randn(1, 3, 8, 12)
        torch.testing.assert_close(embed(images), embed.proj(images).permute(0, 2, 3, 1))
        merging = PatchMerging(3, out_dim=5).eval()
        x = torch.randn(1, 4, 6, 3)
        quads = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        expected = merging.reduction(merging.norm(torch.cat(quads, dim=-1)))
        torch.testing.assert_close(merging(x), expected)


def test_detectron2_helpers_fiber_det_imports_from_submodules():
    """Names imported from detectron2 submodules rather than its package roots."""
    with contract("sal-detectron2", "detectron2 submodule helpers"):
        from detectron2.data.build import filter_images_with_only_crowd_annotations
        from detectron2.modeling.backbone.fpn import LastLevelP6P7
        from detectron2.solver.build import maybe_add_gradient_clipping
        from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler

        top = LastLevelP6P7(4, 6, in_feature="res5")
        assert top.num_levels == 2 and top.in_feature == "res5"
        assert [f.shape[1:] for f in top(torch.randn(1, 4, 8, 8))] == [(6, 4, 4), (6, 2, 2)]
        crowd_only = {"annotations": [{"iscrowd": 1}]}
        kept = {"annotations": [{"iscrowd": 0}]}
        assert filter_images_with_only_crowd_annotations([crowd_only, kept]) == [kept]
        params = list(inspect.signature(maybe_add_gradient_clipping).parameters)
        assert params == ["cfg", "optimizer"]
        assert "multiplier" in inspect.signature(LRMultiplier).parameters
        assert "warmup_length" in inspect.signature(WarmupParamScheduler).parameters


def test_detectron2_fpn_modules_in_top_down_order():
    """fpn_prefix.py continues detectron2's FPN with its own modules: `in_features` fine to
    coarse, `lateral_convs` / `output_convs` coarsest first (3x3 output convs, padding 1),
    `top_block` reading `in_feature`, and forward's nearest 2x upsampling and sum."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import FPN
    from detectron2.modeling.backbone.fpn import LastLevelP6P7

    from fiber_det.modeling.backbone.fpn import TrunkFeatures
    from fiber_det.modeling.backbone.fpn_prefix import FpnPrefix, fpn_from_prefix

    torch.manual_seed(0)
    with contract("sal-detectron2", "FPN (module lists, their order, forward)"):
        bottom_up = TrunkFeatures({"res3": 3, "res4": 5}, {"res3": 8, "res4": 16})
        fpn = FPN(bottom_up, ["res3", "res4"], 4, "", LastLevelP6P7(4, 4, "p4"), "sum").eval()
        assert fpn.in_features == ("res3", "res4")
        assert [c.in_channels for c in fpn.lateral_convs] == [5, 3]
        assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in fpn.output_convs)
        assert fpn.top_block.in_feature == "p4"
        assert isinstance(fpn.output_shape()["p3"], ShapeSpec)
        features = {"res3": torch.randn(2, 3, 8, 8), "res4": torch.randn(2, 5, 4, 4)}
        with torch.no_grad():
            expected = fpn(features)
            got = fpn_from_prefix(fpn, FpnPrefix({}, {}, {}), features, repeats=1)
        assert list(got) == list(expected) == ["p3", "p4", "p5", "p6"]
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value)


@pytest.mark.parametrize("package", ["timm", "sal-detectron2", "transformers"])
def test_contract_failures_name_the_package_and_version(package):
    with pytest.raises(AssertionError, match=rf"{package} {version(package)}: a thing changed"):
        with contract(package, "a thing"):
            raise TypeError("unexpected keyword argument")


def test_detectron2_default_trainer_builds_what_fiber_trainer_mirrors(tmp_path):
    """FiberTrainer.__init__ mirrors DefaultTrainer.__init__ (see its docstring): a new
    attribute set by detectron2's constructor must be mirrored too."""
    from detectron2.engine import DefaultTrainer

    from fiber_det.config import get_fiber_cfg
    from fiber_det.engine import FiberTrainer

    class TinyParts:
        @classmethod
        def build_model(cls, cfg):
            return torch.nn.Linear(2, 1)

        @classmethod
        def build_train_loader(cls, cfg):
            return [[{"x": torch.zeros(2)}]]

    cfg = get_fiber_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.DEVICE = "cpu"
    upstream = type("Upstream", (TinyParts, DefaultTrainer), {})(cfg)
    ours = type("Ours", (TinyParts, FiberTrainer), {})(cfg)
    with contract("sal-detectron2", "DefaultTrainer.__init__ (the attributes it sets)"):
        # `ema` (MODEL.EMA) is FiberTrainer's own addition
        assert sorted(vars(upstream)) == sorted(set(vars(ours)) - {"ema"})
        assert [type(h).__name__ for h in upstream._hooks] == [
            type(h).__name__ for h in ours._hooks
        ]


def test_torch_flop_counter_counts_cpu_attention_through_the_benchmark_mapping():
    """tools/benchmark_common.count_gflop maps torch's private CPU flash-attention op onto
    torch.utils.flop_counter's (undocumented) sdpa_flop_count: 4 * B * H * L * S * D FLOPs."""
    from tests.tools.tool_module import load_tool

    count_gflop = load_tool("benchmark_common").count_gflop
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    with contract("torch", "aten._scaled_dot_product_flash_attention_for_cpu, sdpa_flop_count"):
        with torch.no_grad():
            gflop = count_gflop(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        assert gflop * 1e9 == 4 * 2 * 3 * 5 * 7 * 8  # QK^T and PV: 2 * L * S * D each per head


def test_torch_onednn_linear_op_hand_computed():
    """modeling/onednn_linear.py runs CPU inference linears through torch's internal
    torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")."""
    from fiber_det.modeling.onednn_linear import onednn_linear, onednn_linear_available

    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    bias = torch.tensor([0.5, 0.0, -1.0])
    expected = torch.tensor([[[1.5, 2.0, 2.0], [3.5, 4.0, 6.0]]])
    with contract("torch", "torch.ops.mkldnn._linear_pointwise (oneDNN linear)"):
        assert onednn_linear_available()
        torch.testing.assert_close(onednn_linear(x, weight, bias), expected)
        torch.testing.assert_close(onednn_linear(x[0], weight), expected[0] - bias)


def test_torch_flop_counter_counts_onednn_linears_through_the_benchmark_mapping():
    """count_gflop maps torch.ops.mkldnn._linear_pointwise, which torch.utils.flop_counter does
    not count, onto 2 * rows * N * K."""
    from fiber_det.modeling.onednn_linear import onednn_linear
    from tests.tools.tool_module import load_tool

    count_gflop = load_tool("benchmark_common").count_gflop
    x, weight = torch.randn(2, 3, 5), torch.randn(7, 5)
    with contract("torch", "torch.ops.mkldnn._linear_pointwise in torch.utils.flop_counter"):
        with torch.no_grad():
            gflop = count_gflop(lambda: onednn_linear(x, weight, torch.zeros(7)))
        assert round(gflop * 1e9) == 2 * 6 * 7 * 5


def test_torch_dynamo_recompile_limit_is_an_integer_setting():
    """tools/benchmark_gpu.py raises torch._dynamo.config.recompile_limit so that torch.compile
    keeps compiling Swin-B's block variants (more than the default of 8) instead of falling
    back to eager for the rest."""
    import torch._dynamo

    with contract("torch", "torch._dynamo.config.recompile_limit"):
        before = torch._dynamo.config.recompile_limit
        assert isinstance(before, int) and before >= 1
        with torch._dynamo.config.patch(recompile_limit=before + 56):
            assert torch._dynamo.config.recompile_limit == before + 56
        assert torch._dynamo.config.recompile_limit == before
