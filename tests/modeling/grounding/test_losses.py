"""Box coder, centerness targets, GIoU and token focal loss on hand-computed values."""

import math

import pytest
import torch

from fiber_det.modeling.grounding.anchors import GridAnchors
from fiber_det.modeling.grounding.atss import ATSSMatcher
from fiber_det.modeling.grounding.box_coder import (
    BoxCoder,
    continuous_to_plus_one,
    pairwise_iou_plus_one,
    plus_one_to_continuous,
)
from fiber_det.modeling.grounding.head import HeadOutputs
from fiber_det.modeling.grounding.losses import (
    GroundingLoss,
    centerness_targets,
    giou_loss,
    token_focal_loss,
)


def test_box_coder_hand_values_and_round_trip():
    coder = BoxCoder()
    anchor = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # width 10 in the +1 convention
    box = torch.tensor([[5.0, 0.0, 24.0, 9.0]])  # width 20, centre x 14.5 vs 4.5
    deltas = coder.encode(box, anchor)
    expected = torch.tensor([[10 * 10 / 10, 0.0, 5 * math.log(2.0), 0.0]])
    torch.testing.assert_close(deltas, expected)
    torch.testing.assert_close(coder.decode(deltas, anchor), box)
    huge = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchor)
    assert (huge[0, 2] - huge[0, 0] + 1).item() == pytest.approx(10 * 1000 / 16)  # dw clamped


def test_plus_one_iou_and_boundary_conversion():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    b = torch.tensor([[5.0, 0.0, 14.0, 9.0]])
    assert pairwise_iou_plus_one(a, b).item() == pytest.approx(50 / 150)
    continuous = torch.tensor([[1.0, 2.0, 11.0, 22.0]])
    plus_one = continuous_to_plus_one(continuous)
    assert plus_one.tolist() == [[1.0, 2.0, 10.0, 21.0]]
    assert torch.equal(plus_one_to_continuous(plus_one), continuous)


def test_centerness_target_hand_value():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # plain centre (5, 5)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # l = r = 5, t = 5, b = 15
    torch.testing.assert_close(centerness_targets(boxes, anchors), torch.tensor([(1 / 3) ** 0.5]))


def test_giou_loss_hand_values():
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    target = torch.tensor([[2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    # disjoint: IoU 0, hull 3, union 2 -> GIoU -1/3 -> loss 4/3 (weight 0.5); identical: 0.
    loss = giou_loss(pred, target, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(loss, torch.tensor(0.5 * 4 / 3))


def test_token_focal_loss_counts_real_tokens_only():
    logits = torch.zeros(1, 1, 3)
    targets = torch.tensor([[[1.0, 0.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0]])
    expected = math.log(2) * (0.25 * 0.25 + 0.25 * 0.75)  # positive + negative at p = 0.5
    torch.testing.assert_close(
        token_focal_loss(logits, targets, mask, 0.25, 2.0), torch.tensor(expected)
    )


def _outputs(batch: int, sizes: list[tuple[int, int]], tokens: int) -> HeadOutputs:
    return HeadOutputs(
        [torch.randn(batch, 4, h, w, requires_grad=True) for h, w in sizes],
        [torch.randn(batch, 1, h, w, requires_grad=True) for h, w in sizes],
        [torch.randn(batch, h * w, tokens, requires_grad=True) for h, w in sizes],
    )


def test_zero_boxes_give_finite_losses_and_gradients():
    sizes = [(8, 8), (4, 4)]
    anchors = GridAnchors([32, 64], [8, 16])(sizes)
    outputs = _outputs(2, sizes, 5)
    loss = GroundingLoss(ATSSMatcher(), BoxCoder())
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    losses = loss(outputs, anchors, [torch.zeros(0, 4)] * 2, [torch.zeros(0, 5)] * 2, mask)
    assert losses["loss_reg"].item() == 0 and losses["loss_centerness"].item() == 0
    assert torch.isfinite(losses["loss_dot_product_token"]) and losses["loss_dot_product_token"] > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(t.grad).all() for t in outputs.token_logits)
    assert torch.count_nonzero(outputs.token_logits[0].grad[0, :, 3:]) == 0  # padded tokens


def test_one_empty_image_in_a_batch():
    sizes = [(8, 8), (4, 4)]
    anchors = GridAnchors([32, 64], [8, 16])(sizes)
    loss = GroundingLoss(ATSSMatcher(), BoxCoder())
    boxes = [torch.tensor([[10.0, 12.0, 40.0, 50.0]]), torch.zeros(0, 4)]
    maps = [torch.tensor([[0.0, 1.0, 1.0, 0.0]]), torch.zeros(0, 4)]
    losses = loss(_outputs(2, sizes, 4), anchors, boxes, maps, torch.ones(2, 4))
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
