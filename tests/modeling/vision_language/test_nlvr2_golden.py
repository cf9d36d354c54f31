"""Golden parity of FiberNLVR2Model with the original NLVR2 adapter (golden/README.md,
fiber_small_nlvr2.pt, image 64): both fused passes, the concatenated features, logits, loss."""

import pytest
import torch
import torch.nn.functional as F

from fiber_det.modeling.vision_language.nlvr2_model import FiberNLVR2Model
from tests.modeling.vision_language.test_vqa_golden import (
    UNBUILT_PARAMETERS,
    build_small_trunk,
    fiber_b_task_model,
    group_lrs,
    load_converted,
    load_task_golden,
)

ATOL = 1e-4
LOSS_RTOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def golden(reference_dir):
    return load_task_golden(reference_dir, "nlvr2")


@pytest.fixture(scope="module")
def model(golden):
    config = golden["config"]
    model = FiberNLVR2Model(
        trunk=build_small_trunk(config),
        hidden_size=config["hidden_size"],
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(1.0, 1.0, 1.0),
    ).eval()
    load_converted(model, golden["full_state_dict"])
    return model


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def _batch(golden: dict) -> list[dict]:
    lengths = golden["attention_mask"].sum(dim=1).tolist()
    return [
        {
            "images": [golden["images_0"][i], golden["images_1"][i]],
            "input_ids": golden["input_ids"][i, :length],
            "attention_mask": golden["attention_mask"][i, :length],
            "identifier": f"pair-{i}",
            "label": int(golden["nlvr2_labels"][i]),
        }
        for i, length in enumerate(lengths)
    ]


@torch.no_grad()
def test_both_fused_passes_match(model, golden):
    ids, mask = golden["input_ids"], golden["attention_mask"]
    for side in (0, 1):
        prefix = model.trunk.encode_image_prefix(golden[f"images_{side}"])
        out = model.trunk.forward_fused(prefix, ids, mask)
        _close(out.text.hidden, golden[f"fused_text_tokens_{side}"])
        _close(out.image_tokens, golden[f"fused_image_tokens_{side}"])
        cls_feats = model.fused_features(prefix, ids, mask)["cls_feats"]
        _close(cls_feats, golden[f"cls_feats_{side}"])


@torch.no_grad()
def test_one_batched_pass_gives_the_pair_features_logits_and_loss(model, golden):
    images_0, images_1 = golden["images_0"], golden["images_1"]
    ids, mask = golden["input_ids"], golden["attention_mask"]
    _close(model.pair_cls_feats(images_0, images_1, ids, mask), golden["nlvr2_cls_feats"])
    logits = model.nlvr2_logits(images_0, images_1, ids, mask)
    _close(logits, golden["nlvr2_logits"])
    loss = F.cross_entropy(logits, golden["nlvr2_labels"])
    torch.testing.assert_close(loss, golden["nlvr2_loss"], rtol=LOSS_RTOL, atol=0)
    swapped = model.nlvr2_logits(images_1, images_0, ids, mask)
    assert (swapped - logits).abs().max() > 0.05  # the order of the two images matters


@torch.no_grad()
def test_detectron2_forward(model, golden):
    outputs = model(_batch(golden))
    _close(torch.stack([o["nlvr2_logits"] for o in outputs]), golden["nlvr2_logits"])
    model.train()
    model.trunk.eval()  # dropout / drop path off: the golden file ran in eval mode
    try:
        losses = model(_batch(golden))
        unlabelled = [{k: v for k, v in x.items() if k != "label"} for x in _batch(golden)]
        with pytest.raises(ValueError, match=r"without 'label': identifier \['pair-0', 'pair-1'"):
            model(unlabelled)
    finally:
        model.eval()
    assert list(losses) == ["loss_nlvr2"]
    torch.testing.assert_close(losses["loss_nlvr2"], golden["nlvr2_loss"], rtol=LOSS_RTOL, atol=0)


def test_fiber_b_config_builds_the_released_head_and_the_official_lr_groups(reference_dir):
    model, cfg, variant = fiber_b_task_model(reference_dir, "nlvr2.yaml", "nlvr2")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    head = {k: v for k, v in shapes.items() if k.startswith("nlvr2_classifier")}
    assert head == variant["added_keys"]
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == variant["total_params"] - UNBUILT_PARAMETERS
    lrs = group_lrs(cfg, model)
    assert lrs["nlvr2_classifier.0.weight"] == pytest.approx(2e-5 * 50)
    assert lrs["cross_modal_text_transform.weight"] == pytest.approx(2e-5 * 5)
    assert lrs["trunk.text_backbone.layers.0.attention.self.query.weight"] == pytest.approx(2e-5)
