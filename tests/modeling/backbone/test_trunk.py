"""FiberTrunk / FiberFPNBackbone behaviour on a tiny config: shapes, fusion, padding, prefixes."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from timm.models.swin_transformer import SwinTransformer
from transformers import RobertaModel

from fiber_det.modeling.backbone.fiber import FiberTrunk
from fiber_det.modeling.backbone.fpn import build_fiber_fpn_backbone
from tests.modeling.backbone.tiny import (
    random_text,
    set_gates,
    timm_swin_state_dict,
    tiny_trunk_cfg,
    transformers_roberta_state_dict,
)

ATOL = 1e-5


def _fused_trunk(**overrides) -> FiberTrunk:
    trunk = FiberTrunk(tiny_trunk_cfg(**overrides)).eval()
    set_gates(trunk)
    return trunk


@pytest.mark.parametrize("size", [(32, 32), (96, 160), (224, 64)])
def test_fpn_shapes_match_output_shape(size):
    backbone = build_fiber_fpn_backbone(tiny_trunk_cfg(), ShapeSpec(channels=3)).eval()
    ids, mask = random_text(2, 9, [9, 4])
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, *size), ids, mask)
        res = backbone.trunk(torch.randn(2, 3, *size), ids, mask).image
    shapes = backbone.output_shape()
    assert list(out.features) == list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    height, width = size
    for name, spec in shapes.items():
        expected_hw = (-(-height // spec.stride), -(-width // spec.stride))
        assert spec.channels == 16 and out.features[name].shape == (2, 16, *expected_hw)
    for level, channels in zip(range(2, 6), (16, 32, 64, 128)):
        stride = 2**level
        assert res[f"res{level}"].shape == (2, channels, height // stride, width // stride)
    assert out.text.hidden.shape == (2, 9, 32) and backbone.size_divisibility == 32
    assert backbone.trunk.text_pad_token_id == 1 and backbone.trunk.text_hidden_size == 32


def test_text_changes_image_only_when_fused():
    trunk = _fused_trunk()
    images = torch.randn(1, 3, 64, 96)
    ids_a, mask = random_text(1, 10, [10])
    ids_b = ids_a.clone()
    ids_b[0, 3:6] = torch.tensor([7, 8, 9])
    with torch.no_grad():
        fused_a, fused_b = trunk(images, ids_a, mask), trunk(images, ids_b, mask)
        alone_a = trunk(images, ids_a, mask, fuse=False)
        alone_b = trunk(images, ids_b, mask, fuse=False)
    assert (fused_a.image["res5"] - fused_b.image["res5"]).abs().max() > 1e-3
    assert (fused_a.image["res4"] - fused_b.image["res4"]).abs().max() > 1e-3
    torch.testing.assert_close(fused_a.image["res3"], fused_b.image["res3"])  # unfused stage
    torch.testing.assert_close(alone_a.image["res5"], alone_b.image["res5"])
    assert fused_a.fused and not alone_a.fused
    image_only = trunk(images)
    assert image_only.text is None
    torch.testing.assert_close(image_only.image["res5"], alone_a.image["res5"])


def test_zero_gates_equal_timm_swin_and_transformers_roberta():
    """Fused forward with every gate at 0 == timm's SwinTransformer (+ the output norms) and
    transformers' RobertaModel holding the same weights (grids 32..4 suit timm's block)."""
    trunk = FiberTrunk(tiny_trunk_cfg()).eval()
    swin = SwinTransformer(
        img_size=128, embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 1, 2, 2), window_size=2,
        num_classes=0,
    ).eval()  # fmt: skip
    swin.load_state_dict(timm_swin_state_dict(trunk.image_backbone), strict=False)
    roberta = RobertaModel(trunk.text_backbone.config, add_pooling_layer=False).eval()
    roberta.load_state_dict(transformers_roberta_state_dict(trunk.text_backbone))
    images, (ids, mask) = torch.randn(2, 3, 128, 128), random_text(2, 9, [9, 4])
    with torch.no_grad():
        out = trunk(images, ids, mask)
        stages = swin.forward_intermediates(images, norm=False, intermediates_only=True)
        text = roberta(input_ids=ids, attention_mask=mask).last_hidden_state
    assert out.fused
    for stage, expected in enumerate(stages):
        norm = trunk.image_backbone.stage_norms[stage]
        expected = norm(expected.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(out.image[f"res{stage + 2}"], expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.text.hidden, text, atol=ATOL, rtol=0)


def test_zero_gates_make_fusion_a_no_op():
    trunk = FiberTrunk(tiny_trunk_cfg()).eval()
    images, (ids, mask) = torch.randn(2, 3, 64, 64), random_text(2, 8, [8, 3])
    with torch.no_grad():
        fused, alone = trunk(images, ids, mask), trunk(images, ids, mask, fuse=False)
    for name in fused.image:
        torch.testing.assert_close(fused.image[name], alone.image[name], atol=ATOL, rtol=0)
    torch.testing.assert_close(fused.text.hidden, alone.text.hidden, atol=ATOL, rtol=0)


def test_padded_text_positions_change_nothing():
    trunk = _fused_trunk()
    images = torch.randn(2, 3, 64, 64)
    ids, mask = random_text(2, 12, [12, 5])
    other_ids = ids.clone()
    other_ids[1, 5:] = torch.randint(5, 64, (7,))
    with torch.no_grad():
        a, b = trunk(images, ids, mask), trunk(images, other_ids, mask)
    for name in a.image:
        torch.testing.assert_close(a.image[name], b.image[name], atol=ATOL, rtol=0)
    torch.testing.assert_close(a.text.embedded, b.text.embedded, atol=ATOL, rtol=0)
    assert torch.count_nonzero(a.text.embedded[1, 5:]) == 0


def test_padding_to_256_gives_the_same_outputs():
    trunk = _fused_trunk()
    images = torch.randn(1, 3, 64, 96)
    ids, mask = random_text(1, 9, [9])
    long_ids = torch.cat([ids, torch.ones(1, 247, dtype=torch.long)], dim=1)
    long_mask = torch.cat([mask, torch.zeros(1, 247, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short, long = trunk(images, ids, mask), trunk(images, long_ids, long_mask)
    for name in short.image:
        torch.testing.assert_close(short.image[name], long.image[name], atol=ATOL, rtol=0)
    torch.testing.assert_close(short.text.hidden, long.text.hidden[:, :9], atol=ATOL, rtol=0)


def test_batching_same_size_images_changes_nothing():
    trunk = _fused_trunk()
    images = torch.randn(3, 3, 64, 96)
    ids, mask = random_text(3, 8, [8, 6, 4])
    with torch.no_grad():
        batched = trunk(images, ids, mask)
        single = trunk(images[1:2], ids[1:2], mask[1:2])
    for name in single.image:
        torch.testing.assert_close(single.image[name], batched.image[name][1:2], atol=ATOL, rtol=0)
    torch.testing.assert_close(single.text.hidden, batched.text.hidden[1:2], atol=ATOL, rtol=0)


def test_larger_image_in_batch_moves_features():
    """Zero-padded pixels are ordinary tokens (spec h.8), kept for parity: a 64x64 image padded
    to 96x128 beside a larger one differs from the image alone wherever a window or the
    text->image attention reaches the padding. Measured here (features are O(1)): res3 0
    (its stages have no shifted block), res4 1.2, text 0.57 (max abs)."""
    trunk = _fused_trunk()
    image = torch.randn(1, 3, 64, 64)
    ids, mask = random_text(1, 8, [8])
    padded = torch.zeros(1, 3, 96, 128)
    padded[..., :64, :64] = image
    with torch.no_grad():
        alone, in_batch = trunk(image, ids, mask), trunk(padded, ids, mask)
    moved = {
        name: (alone.image[name] - in_batch.image[name][..., :size, :size]).abs().max().item()
        for name, size in (("res3", 8), ("res4", 4))
    }
    moved["text"] = (alone.text.hidden - in_batch.text.hidden).abs().max().item()
    assert moved["res3"] < ATOL
    assert moved["res4"] > 1e-2 and moved["text"] > 1e-2


@pytest.mark.parametrize("prompts_per_image", [1, 3])
def test_prefix_then_fused_equals_full_forward(prompts_per_image):
    trunk = _fused_trunk()
    images = torch.randn(2, 3, 64, 96)
    count = 2 * prompts_per_image
    ids, mask = random_text(count, 10, [10 - i for i in range(count)])
    with torch.no_grad():
        prefix = trunk.encode_image_prefix(images)
        continued = trunk.forward_fused(prefix, ids, mask)
        full = trunk(images.repeat_interleave(prompts_per_image, dim=0), ids, mask)
    assert (prefix.stage, prefix.block) == (2, 1) and list(prefix.features) == ["res2", "res3"]
    for name in full.image:
        torch.testing.assert_close(continued.image[name], full.image[name], atol=ATOL, rtol=0)
    torch.testing.assert_close(continued.text.hidden, full.text.hidden, atol=ATOL, rtol=0)
    torch.testing.assert_close(continued.image_tokens, full.image_tokens, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="multiple of the image batch"):
        trunk.forward_fused(prefix, ids[:1], mask[:1])


def test_inference_prefix_holds_the_first_pairs_text_independent_work():
    """Without autograd the prefix also carries the first fused Swin block's window attention,
    its i2t queries and its text layer's t2i keys / values; prompts continued from it give the
    values of the autograd path (which computes them in the fused pass), pass after pass, and
    no pass writes into the prefix."""
    trunk = _fused_trunk()
    images = torch.randn(2, 3, 64, 96)
    ids, mask = random_text(6, 10, [10, 9, 8, 7, 6, 5])
    with torch.no_grad():
        prefix = trunk.encode_image_prefix(images)
    training_prefix = trunk.encode_image_prefix(images)
    assert training_prefix.attended is None and training_prefix.text_context is None
    assert training_prefix.i2t_query is None
    expected = trunk.forward_fused(training_prefix, ids, mask)
    block = trunk.image_backbone.layers[prefix.stage].blocks[prefix.block]
    first_text_layer = trunk.text_backbone.layers[trunk.text_backbone.first_fused]
    with torch.no_grad():
        torch.testing.assert_close(prefix.attended, block.attention_branch(prefix.tokens))
        query = block.i2t.query(prefix.attended.flatten(1, 2))
        torch.testing.assert_close(prefix.i2t_query, query.unflatten(-1, (2, -1)).transpose(1, 2))
        keys, values = first_text_layer.t2i.keys_values(prefix.tokens.flatten(1, 2))
        torch.testing.assert_close(prefix.text_context[0], keys)
        torch.testing.assert_close(prefix.text_context[1], values)
        held = (prefix.tokens, prefix.attended, prefix.i2t_query, *prefix.text_context)
        kept = [t.clone() for t in held]
        first = trunk.forward_fused(prefix, ids, mask)
        second = trunk.forward_fused(prefix, ids, mask)
    for name in expected.image:
        torch.testing.assert_close(first.image[name], expected.image[name], atol=ATOL, rtol=0)
        assert torch.equal(first.image[name], second.image[name])
    torch.testing.assert_close(first.text.hidden, expected.text.hidden, atol=ATOL, rtol=0)
    for before, now in zip(kept, held):
        assert torch.equal(before, now)


def test_fpn_prefix_path_equals_forward():
    backbone = build_fiber_fpn_backbone(tiny_trunk_cfg(), ShapeSpec(channels=3)).eval()
    set_gates(backbone)
    images = torch.randn(1, 3, 64, 64)
    ids, mask = random_text(2, 7, [7, 5])
    with torch.no_grad():
        full = backbone(images.expand(2, -1, -1, -1), ids, mask)
        continued = backbone.forward_from_prefix(backbone.encode_image_prefix(images), ids, mask)
    for name in full.features:
        torch.testing.assert_close(continued.features[name], full.features[name], atol=ATOL, rtol=0)


def test_gradients_reach_both_gates_and_checkpointing_matches():
    gate_grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(1)
        trunk = FiberTrunk(tiny_trunk_cfg(USE_CHECKPOINT=use_checkpoint)).train()
        images, (ids, mask) = torch.randn(2, 3, 64, 64), random_text(2, 8, [8, 5])
        out = trunk(images, ids, mask)
        (out.image["res5"].square().mean() + out.text.hidden.square().mean()).backward()
        grads = {n: p.grad for n, p in trunk.named_parameters() if n.endswith(".gate")}
        assert sum(".i2t." in n for n in grads) == 3 and sum(".t2i." in n for n in grads) == 3
        assert all(g is not None and g.abs() > 0 for g in grads.values())
        gate_grads.append(grads)
    for name, grad in gate_grads[0].items():
        torch.testing.assert_close(gate_grads[1][name], grad)


def test_freeze_and_disabled_fusion():
    trunk = FiberTrunk(tiny_trunk_cfg(**{"SWIN.FREEZE_AT": 2, "FUSION.ENABLED": False}))
    frozen = [n for n, p in trunk.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("image_backbone.patch_embed.", "image_backbone.layers.0."))
                          for n in frozen)  # fmt: skip
    assert any(n.startswith("image_backbone.layers.0.") for n in frozen)
    ids, mask = random_text(1, 5, [5])
    assert not trunk.eval()(torch.randn(1, 3, 32, 32), ids, mask).fused


def test_bad_inputs_are_reported():
    trunk = FiberTrunk(tiny_trunk_cfg()).eval()
    ids, mask = random_text(1, 5, [5])
    with pytest.raises(ValueError, match="multiple of 32"):
        trunk(torch.randn(1, 3, 48, 64), ids, mask)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        trunk(torch.randn(1, 1, 64, 64), ids, mask)
    with pytest.raises(ValueError, match="attention_mask shape"):
        trunk(torch.randn(1, 3, 64, 64), ids, mask[:, :3])
    with pytest.raises(ValueError, match="integer"):
        trunk(torch.randn(1, 3, 64, 64), ids.float(), mask)


def test_initialisation_follows_the_original():
    """FPN convs: kaiming_uniform(a=1) (bound sqrt(3 / fan_in)), zero bias; gates 0; text
    Linears normal(0, 0.02) as transformers' RobertaPreTrainedModel."""
    backbone = build_fiber_fpn_backbone(tiny_trunk_cfg(), ShapeSpec(channels=3))
    for name, conv in backbone.fpn.named_modules():
        if isinstance(conv, torch.nn.Conv2d):
            bound = (3 / conv.weight[0].numel()) ** 0.5
            assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.8 * bound
            assert torch.count_nonzero(conv.bias) == 0, name
    gates = [p for n, p in backbone.named_parameters() if n.endswith(".gate")]
    assert len(gates) == 6 and all(g.item() == 0 for g in gates)
    query = backbone.trunk.text_backbone.layers[3].t2i.query.weight
    assert abs(query.std().item() - 0.02) < 0.004
