"""Golden parity with the original FIBER head (../shared/reference/golden/fiber_small_head.pt)."""

import pytest
import torch

from fiber_det.checkpoint import convert_fine_head
from fiber_det.modeling.grounding.anchors import GridAnchors
from fiber_det.modeling.grounding.atss import ATSSMatcher
from fiber_det.modeling.grounding.box_coder import BoxCoder
from fiber_det.modeling.grounding.head import GroundingHead
from fiber_det.modeling.grounding.losses import GroundingLoss, centerness_targets


@pytest.fixture(scope="module")
def golden(reference_dir):
    return torch.load(reference_dir / "golden" / "fiber_small_head.pt", weights_only=True)


@pytest.fixture(scope="module")
def head(golden):
    cfg = golden["config"]
    model = GroundingHead(
        channels=cfg["channels"],
        num_levels=len(cfg["fpn_strides"]),
        text_dim=cfg["lang_dim"],
        num_blocks=cfg["num_convs"],
        gn_groups=cfg["gn_groups"],
    )
    converted = convert_fine_head(golden["state_dict"])
    assert not converted.unconverted
    assert sorted(converted.dropped) == sorted(
        [f"rpn.anchor_generator.cell_anchors.{i}" for i in range(5)]
        + ["rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias"]
    )
    state = {k.removeprefix("head."): v for k, v in converted.state_dict.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def outputs(head, golden):
    with torch.no_grad():
        return head(golden["fpn_features"], golden["text_embedded"])


@pytest.mark.parametrize("name", ["box_regression", "centerness", "token_logits"])
def test_head_outputs_match_original(outputs, golden, name):
    expected = golden["dot_product_logits" if name == "token_logits" else name]
    for ours, theirs in zip(getattr(outputs, name), expected):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_anchors_match_original(golden):
    cfg = golden["config"]
    sizes = [tuple(f.shape[-2:]) for f in golden["fpn_features"]]
    anchors = GridAnchors(cfg["anchor_sizes"], cfg["fpn_strides"])(sizes)
    assert [len(a) for a in anchors] == golden["num_anchors_per_level"]
    torch.testing.assert_close(torch.cat(anchors), golden["anchors"], atol=0, rtol=0)
    for level in range(5):
        cell = golden["state_dict"][f"rpn.anchor_generator.cell_anchors.{level}"][0]
        torch.testing.assert_close(
            GridAnchors(cfg["anchor_sizes"], cfg["fpn_strides"]).cell_anchor(level), cell
        )


def test_atss_assignment_and_losses_match_original(head, golden):
    cfg = golden["config"]
    sizes = [tuple(f.shape[-2:]) for f in golden["fpn_features"]]
    anchors = GridAnchors(cfg["anchor_sizes"], cfg["fpn_strides"])(sizes)
    loss = GroundingLoss(ATSSMatcher(cfg["atss_topk"]), BoxCoder(), 0.25, 2.0, 2.0)
    counts = [len(b) for b in golden["gt_boxes"]]
    maps = list(golden["positive_map"].split(counts))
    matched, token_targets, matched_boxes = loss.targets(anchors, golden["gt_boxes"], maps)
    assert torch.equal(matched, golden["atss_matched_gt"])
    positive_anchors = torch.cat(anchors).expand(2, -1, -1)[matched >= 0]
    deltas = BoxCoder().encode(matched_boxes[matched >= 0], positive_anchors)
    torch.testing.assert_close(deltas, golden["reg_targets_pos"], atol=1e-5, rtol=0)
    centerness = centerness_targets(BoxCoder().decode(deltas, positive_anchors), positive_anchors)
    torch.testing.assert_close(centerness, golden["centerness_targets_pos"], atol=1e-6, rtol=0)
    assert int((matched >= 0).sum()) == golden["num_pos"] == 45
    real = golden["text_masks"].bool()[:, None, :].expand_as(token_targets)
    assert torch.equal(token_targets[real], golden["token_labels"][real])
    head.train()
    try:
        outputs = head(golden["fpn_features"], golden["text_embedded"])
    finally:
        head.eval()
    losses = loss(outputs, anchors, golden["gt_boxes"], maps, golden["text_masks"])
    for name in ("loss_reg", "loss_centerness", "loss_dot_product_token"):
        torch.testing.assert_close(losses[name], golden[name], rtol=1e-5, atol=0)
