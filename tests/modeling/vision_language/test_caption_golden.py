"""Golden parity with the original caption model (golden/README.md, `fiber_small_caption.pt`):
converted weights (coarse + difference), image 96 / window 3, every stored tensor, the MLE loss
and the 8-step greedy decode, with and without the key/value cache."""

import json

import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY

from fiber_det.checkpoint import convert_coarse
from fiber_det.config import get_fiber_cfg
from fiber_det.modeling.backbone.roberta import causal_attention_bias
from fiber_det.modeling.vision_language.beam_search import beam_search
from fiber_det.modeling.vision_language.caption_model import FiberCaptionModel, caption_targets
from tests.conftest import REPO_ROOT
from tests.modeling.vision_language.test_pretrain_golden import build_small_coarse_model

ATOL = 1e-4
LOSS_RTOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def golden(reference_dir):
    return torch.load(reference_dir / "golden" / "fiber_small_caption.pt", weights_only=True)


@pytest.fixture(scope="module")
def model(golden, reference_dir):
    coarse = torch.load(reference_dir / "golden" / "fiber_small_coarse.pt", weights_only=True)
    state_dict = {k: coarse["state_dict"][k] for k in golden["state_dict_from_coarse"]}
    state_dict.update(golden["state_dict"])
    config = golden["config"]
    torch.manual_seed(0)
    model = FiberCaptionModel(
        trunk=build_small_coarse_model(config).trunk,
        hidden_size=config["hidden_size"],
        vocab_size=config["text"]["vocab_size"],
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(1.0, 1.0, 1.0),
        mask_token_id=config["text"]["mask_token_id"],
        mlm_head_eps=config["mlm_head_layernorm_eps"],
        beam_size=1,
        max_length=config["greedy"]["max_text_len_during_decode"],
    ).eval()
    result = convert_coarse(state_dict)
    assert result.unconverted == []
    missing, unexpected = model.load_state_dict(result.state_dict, strict=False)
    assert (missing, unexpected) == ([], [])
    return model


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_schedule_of_the_small_model(model):
    """Text layers 6-9 pair with stage 3 (index 2), 10-11 with stage 4; ten projections."""
    assert model.layer_stages == {6: 2, 7: 2, 8: 2, 9: 2, 10: 3, 11: 3}
    assert len(model.cross_modal_att_layers) == 10
    assert model.special_ids == {"bos": 0, "eos": 2, "pad": 1, "mask": 999}


@torch.no_grad()
def test_teacher_forced_path(model, golden):
    images, ids, mask = golden["images"], golden["input_ids"], golden["attention_mask"]
    image_tokens = model.trunk(images, fuse=False).image_tokens
    _close(image_tokens, golden["caption_image_embeds"])
    contexts = model.image_contexts(image_tokens)
    for layer, expected in zip(range(6, 10), golden["caption_image_kv_layers_6_9"], strict=True):
        _close(contexts[layer], expected)
    assert contexts[10] is image_tokens and contexts[11] is image_tokens
    # layer by layer, as the trunk's decode_text runs them
    text = model.trunk.text_backbone
    image_key_values = model.encode_images(images)
    hidden = text.embed(ids)
    bias = causal_attention_bias(mask, ids.shape[1], ids.shape[1], hidden.dtype)
    for index, expected in enumerate(golden["caption_text_layer_outputs"]):
        hidden, _ = text.layers[index].decode(hidden, bias, None, image_key_values[index])
        _close(hidden, expected)
    text_feats = model.cross_modal_text_transform(hidden)
    _close(text_feats, golden["caption_text_feats"])
    logits = model.caption_logits(images, ids, mask)
    _close(logits, golden["caption_logits"])
    assert torch.equal(caption_targets(ids, 1), golden["caption_labels"])
    loss = model.mle_loss(logits, ids)
    torch.testing.assert_close(loss, golden["caption_loss"], rtol=LOSS_RTOL, atol=0)


@torch.no_grad()
def test_padding_part_of_the_decoder_mask_matters(model, golden):
    """Without the finfo.min on padded keys the logits at padded positions move (README)."""
    images, ids, mask = golden["images"], golden["input_ids"], golden["attention_mask"]
    unpadded = model.caption_logits(images, ids, torch.ones_like(mask))
    real = mask.bool()
    _close(unpadded[real], golden["caption_logits"][real])
    assert (unpadded[~real] - golden["caption_logits"][~real]).abs().max() > 0.05


@pytest.mark.parametrize("cached", [True, False])
@torch.no_grad()
def test_greedy_decode_and_step_logits(model, golden, cached):
    state = {"image": model.encode_images(golden["images"]), "cache": None}
    step = model.decoding_step(cached)
    ids = torch.zeros(2, 1, dtype=torch.long)
    for position in range(golden["greedy_steps"]):
        logits, state = step(ids, state)
        _close(logits, golden["greedy_step_logits"][position])
        ids = torch.cat([ids, golden["greedy_raw_ids"][:, position : position + 1]], dim=1)
    if cached:
        assert state["cache"][0][0].shape[2] == golden["greedy_steps"]
    decoded = model.generate(golden["images"], beam_size=1, cached=cached).sequences
    assert torch.equal(decoded, golden["greedy_raw_ids"])
    start = {"image": model.encode_images(golden["images"]), "cache": None}
    one_beam = beam_search(step, ids[:, :1], start, beam_size=1, **model.decode_options())
    assert torch.equal(one_beam.sequences, golden["greedy_raw_ids"])


@torch.no_grad()
def test_eval_forward_returns_caption_ids(model, golden):
    """The detectron2 entry point (pixel mean 0 / std 1: the stored images pass unchanged)."""
    outputs = model([{"image": image} for image in golden["images"]])
    assert [o["caption_ids"].tolist() for o in outputs] == golden["greedy_raw_ids"].tolist()


def test_fiber_b_caption_model_takes_the_released_layout(reference_dir):
    """configs/coarse_grained/caption_mle_coco.yaml (576 px) on the meta device: the released
    caption model's keys (pre-training keys + `downstream_variants`) convert onto it, position
    tables resampled to window 18; what the converter drops is the original's dead weight."""
    reference = json.loads((reference_dir / "fiber_coarse_state_dict.json").read_text())
    variant = reference["downstream_variants"]["task_finetune_caption_mle_coco"]
    shapes = {**reference["params"], **reference["buffers"], **variant["added_keys"]}
    release = {
        key: torch.empty(shape, device="meta")
        for key, shape in shapes.items()
        if key not in variant["removed_keys_grouped"]
    }
    cfg = get_fiber_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "coarse_grained" / "caption_mle_coco.yaml"))
    with torch.device("meta"):
        model = META_ARCH_REGISTRY.get("FiberCaptionModel")(cfg)
    result = convert_coarse(release, window_size=18)
    assert result.unconverted == []
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = {k: tuple(v.shape) for k, v in result.state_dict.items()}
    missing = set(ours) - set(converted)
    assert all(k.endswith(("relative_position_index", "attn_mask")) for k in missing), missing
    assert converted.keys() <= ours.keys()
    assert all(converted[k] == ours[k] for k in converted)
    dead = 768 * 768 + 768 + 6 * 2 * 768 + 6  # text pooler, t2i output LayerNorms, 6 gates
    assert sum(p.numel() for p in model.parameters()) == variant["total_params"] - dead
