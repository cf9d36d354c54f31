"""ITC loss, hard-negative sampling, the feature queue and the heads of the coarse stage."""

import math

import pytest
import torch

from fiber_det.modeling.vision_language.pretrain_heads import (
    FeatureQueue,
    ITMHead,
    MLMHead,
    Pooler,
    contrastive_logits,
    contrastive_loss,
    gather_keep_local_grad,
    same_image_mask,
    sample_hard_negatives,
    scale_grad,
)


def test_itc_equals_hand_computed_symmetric_cross_entropy():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    logits_i2t, logits_t2i = contrastive_logits(image, text, torch.tensor(0.5))
    assert logits_i2t.flatten().tolist() == pytest.approx([1.2, 0.0, 1.6, 2.0])
    assert torch.equal(logits_t2i, logits_i2t.t())
    i2t = [
        -math.log(math.exp(1.2) / (math.exp(1.2) + 1)),
        -math.log(math.exp(2) / (math.exp(1.6) + math.exp(2))),
    ]
    t2i = [
        -math.log(math.exp(1.2) / (math.exp(1.2) + math.exp(1.6))),
        -math.log(math.exp(2) / (1 + math.exp(2))),
    ]
    expected = (sum(i2t) / 2 + sum(t2i) / 2) / 2
    assert contrastive_loss(logits_i2t, logits_t2i).item() == pytest.approx(expected, rel=1e-6)


def test_queue_columns_follow_the_batch():
    image, text = torch.eye(2), torch.eye(2)
    queue_image, queue_text = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    logits_i2t, logits_t2i = contrastive_logits(
        image, text, torch.tensor(1.0), queue_image, queue_text
    )
    assert logits_i2t.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    assert logits_t2i.tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]


def test_hard_negatives_never_positive_nor_same_image_and_follow_weights():
    image_ids = torch.tensor([0, 0, 1, 2, 3])
    forbidden = same_image_mask(image_ids, image_ids)
    logits = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).expand(5, 5).clone()
    generator = torch.Generator().manual_seed(0)
    draws = sample_hard_negatives(logits.repeat(4000, 1), forbidden.repeat(4000, 1), generator)
    draws = draws.view(4000, 5)
    assert not forbidden.gather(1, draws.t()).any()
    # row 0 (image 0) may draw columns 2, 3, 4 with weights 3 : 4 : 5
    counts = torch.bincount(draws[:, 0], minlength=5).float() / draws.shape[0]
    assert counts[:2].tolist() == [0.0, 0.0]
    assert counts[2:].tolist() == pytest.approx([3 / 12, 4 / 12, 5 / 12], abs=0.025)
    # row 2 (image 1): columns 0, 1, 3, 4 with weights 1 : 2 : 4 : 5
    counts = torch.bincount(draws[:, 2], minlength=5).float() / draws.shape[0]
    assert counts.tolist() == pytest.approx([1 / 12, 2 / 12, 0.0, 4 / 12, 5 / 12], abs=0.025)


def test_hard_negatives_survive_underflow_and_reject_single_image_batches():
    forbidden = torch.eye(3, dtype=torch.bool)
    logits = torch.tensor([[0.0, -1e4, -1e4], [-1e4, 0.0, -1e4], [-1e4, -1e4, 0.0]])
    draws = sample_hard_negatives(logits, forbidden)
    assert not forbidden.gather(1, draws[:, None]).any()
    with pytest.raises(ValueError, match="two different images"):
        sample_hard_negatives(logits, torch.ones(3, 3, dtype=torch.bool))


def test_single_process_gather_is_identity():
    features = torch.randn(3, 4, requires_grad=True)
    gathered, offset = gather_keep_local_grad(features)
    assert gathered is features and offset == 0
    scaled = scale_grad(features, 3.0)
    assert torch.equal(scaled, features)
    scaled.sum().backward()
    assert features.grad.eq(3.0).all()


def test_feature_queue_fills_then_wraps():
    queue = FeatureQueue(size=4, dim=2)
    assert [t.shape[0] for t in queue.contents()] == [0, 0, 0]
    queue.enqueue(torch.ones(3, 2), torch.ones(3, 2) * 2, torch.tensor([1, 2, 3]))
    image, text, ids = queue.contents()
    assert ids.tolist() == [1, 2, 3] and text[:, 0].tolist() == [2, 2, 2]
    queue.enqueue(torch.zeros(3, 2), torch.zeros(3, 2), torch.tensor([4, 5, 6]))
    image, _, ids = queue.contents()
    assert ids.tolist() == [5, 6, 3, 4] and int(queue.pointer) == 2
    assert image[:, 0].tolist() == [0, 0, 1, 0]
    state = queue.state_dict()
    assert set(state) == {"image_feats", "text_feats", "image_ids", "pointer", "filled"}


def test_heads_shapes_and_names():
    pooler, itm, mlm = Pooler(4), ITMHead(8), MLMHead(4, 11)
    assert pooler(torch.zeros(2, 4)).shape == (2, 4)
    assert torch.equal(pooler(torch.zeros(1, 4)), torch.tanh(pooler.dense.bias)[None])
    assert itm(torch.zeros(2, 8)).shape == (2, 2)
    assert mlm(torch.zeros(2, 3, 4)).shape == (2, 3, 11)
    assert mlm.transform.LayerNorm.eps == 1e-12
    assert set(dict(mlm.named_parameters())) == {
        "bias",
        "transform.dense.weight",
        "transform.dense.bias",
        "transform.LayerNorm.weight",
        "transform.LayerNorm.bias",
        "decoder.weight",
    }
