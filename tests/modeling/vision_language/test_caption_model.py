"""FiberCaptionModel on a tiny config: schedule, causal decoder, cache = no cache, MLE loss,
eval output, and the CIDEr-optimisation losses on hand-made rewards."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from fiber_det.config import add_fiber_config
from fiber_det.modeling.backbone.roberta import causal_attention_bias
from fiber_det.modeling.vision_language.caption_model import (
    FiberCaptionModel,
    caption_targets,
    projection_widths,
)
from fiber_det.modeling.vision_language.caption_rewards import TokenCiderReward, reinforce_loss
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, MASK = 60, 4


def tiny_caption_cfg(**caption):
    """tiny.yaml with depths (1, 1, 2, 1) and 3 fused layers: text layers 1-2 pair with stage 3
    (index 2, through projections), layer 3 with the last stage; 64 px."""
    cfg = get_cfg()
    add_fiber_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "coarse_grained" / "tiny.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "FiberCaptionModel"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.FIBER.SWIN.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.FIBER.SWIN.WINDOW_SIZE = 2
    cfg.MODEL.FIBER.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.FIBER.TEXT.VOCAB_SIZE = VOCAB
    cfg.MODEL.FIBER.TEXT.DROPOUT = 0.0
    cfg.MODEL.FIBER.TEXT.MAX_POSITION_EMBEDDINGS = 40
    cfg.MODEL.FIBER.FUSION.NUM_LAYERS = 3
    cfg.MODEL.PRETRAIN.IMAGE_SIZE = 64
    cfg.MODEL.PRETRAIN.CAPTION.MASK_TOKEN_ID = MASK
    cfg.MODEL.PRETRAIN.CAPTION.MAX_LENGTH = 12
    cfg.MODEL.PRETRAIN.CAPTION.BEAM_SIZE = 3
    for key, value in caption.items():
        cfg.MODEL.PRETRAIN.CAPTION[key] = value
    return cfg


def build_tiny(**caption) -> FiberCaptionModel:
    """Random weights with open t2i gates, so the image changes the captions."""
    torch.manual_seed(0)
    model = build_model(tiny_caption_cfg(**caption))
    with torch.no_grad():
        for layer in model.trunk.text_backbone.layers:
            if layer.t2i is not None:
                layer.t2i.gate.fill_(1.0)
        model.mlm_score.decoder.weight.normal_(std=1.0)  # peaked next-token distributions
    return model


@pytest.fixture(scope="module")
def model():
    return build_tiny().eval()


def _images(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 64, 64), generator=generator).byte() for _ in range(count)]


def test_schedule_and_projections(model):
    assert isinstance(model, FiberCaptionModel)
    assert model.layer_stages == {1: 2, 2: 2, 3: 3}
    # index 0 lies below the first fused layer: unused, as the original's 0-5
    assert [(p.in_features, p.out_features) for p in model.cross_modal_att_layers] == [
        (256, 128)
    ] * 3
    assert model.special_ids == {"bos": 0, "eos": 2, "pad": 1, "mask": MASK}
    tokens = torch.randn(2, 4, 256)
    contexts = model.image_contexts(tokens)
    assert set(contexts) == {1, 2, 3} and contexts[3] is tokens
    torch.testing.assert_close(contexts[2], model.cross_modal_att_layers[2](tokens))
    with pytest.raises(ValueError, match="caption objective"):
        build_model(tiny_caption_cfg(OBJECTIVE="gold"))


def test_projection_widths_of_fiber_b_and_without_earlier_stages():
    """FIBER-B: text layers 6-9 on stage 3 (512), 10-11 on stage 4: ten Linear 1024 -> 512, as
    the released caption checkpoint; no projection when every fused layer reads the last stage."""
    fiber_b = {6: 2, 7: 2, 8: 2, 9: 2, 10: 3, 11: 3}
    assert projection_widths(fiber_b, [128, 256, 512, 1024]) == [512] * 10
    assert projection_widths({2: 3, 3: 3}, [32, 64, 128, 256]) == []
    assert projection_widths({1: 1, 2: 2, 3: 3}, [8, 16, 32, 64]) == [16, 16, 32]


def test_causal_attention_bias_hand_values():
    """-inf above the diagonal plus finfo.min on padded keys; with a cache the T new queries
    sit at the last T positions."""
    low, inf = torch.finfo(torch.float32).min, float("inf")
    plain = causal_attention_bias(None, 3, 3, torch.float32)
    assert plain.tolist() == [[[[0.0, -inf, -inf], [0.0, 0.0, -inf], [0.0, 0.0, 0.0]]]]
    padded = causal_attention_bias(torch.tensor([[1, 1, 0]]), 2, 3, torch.float32)
    assert padded.tolist() == [[[[0.0, 0.0, -inf], [0.0, 0.0, low]]]]
    with pytest.raises(ValueError, match="covers 2 tokens, the decoder 3"):
        causal_attention_bias(torch.ones(1, 2), 1, 3, torch.float32)


@torch.no_grad()
def test_decoder_is_causal_and_padding_free(model):
    images = model.normalize_images(_images(2))
    ids = torch.tensor([[0, 7, 9, 11, 13, 2], [0, 8, 10, 2, 1, 1]])
    mask = (ids != 1).long()
    logits = model.caption_logits(images, ids, mask)
    changed = ids.clone()
    changed[0, 4] = 20
    later = model.caption_logits(images, changed, mask)
    torch.testing.assert_close(later[0, :4], logits[0, :4])
    assert (later[0, 4:] - logits[0, 4:]).abs().max() > 1e-3
    alone = model.caption_logits(images[1:], ids[1:, :4], mask[1:, :4])
    torch.testing.assert_close(alone[0], logits[1, :4], atol=1e-5, rtol=1e-5)
    other_image = model.caption_logits(images.flip(0), ids, mask)
    assert (other_image - logits).abs().max() > 1e-2  # the image matters


def test_mle_loss_and_training_forward():
    model = build_tiny().train()
    images = _images(2)
    texts = [torch.tensor([0, 7, 9, 11, 2]), torch.tensor([0, 8, 2])]
    batch = [
        {"image": im, "input_ids": t, "attention_mask": torch.ones_like(t)}
        for im, t in zip(images, texts, strict=True)
    ]
    losses = model(batch)
    assert set(losses) == {"loss_caption"}
    assert caption_targets(torch.tensor([[0, 8, 2, 1, 1]]), 1).tolist() == [
        [8, 2, -100, -100, -100]
    ]
    with torch.no_grad():
        normalized = model.normalize_images(images)
        per_image = [
            F.cross_entropy(
                model.caption_logits(normalized[i : i + 1], t[None], None)[0, :-1], t[1:]
            )
            for i, t in enumerate(texts)
        ]
    expected = (4 * per_image[0] + 2 * per_image[1]) / 6  # mean over the 6 real targets
    torch.testing.assert_close(losses["loss_caption"].detach(), expected, atol=1e-5, rtol=1e-5)
    losses["loss_caption"].backward()
    grad = model.cross_modal_att_layers[2].weight.grad.clone()
    assert grad.abs().sum() > 0
    assert model.cross_modal_att_layers[0].weight.grad is None  # unused, as the original's
    model.zero_grad()
    model.trunk.text_backbone.use_checkpoint = True  # activation checkpointing: same gradients
    model(batch)["loss_caption"].backward()
    torch.testing.assert_close(model.cross_modal_att_layers[2].weight.grad, grad)


@torch.no_grad()
def test_cached_decoding_equals_uncached(model):
    images = model.normalize_images(_images(3, seed=1))
    for beam_size in (1, 3):
        cached = model.generate(images, beam_size=beam_size, cached=True)
        plain = model.generate(images, beam_size=beam_size, cached=False)
        assert torch.equal(cached.sequences, plain.sequences)
        torch.testing.assert_close(cached.scores, plain.scores, atol=1e-5, rtol=1e-5)
        assert not (cached.sequences == MASK).any()
    assert len({tuple(s.tolist()) for s in cached.sequences}) > 1  # captions depend on the image


@torch.no_grad()
def test_eval_forward_and_strip(model):
    outputs = model([{"image": im} for im in _images(2, seed=1)])
    expected = model.generate(model.normalize_images(_images(2, seed=1))).sequences
    for output, sequence in zip(outputs, expected, strict=True):
        assert torch.equal(output["caption_ids"], model.strip_caption(sequence))
    assert model.strip_caption(torch.tensor([5, 0, 6, 2, 1, 1])).tolist() == [5, 6]
    assert model.strip_caption(torch.tensor([5, 6, 1, 1])).tolist() == [5, 6]
    assert model.strip_caption(torch.tensor([5, 6, 7])).tolist() == [5, 6, 7]


def test_reinforce_loss_hand_values():
    """One image, two samples with mean log-probs -1 and -2, CIDEr 1.5 and 0.5, baseline 1:
    (-1)(100 - 150) + (-2)(100 - 50) = 50 - 100 = -50; the better sample's log-prob goes up."""
    mean_log_probs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss = reinforce_loss(mean_log_probs, torch.tensor([[1.5, 0.5]]), 1.0)
    assert loss.item() == pytest.approx(-50.0)
    loss.backward()
    assert mean_log_probs.grad.tolist() == [[-50.0, 50.0]]  # descent raises sample 0, lowers 1
    scst = reinforce_loss(mean_log_probs, torch.tensor([[1.5, 0.5]]), torch.tensor([[0.5, 0.5]]))
    assert scst.item() == pytest.approx(100.0)  # (-1)(50 - 150) + (-2)(50 - 50)
    with pytest.raises(ValueError, match="must both be"):
        reinforce_loss(mean_log_probs, torch.ones(2), 1.0)


def test_token_cider_reward():
    """Two images sharing only </s> (idf 0): every other n-gram has idf log 2, so a caption
    equal to its 4-token reference scores 10 at every order, and one sharing only </s> 0."""
    reward = TokenCiderReward([[[0, 5, 6, 9, 2]], [[0, 7, 8, 2]]], end_id=2, drop_ids=(0, 1))
    assert reward.words(torch.tensor([0, 5, 6, 2, 1])) == "5 6 2"
    assert reward.words([5, 6]) == "5 6 2"
    scores = reward([[5, 6, 9, 2], [5, 6]], [[[0, 5, 6, 9, 2]], [[0, 7, 8, 2]]])
    assert scores == pytest.approx([10.0, 0.0])
    # 3 tokens have no 4-gram: 10 * (1 + 1 + 1 + 0) / 4, the reference's length penalty 1
    assert reward([[7, 8]], [[[7, 8, 2]]]) == pytest.approx([7.5])


@pytest.mark.parametrize("objective", ["cider_reinforce", "cider_scst"])
def test_cider_training_on_recorded_rewards(objective):
    """The RL loss equals reinforce_loss on the model's own re-scored samples and rewards."""
    model = build_tiny(OBJECTIVE=objective, NUM_SAMPLES=3).train()
    calls = []

    def reward(candidates, references):
        calls.append((candidates, references))
        return [1.0 + 0.1 * len(c) - 0.05 * i for i, c in enumerate(candidates)]

    model.set_caption_reward(reward)
    texts = [torch.tensor([0, 7, 9, 2]), torch.tensor([0, 8, 2])]
    batch = [
        {"image": im, "input_ids": t, "attention_mask": torch.ones_like(t), "reference_ids": [t]}
        for im, t in zip(_images(2), texts, strict=True)
    ]
    torch.manual_seed(3)
    losses = model(batch)
    assert set(losses) == {"loss_caption", "loss_caption_rl"}
    samples = torch.tensor([[*c, *[1] * (11 - len(c))] for c in calls[0][0]])
    assert (
        samples.shape == (6, 11)
        and calls[0][1][0] == [[0, 7, 9, 2]]
        and calls[0][1][3] == [[0, 8, 2]]
    )
    assert len(calls) == (2 if objective == "cider_scst" else 1)
    rewards = torch.tensor(reward(calls[0][0], calls[0][1])).view(2, 3)
    baseline = 1.0
    if objective == "cider_scst":
        baseline = torch.tensor(reward(calls[1][0], calls[1][1]))[:, None].expand(2, 3)
    with torch.no_grad():
        image_kv = model.encode_images(model.normalize_images([b["image"] for b in batch]))
        repeated = [
            None if kv is None else tuple(t.repeat_interleave(3, 0) for t in kv) for kv in image_kv
        ]
        mean_log_probs = model.sample_mean_log_probs(repeated, samples).view(2, 3)
    expected = 0.7 * reinforce_loss(mean_log_probs, rewards, baseline)
    torch.testing.assert_close(losses["loss_caption_rl"].detach(), expected, atol=1e-4, rtol=1e-5)
    (losses["loss_caption"] + losses["loss_caption_rl"]).backward()
    assert model.mlm_score.decoder.weight.grad.abs().sum() > 0


def test_sample_log_probs_hand_check(model):
    """Mean log-probability over the tokens up to and including the end token."""
    with torch.no_grad():
        image_kv = model.encode_images(model.normalize_images(_images(1)))
        samples = torch.tensor([[7, 9, 2, 1]])
        logits = model.caption_logits(
            model.normalize_images(_images(1)), torch.tensor([[0, 7, 9, 2]]), None
        )
        log_probs = torch.log(logits.softmax(-1) + 1e-9)[0]
        expected = (log_probs[0, 7] + log_probs[1, 9] + log_probs[2, 2]) / 3
        torch.testing.assert_close(model.sample_mean_log_probs(image_kv, samples)[0], expected)


def test_fallback_reward_needs_two_images():
    model = build_tiny(OBJECTIVE="cider_reinforce").train()
    text = torch.tensor([0, 7, 2])
    batch = [{"image": _images(1)[0], "input_ids": text, "attention_mask": torch.ones_like(text),
              "reference_ids": [text]}]  # fmt: skip
    with pytest.raises(ValueError, match="at least 2 images"):
        model(batch)
