"""Golden parity with the original coarse model (golden/README.md "Golden outputs of the original
FIBER coarse model"): converted weights, the small config, every stored output."""

import pytest
import torch
import torch.nn.functional as F
from transformers import RobertaConfig

from fiber_det.checkpoint import convert_coarse
from fiber_det.modeling.backbone.fiber import FiberTrunk
from fiber_det.modeling.backbone.roberta import FusedRoberta
from fiber_det.modeling.backbone.swin import FusedSwin
from fiber_det.modeling.vision_language import pretrain_model
from fiber_det.modeling.vision_language.pretrain_model import FiberPretrainModel

ATOL = 1e-4
LOSS_RTOL = 1e-5


def build_small_coarse_model(config: dict) -> FiberPretrainModel:
    """The golden file's small coarse model (FIBER-B wiring, narrow widths)."""
    swin_cfg, text_cfg = config["swin"], config["text"]
    swin = FusedSwin(
        patch_size=swin_cfg["patch_size"],
        embed_dim=swin_cfg["embed_dim"],
        depths=tuple(swin_cfg["depths"]),
        num_heads=tuple(swin_cfg["num_heads"]),
        window_size=swin_cfg["window_size"],
        mlp_ratio=swin_cfg["mlp_ratio"],
        drop_path_rate=0.1,
        text_dim=text_cfg["hidden_size"],
        num_fused_blocks=config["num_fuse_block"],
        window_policy="clamp",
        output_norms="final",
        query_norm=True,
    )
    text_config = RobertaConfig(
        vocab_size=text_cfg["vocab_size"],
        hidden_size=text_cfg["hidden_size"],
        num_hidden_layers=text_cfg["num_layers"],
        num_attention_heads=text_cfg["num_heads"],
        intermediate_size=text_cfg["intermediate_size"],
        max_position_embeddings=text_cfg["max_position_embeddings"],
        type_vocab_size=text_cfg["type_vocab_size"],
        layer_norm_eps=text_cfg["layer_norm_eps"],
        pad_token_id=text_cfg["pad_token_id"],
    )
    fused_dims = [swin.dims[s] for s, _ in swin.block_ids[-config["num_fuse_block"] :]]
    trunk = FiberTrunk(
        image_backbone=swin,
        text_backbone=FusedRoberta(text_config, fused_dims),
        fusion_enabled=True,
        fused_text_last_norm=False,
    )
    return FiberPretrainModel(
        trunk=trunk,
        hidden_size=config["hidden_size"],
        vocab_size=text_cfg["vocab_size"],
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(1.0, 1.0, 1.0),
        queue_size=0,
        mlm_head_eps=config["mlm_head_layernorm_eps"],
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def golden(reference_dir):
    return torch.load(reference_dir / "golden" / "fiber_small_coarse.pt", weights_only=True)


@pytest.fixture(scope="module")
def model(golden):
    torch.manual_seed(0)
    model = build_small_coarse_model(golden["config"]).eval()
    result = convert_coarse(golden["state_dict"])
    assert result.unconverted == []
    missing, unexpected = model.load_state_dict(result.state_dict, strict=False)
    assert (missing, unexpected) == ([], [])
    return model


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def _loss_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=LOSS_RTOL, atol=0)


@torch.no_grad()
def test_itc_path(model, golden):
    images, ids, mask = golden["images"], golden["input_ids"], golden["attention_mask"]
    tokens = model.trunk(images, fuse=False).image["res5"].flatten(2).transpose(1, 2)
    _close(tokens, golden["itc_image_tokens"])
    _close(model.trunk.encode_text(ids, mask).hidden, golden["itc_text_tokens"])
    image_feat, text_feat = model.encode_image_itc(images), model.encode_text_itc(ids, mask)
    _close(image_feat, golden["itc_image_feat"])
    _close(text_feat, golden["itc_text_feat"])
    logits_i2t, logits_t2i = model._itc_logits(image_feat, text_feat, torch.arange(3))
    _close(model.temp, golden["itc_temp"])
    _close(logits_i2t, golden["itc_logits_i2t"])
    loss = pretrain_model.contrastive_loss(logits_i2t, logits_t2i)
    _loss_close(loss, golden["itc_loss"])


@torch.no_grad()
def test_fused_path_and_itm(model, golden):
    """One fused pass on the 9 pairs of (b'); its first 6 are the pairs of (b)."""
    image_index = torch.tensor(golden["itm_hardneg_image_index"])
    text_index = torch.tensor(golden["itm_hardneg_text_index"])
    assert image_index[:6].tolist() == golden["itm_image_index"]
    assert text_index[:6].tolist() == golden["itm_text_index"]
    ids, mask = golden["input_ids"][text_index], golden["attention_mask"][text_index]
    prefix = model.trunk.encode_image_prefix(golden["images"][image_index])
    out = model.trunk.forward_fused(prefix, ids, mask)
    _close(out.text.hidden[:6], golden["fused_text_tokens"])
    _close(out.image_tokens[:6], golden["fused_image_tokens"])
    feats = model.fused_features(prefix, ids, mask)
    _close(feats["text_feats"][:6], golden["fused_text_feats"])
    _close(feats["image_feats"][:6], golden["fused_image_feats"])
    _close(feats["cls_feats"][:6], golden["cls_feats"])
    logits = model.itm_score(feats["cls_feats"])
    _close(logits, golden["itm_hardneg_logits"])
    _close(logits[:6], golden["itm_logits"])
    _loss_close(F.cross_entropy(logits[:6], golden["itm_labels"]), golden["itm_loss"])
    _loss_close(F.cross_entropy(logits, golden["itm_hardneg_labels"]), golden["itm_hardneg_loss"])
    _close(model.itm_logits(golden["images"][:1], ids[:1], mask[:1]), logits[:1])


@torch.no_grad()
def test_mlm_path(model, golden):
    images, mask = golden["images"], golden["attention_mask"]
    prefix = model.trunk.encode_image_prefix(images)
    feats = model.fused_features(prefix, golden["mlm_input_ids"], mask)
    _close(feats["text_feats"], golden["mlm_text_feats"])
    _close(feats["cls_feats"], golden["mlm_cls_feats"])
    logits = model.mlm_logits(images, golden["mlm_input_ids"], mask)
    _close(logits, golden["mlm_logits"])
    rows, cols = golden["mlm_masked_positions"].unbind(1)
    _close(logits[rows, cols], golden["mlm_logits_masked"])
    loss = model._mlm_loss(feats["text_feats"], golden["mlm_labels"])
    _loss_close(loss, golden["mlm_loss"])


@torch.no_grad()
def test_training_losses_with_the_golden_negatives(model, golden, monkeypatch):
    """The one-pass training path (ITC, 3B ITM pairs, MLM) with negatives fixed to [1, 2, 0]."""
    monkeypatch.setattr(
        pretrain_model,
        "sample_hard_negatives",
        lambda logits, forbidden: torch.tensor([1, 2, 0]),
    )
    keys = ("input_ids", "attention_mask", "mlm_input_ids", "mlm_labels")
    text = {k: golden[k] for k in keys}
    losses = model.losses(golden["images"], text, torch.arange(3))
    _loss_close(losses["loss_itc"], golden["itc_loss"])
    _loss_close(losses["loss_itm"], golden["itm_hardneg_loss"])
    _loss_close(losses["loss_mlm"], golden["mlm_loss"])
