"""Trunk rename table vs the released checkpoint's key dump; loading Swin and RoBERTa files."""

import json
from collections import Counter

import pytest
import torch
from detectron2.layers import ShapeSpec
from timm.models.swin_transformer import SwinTransformer
from transformers import RobertaConfig, RobertaModel

from fiber_det.checkpoint import (
    convert_fine_trunk,
    interpolate_relative_position_bias,
    load_swin_weights,
)
from fiber_det.config import get_fiber_cfg
from fiber_det.modeling.backbone.fiber import FiberTrunk
from fiber_det.modeling.backbone.fpn import build_fiber_fpn_backbone
from fiber_det.modeling.backbone.swin import FusedSwin
from tests.modeling.backbone.tiny import tiny_trunk_cfg


def test_fiber_b_matches_released_keys(reference_dir):
    """FIBER-B defaults, built on the meta device: the same parameters as `fusion_backbone.*`."""
    dump = json.loads((reference_dir / "fiber_fine_grained_state_dict.json").read_text())
    released = {k: v for k, v in dump["params"].items() if k.startswith("fusion_backbone.")}
    with torch.device("meta"):
        backbone = build_fiber_fpn_backbone(get_fiber_cfg(), ShapeSpec(channels=3))
    params = dict(backbone.named_parameters())
    assert sum(p.numel() for p in params.values()) == 240_332_164
    assert sum(p.numel() for n, p in params.items() if n.startswith("fpn.")) == 3_409_920
    assert Counter(tuple(p.shape) for p in params.values()) == Counter(
        tuple(shape) for shape in released.values()
    )
    buffers = {k: v for k, v in dump["buffers"].items() if k.startswith("fusion_backbone.")}
    checkpoint = {k: torch.empty(v, device="meta") for k, v in {**released, **buffers}.items()}
    converted = convert_fine_trunk(checkpoint)
    assert not converted.unconverted and set(converted.dropped) == set(buffers)
    assert set(converted.state_dict) == set(params)
    for name, tensor in converted.state_dict.items():
        assert tensor.shape == params[name].shape, name


def test_relative_position_bias_interpolation(reference_dir):
    """Matches the original loader's bicubic resampling (window 2 -> 3) stored in the golden
    VQA file, and keeps tables whose window is unchanged."""
    golden = torch.load(reference_dir / "golden" / "fiber_small_vqa.pt", weights_only=True)
    for key, table in golden["pretrain_relative_position_bias_tables"].items():
        resized = interpolate_relative_position_bias(table, 3)
        torch.testing.assert_close(resized, golden["state_dict"][key], atol=1e-6, rtol=0)
    table = torch.randn(9, 2)
    assert interpolate_relative_position_bias(table, 2) is table


def _microsoft_checkpoint(swin: FusedSwin) -> dict:
    """The layout of microsoft/Swin-Transformer classification checkpoints."""
    state = {
        k.replace("final_norm.", "norm."): v
        for k, v in swin.state_dict().items()
        if not k.startswith("stage_norms.")
    }
    state["norm.weight"], state["norm.bias"] = torch.ones(128), torch.zeros(128)
    state["head.weight"], state["head.bias"] = torch.randn(5, 128), torch.randn(5)
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 9, 9)
    state["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(9, 9, dtype=torch.long)
    return {"model": state}


def test_load_swin_checkpoints(tmp_path):
    source = FusedSwin(4, 16, (1, 1, 2, 2), (1, 1, 2, 2), 3, 4.0, 0.0, 32, 0, output_norms="final")
    torch.save(_microsoft_checkpoint(source), tmp_path / "swin_ms.pth")
    target = FusedSwin(4, 16, (1, 1, 2, 2), (1, 1, 2, 2), 2, 4.0, 0.0, 32, 3)
    left = load_swin_weights(target, str(tmp_path / "swin_ms.pth"))
    assert left and all(".i2t." in k or k.startswith("stage_norms.") for k in left)
    block = "layers.2.blocks.1.attn."
    torch.testing.assert_close(
        target.state_dict()[block + "qkv.weight"], source.state_dict()[block + "qkv.weight"]
    )
    table = target.state_dict()[block + "relative_position_bias_table"]
    expected = interpolate_relative_position_bias(
        source.state_dict()[block + "relative_position_bias_table"], 2
    )
    assert table.shape == (9, 2) and torch.equal(table, expected)

    timm_swin = SwinTransformer(
        img_size=64,
        embed_dim=16,
        depths=(1, 1, 2, 2),
        num_heads=(1, 1, 2, 2),
        window_size=2,
        num_classes=0,
    )
    torch.save(timm_swin.state_dict(), tmp_path / "swin_timm.pth")
    final = FusedSwin(4, 16, (1, 1, 2, 2), (1, 1, 2, 2), 2, 4.0, 0.0, 32, 0, output_norms="final")
    assert load_swin_weights(final, str(tmp_path / "swin_timm.pth")) == []
    loaded, original = final.state_dict(), timm_swin.state_dict()
    torch.testing.assert_close(
        loaded["layers.0.downsample.reduction.weight"],
        original["layers.1.downsample.reduction.weight"],
    )
    torch.testing.assert_close(loaded["final_norm.weight"], original["norm.weight"])

    wider = FusedSwin(4, 24, (1, 1, 2, 2), (1, 1, 2, 2), 2, 4.0, 0.0, 32, 0)
    with pytest.raises(ValueError, match=r"swin_timm\.pth.*shape mismatch"):
        load_swin_weights(wider, str(tmp_path / "swin_timm.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_swin_weights(wider, str(tmp_path / "missing.pth"))


def test_config_loads_pretrained_towers(tmp_path):
    text_config = RobertaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
    )  # fmt: skip
    roberta = RobertaModel(text_config)
    roberta.save_pretrained(tmp_path / "roberta")
    swin = FusedSwin(4, 16, (1, 1, 2, 2), (1, 1, 2, 2), 2, 4.0, 0.0, 32, 0)
    torch.save(_microsoft_checkpoint(swin), tmp_path / "swin.pth")
    cfg = tiny_trunk_cfg(**{"TEXT.WEIGHTS": str(tmp_path / "roberta"), "TEXT.VOCAB_SIZE": 1})
    cfg.MODEL.FIBER.SWIN.WEIGHTS = str(tmp_path / "swin.pth")
    trunk = FiberTrunk(cfg)
    assert trunk.text_backbone.config.max_position_embeddings == 40  # sizes from config.json
    state = trunk.state_dict()
    torch.testing.assert_close(
        state["text_backbone.layers.3.output.dense.weight"],
        roberta.state_dict()["encoder.layer.3.output.dense.weight"],
    )
    torch.testing.assert_close(
        state["image_backbone.patch_embed.proj.weight"],
        swin.state_dict()["patch_embed.proj.weight"],
    )
