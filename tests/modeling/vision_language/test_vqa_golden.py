"""Golden parity of FiberVQAModel with the original VQA adapter (golden/README.md "Golden
outputs of the original FIBER coarse downstream adapters", fiber_small_vqa.pt, image 96 /
window 3), and the 64 -> 96 checkpoint adaptation through FiberCheckpointer."""

import json
from pathlib import Path

import pytest
import torch

from fiber_det.checkpoint import FiberCheckpointer, convert_coarse, save_converted_checkpoint
from fiber_det.config import get_fiber_cfg
from fiber_det.modeling.backbone.fiber import FiberTrunk
from fiber_det.modeling.vision_language.nlvr2_model import FiberNLVR2Model
from fiber_det.modeling.vision_language.vqa_model import FiberVQAModel, vqa_loss, vqa_soft_targets
from fiber_det.solver import build_param_groups
from tests.modeling.vision_language.test_pretrain_golden import build_small_coarse_model

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "coarse_grained"
# Released parameters fiber_det does not build: RoBERTa's pooler, the 6 never-applied
# crossattention_t2i.output.LayerNorm and the gates of the 6 unfused text layers (FIBER-B).
UNBUILT_PARAMETERS = 590_592 + 6 * 2 * 768 + 6
ATOL = 1e-4
LOSS_RTOL = 1e-5
TABLE = "relative_position_bias_table"

pytestmark = pytest.mark.usefixtures("one_thread")


def load_task_golden(reference_dir, task: str) -> dict:
    """fiber_small_<task>.pt with its full state dict rebuilt from fiber_small_coarse.pt."""
    folder = reference_dir / "golden"
    golden = torch.load(folder / f"fiber_small_{task}.pt", weights_only=True)
    coarse = torch.load(folder / "fiber_small_coarse.pt", weights_only=True)["state_dict"]
    golden["full_state_dict"] = {
        **{k: coarse[k] for k in golden["state_dict_from_coarse"]},
        **golden["state_dict"],
    }
    golden["coarse_state_dict"] = coarse
    return golden


def build_small_trunk(config: dict) -> FiberTrunk:
    """The golden small trunk (FIBER-B wiring) at the file's image size and window."""
    return build_small_coarse_model({**config, "mlm_head_layernorm_eps": 1e-12}).trunk


def build_small_vqa_model(config: dict) -> FiberVQAModel:
    return FiberVQAModel(
        trunk=build_small_trunk(config),
        hidden_size=config["hidden_size"],
        num_answers=config["vqav2_label_size"],
        pixel_mean=(0.0, 0.0, 0.0),
        pixel_std=(1.0, 1.0, 1.0),
    )


def fiber_b_task_model(reference_dir, config_name: str, task: str):
    """The FIBER-B task model of configs/coarse_grained/<config_name> on the meta device, its
    cfg, and the released key dump's variant of `task`."""
    cfg = get_fiber_cfg()
    cfg.merge_from_file(str(CONFIGS / config_name))
    dump = json.loads((reference_dir / "fiber_coarse_state_dict.json").read_text())
    model_class = {"vqa": FiberVQAModel, "nlvr2": FiberNLVR2Model}[task]
    with torch.device("meta"):
        model = model_class(cfg)
    return model, cfg, dump["downstream_variants"][f"task_finetune_{task}"]


def group_lrs(cfg, model) -> dict[str, float]:
    """{parameter name: lr} under the coarse param-group rules."""
    return {n: g["lr"] for g in build_param_groups(cfg, model) for n in g["param_names"]}


def load_converted(model: torch.nn.Module, state_dict: dict) -> None:
    """convert_coarse, then a strict load: nothing unconverted, missing or unexpected."""
    result = convert_coarse(state_dict)
    assert result.unconverted == []
    model.load_state_dict(result.state_dict, strict=True)


@pytest.fixture(scope="module")
def golden(reference_dir):
    return load_task_golden(reference_dir, "vqa")


@pytest.fixture(scope="module")
def model(golden):
    model = build_small_vqa_model(golden["config"]).eval()
    load_converted(model, golden["full_state_dict"])
    return model


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def _batch(golden: dict) -> list[dict]:
    """The golden questions as mapper dicts (unpadded: the model pads them again)."""
    lengths = golden["attention_mask"].sum(dim=1).tolist()
    return [
        {
            "image": golden["images"][i],
            "input_ids": golden["input_ids"][i, :length],
            "attention_mask": golden["attention_mask"][i, :length],
            "question_id": i,
            "vqa_labels": torch.tensor(golden["vqa_labels"][i]),
            "vqa_scores": torch.tensor(golden["vqa_scores"][i]),
        }
        for i, length in enumerate(lengths)
    ]


@torch.no_grad()
def test_fused_pass_head_targets_and_loss(model, golden):
    images, ids, mask = golden["images"], golden["input_ids"], golden["attention_mask"]
    prefix = model.trunk.encode_image_prefix(images)
    out = model.trunk.forward_fused(prefix, ids, mask)
    _close(out.text.hidden, golden["fused_text_tokens"])
    _close(out.image_tokens, golden["fused_image_tokens"])
    cls_feats = model.fused_features(prefix, ids, mask)["cls_feats"]
    _close(cls_feats, golden["cls_feats"])
    logits = model.vqa_logits(images, ids, mask)
    _close(logits, golden["vqa_logits"])
    targets = vqa_soft_targets(golden["vqa_labels"], golden["vqa_scores"], 20)
    assert torch.equal(targets, golden["vqa_targets"])
    torch.testing.assert_close(
        vqa_loss(logits, targets), golden["vqa_loss"], rtol=LOSS_RTOL, atol=0
    )


@torch.no_grad()
def test_detectron2_forward_matches_the_golden_logits_and_loss(model, golden):
    outputs = model(_batch(golden))
    _close(torch.stack([o["vqa_logits"] for o in outputs]), golden["vqa_logits"])
    model.train()
    model.trunk.eval()  # dropout / drop path off: the golden file ran in eval mode
    try:
        losses = model(_batch(golden))
    finally:
        model.eval()
    assert list(losses) == ["loss_vqa"]
    torch.testing.assert_close(losses["loss_vqa"], golden["vqa_loss"], rtol=LOSS_RTOL, atol=0)


def test_soft_targets_by_hand_and_bad_labels():
    targets = vqa_soft_targets([torch.tensor([2, 0]), torch.tensor([], dtype=torch.long)], [
        torch.tensor([0.3, 1.0]), torch.tensor([])
    ], 3)  # fmt: skip
    assert torch.equal(targets, torch.tensor([[1.0, 0.0, 0.3], [0.0, 0.0, 0.0]]))
    # BCE summed over answers, averaged over questions: one logit 0 vs target 1 -> ln 2 / 1.
    loss = vqa_loss(torch.tensor([[0.0, -1e4]]), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(loss, torch.tensor(0.6931472))
    with pytest.raises(ValueError, match=r"question 0: vqa_labels \[3\] outside \[0, 3\)"):
        vqa_soft_targets([[3]], [[1.0]], 3)
    with pytest.raises(ValueError, match="question 0: 2 vqa_labels but 1 vqa_scores"):
        vqa_soft_targets([[0, 1]], [[1.0]], 3)


def test_official_64px_checkpoint_adapts_to_96_as_the_original(golden, tmp_path):
    """The 64-px pre-training weights (the official layout), converted once, load into the
    96-px model: FiberCheckpointer resamples every Swin table exactly as the original's loader
    did."""
    pretrain_tables = golden["pretrain_relative_position_bias_tables"]
    coarse = golden["coarse_state_dict"]
    assert len(pretrain_tables) == 24
    for key, table in pretrain_tables.items():
        assert torch.equal(coarse[key], table)
    path = tmp_path / "pretrain_64.pth"
    save_converted_checkpoint(convert_coarse({"state_dict": coarse}).state_dict, str(path))
    model = build_small_vqa_model(golden["config"])
    FiberCheckpointer(model).load(str(path))
    expected = convert_coarse(golden["full_state_dict"]).state_dict
    ours = {k: v for k, v in model.state_dict().items() if k.endswith(TABLE)}
    assert sorted(ours) == sorted(k for k in expected if k.endswith(TABLE))
    for key, table in ours.items():
        assert table.shape == expected[key].shape == (25, table.shape[1])
        torch.testing.assert_close(table, expected[key], atol=1e-6, rtol=0)
    assert torch.equal(
        model.trunk.image_backbone.patch_embed.proj.weight,
        coarse["vit_model.patch_embed.proj.weight"],
    )


def test_fiber_b_config_builds_the_released_head_and_the_official_lr_groups(reference_dir):
    model, cfg, variant = fiber_b_task_model(reference_dir, "vqa.yaml", "vqa")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert {k: v for k, v in shapes.items() if k.startswith("vqa_classifier")} == variant[
        "added_keys"
    ]
    table = "trunk.image_backbone.layers.0.blocks.0.attn." + TABLE
    assert (
        shapes[table]
        == variant["reshaped_examples"]["vit_model.layers.0.blocks.0.attn." + TABLE][1]
    )
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == variant["total_params"] - UNBUILT_PARAMETERS
    lrs = group_lrs(cfg, model)
    assert lrs["vqa_classifier.3.weight"] == pytest.approx(2e-5 * 50)
    assert lrs["cross_modal_image_pooler.dense.weight"] == pytest.approx(2e-5 * 5)
    assert lrs["trunk.text_backbone.layers.6.t2i.gate"] == pytest.approx(2e-5 * 5)
    assert lrs["trunk.image_backbone.patch_embed.proj.weight"] == pytest.approx(2e-5)
