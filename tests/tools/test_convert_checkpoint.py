"""tools/convert_checkpoint.py and fiber_det.checkpoint's official-file functions: the released
key dumps convert and load strictly, bad checkpoints fail naming each key, the golden small trunk
converts through the tool and reproduces the original's outputs, --verify prints detections.

A fake released checkpoint gives every tensor its key's index broadcast to the key's shape
(4 bytes of storage each), so the 252M-parameter FIBER-B file costs kilobytes and every
converted tensor says which official key it came from.
"""

import argparse
import importlib.util
import json
import pickle
import re

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from fiber_det.checkpoint import (
    detect_official_format,
    load_official_state_dict,
    save_converted_checkpoint,
    unwrap_official_checkpoint,
)
from fiber_det.config import get_fiber_cfg
from fiber_det.data.tokenizer import train_byte_level_bpe
from tests.conftest import REPO_ROOT
from tests.modeling.backbone.test_golden import TOLERANCE, _small_cfg

spec = importlib.util.spec_from_file_location(
    "convert_checkpoint", REPO_ROOT / "tools" / "convert_checkpoint.py"
)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

FINE_SPOT_CHECKS = {
    "fusion_backbone.backbone.body.layers.2.blocks.14.attn.alpha_i2t": (
        "backbone.trunk.image_backbone.layers.2.blocks.14.i2t.gate"
    ),
    "fusion_backbone.language_backbone.body.model.encoder.layer.6.crossattention_t2i.self.key"
    ".weight": "backbone.trunk.text_backbone.layers.6.t2i.key.weight",
    "fusion_backbone.backbone.fpn.top_blocks.p6.weight": "backbone.fpn.top_block.p6.weight",
    "rpn.head.dyhead_tower.5.offset.weight": "head.tower.blocks.5.offset.weight",
    "rpn.head.bias0": "head.bias0",
}


def _fake_checkpoint(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """{key: index of the key, broadcast to its shape} (float32, one element of storage)."""
    return {k: torch.full((), float(i)).expand(s) for i, (k, s) in enumerate(shapes.items())}


def _source_index(tensor: torch.Tensor) -> int:
    return int(tensor.reshape(-1)[0]) if tensor.numel() else -1


def _config(path, *opts):
    """A fiber_det config from `path` (relative to the repository or absolute) and overrides."""
    cfg = get_fiber_cfg()
    cfg.merge_from_file(str(REPO_ROOT / path))
    cfg.merge_from_list(list(opts))
    return cfg


def _meta_model(cfg):
    cfg = cfg.clone()
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


@pytest.fixture(scope="module")
def fine_release(reference_dir) -> dict[str, torch.Tensor]:
    dump = json.loads((reference_dir / "fiber_fine_grained_state_dict.json").read_text())
    return _fake_checkpoint({**dump["params"], **dump["buffers"]})


@pytest.fixture(scope="module")
def coarse_dump(reference_dir) -> dict:
    return json.loads((reference_dir / "fiber_coarse_state_dict.json").read_text())


# detectron2's checkpointer copies into the meta-device model (a no-op); values are checked below
@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")
def test_fine_release_converts_and_loads_strictly_into_fiber_b(fine_release, tmp_path):
    official = tmp_path / "fiber_coco.pth"
    wrapped = {f"module.{k}": v for k, v in fine_release.items()}
    torch.save({"model": wrapped, "iteration": 7}, official)
    assert tool.main([str(official), str(tmp_path / "out.pth"), "--format", "fine"]) == 0
    converted = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    indices = {k: i for i, k in enumerate(fine_release)}
    for old, new in FINE_SPOT_CHECKS.items():
        assert _source_index(converted[new]) == indices[old], new
    # dropped: 24 relative_position_index, position_ids, 5 anchor buffers, 2 cls_logits
    assert len(converted) == len(fine_release) - 32
    model = _meta_model(_config("configs/fine_grained/fiber_b.yaml"))
    reports = []
    checkpointer = DetectionCheckpointer(model)
    checkpointer._log_incompatible_keys = reports.append
    checkpointer.load(str(tmp_path / "out.pth"))
    assert reports[0].missing_keys == reports[0].unexpected_keys == []
    assert reports[0].incorrect_shapes == []
    model.load_state_dict(converted, strict=True, assign=True)
    state = model.state_dict()
    assert all(_source_index(state[k]) == _source_index(v) for k, v in converted.items())


def test_bad_checkpoints_fail_naming_each_key(fine_release, tmp_path, capsys):
    broken = dict(fine_release)
    del broken["rpn.head.bias0"]
    broken["rpn.head.extra_gate"] = torch.zeros(1)
    broken["fusion_backbone.backbone.fpn.top_blocks.p6.weight"] = torch.zeros(256, 256, 1, 1)
    torch.save({"model": broken}, tmp_path / "broken.pth")
    out = tmp_path / "out.pth"
    assert tool.main([str(tmp_path / "broken.pth"), str(out), "--format", "fine"]) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "broken.pth"]
    errors = capsys.readouterr().err
    assert "unconverted (no rename rule): 'rpn.head.extra_gate'" in errors
    assert "missing (the model has it, the checkpoint does not): 'head.bias0'" in errors
    assert (
        "wrong shape: 'backbone.fpn.top_block.p6.weight' (from "
        "'fusion_backbone.backbone.fpn.top_blocks.p6.weight') is [256, 256, 1, 1] in the "
        "checkpoint, [256, 256, 3, 3] in the model"
    ) in errors
    assert len(re.findall(r"^  (unconverted|missing|unexpected|wrong)", errors, re.M)) == 3


def _coarse_variant(dump: dict, name: str) -> dict[str, torch.Tensor]:
    """The released pre-training keys adapted as the original fine-tuning loader saves them."""
    variant = dump["downstream_variants"][name]
    shapes = {**dump["params"], **dump["buffers"], **variant["added_keys"]}
    rows = (2 * variant["image_size"] // 32 - 1) ** 2
    for key in list(shapes):
        if key in variant["removed_keys_grouped"]:
            del shapes[key]
        elif key.endswith("relative_position_bias_table"):
            shapes[key] = [rows, shapes[key][1]]
    return _fake_checkpoint(shapes)


def _check_coarse(checkpoint: dict[str, torch.Tensor], config: str, allow_missing=()):
    cfg = _config(config)
    kind = detect_official_format(checkpoint)
    return tool.convert_and_check(checkpoint, kind, cfg, list(allow_missing))


def test_coarse_release_converts_and_loads_strictly(coarse_dump):
    release = _fake_checkpoint({**coarse_dump["params"], **coarse_dump["buffers"]})
    result, check, errors = _check_coarse(
        release, "configs/coarse_grained/pretrain_mlm_itm_itc.yaml"
    )
    assert errors == [] and len(result.state_dict) + len(result.dropped) == 722
    index = {k: i for i, k in enumerate(release)}
    moved = {
        "vit_model.layers.3.blocks.1.attn.alpha_i2t": (
            "trunk.image_backbone.layers.3.blocks.1.i2t.gate"
        ),
        "text_transformer.encoder.layer.11.crossattention_t2i.self.value.bias": (
            "trunk.text_backbone.layers.11.t2i.value.bias"
        ),
        "itm_score.fc.weight": "itm_score.fc.weight",
    }
    for old, new in moved.items():
        assert _source_index(result.state_dict[new]) == index[old], new
    cfg = _config(
        "configs/coarse_grained/pretrain_mlm_itm_itc.yaml", "MODEL.PRETRAIN.QUEUE_SIZE", 0
    )
    _meta_model(cfg).load_state_dict(result.state_dict, strict=True, assign=True)


def test_coarse_release_at_576_resamples_position_tables(coarse_dump):
    release = _fake_checkpoint({**coarse_dump["params"], **coarse_dump["buffers"]})
    result, _, errors = _check_coarse(
        release, "configs/coarse_grained/eval/retrieval_coco_itc.yaml"
    )
    assert errors == []
    table = result.state_dict[
        "trunk.image_backbone.layers.0.blocks.0.attn.relative_position_bias_table"
    ]
    assert table.shape == (35 * 35, 4)


@pytest.mark.parametrize(
    ("variant", "config", "missing"),
    [
        (
            "task_finetune_irtr_itc_coco",
            "eval/retrieval_coco_itc.yaml",
            ("itm_score.", "mlm_score."),
        ),
        ("task_finetune_irtr_itm_coco", "pretrain_mlm_itm_itc.yaml", ("mlm_score.", "temp")),
    ],
)
def test_coarse_retrieval_fine_tunes_load_their_trunk_and_heads(
    coarse_dump, variant, config, missing
):
    checkpoint = _coarse_variant(coarse_dump, variant)
    result, check, errors = _check_coarse(checkpoint, f"configs/coarse_grained/{config}")
    assert result.unconverted == [] and check.unexpected == [] and check.wrong_shapes == []
    assert check.missing and all(k.startswith(missing) for k in check.missing)  # heads it lacks
    assert {line.split("'")[1] for line in errors} == set(check.missing)
    allowed = [re.escape(prefix) for prefix in missing]
    assert _check_coarse(checkpoint, f"configs/coarse_grained/{config}", allowed)[2] == []


@pytest.mark.parametrize(
    ("variant", "config"),
    [
        ("task_finetune_vqa", "vqa.yaml"),
        ("task_finetune_nlvr2", "nlvr2.yaml"),
        ("task_finetune_caption_mle_coco", "caption_mle_coco.yaml"),
    ],
)
def test_coarse_downstream_releases_load_into_their_task_models(coarse_dump, variant, config):
    checkpoint = _coarse_variant(coarse_dump, variant)
    result, check, errors = _check_coarse(checkpoint, f"configs/coarse_grained/{config}")
    assert result.unconverted == [] and errors == []
    assert check.missing == [] and check.unexpected == [] and check.wrong_shapes == []


def test_coarse_task_heads_on_another_task_model_are_reported(coarse_dump):
    checkpoint = _coarse_variant(coarse_dump, "task_finetune_vqa")
    result, check, errors = _check_coarse(
        checkpoint, "configs/coarse_grained/retrieval_itc_coco.yaml"
    )
    added = coarse_dump["downstream_variants"]["task_finetune_vqa"]["added_keys"]
    assert result.unconverted == [] and sorted(check.unexpected) == sorted(added)
    assert any("'vqa_classifier.3.weight'" in line for line in errors)


def _small_fine_config(golden: dict, path) -> str:
    """The golden small trunk's sizes (the trunk golden test's helper) in the detector, as YAML."""
    sizes = golden["config"]
    text = {
        "VOCAB_SIZE": sizes["vocab_size"], "HIDDEN_SIZE": sizes["text_dim"],
        "NUM_LAYERS": sizes["text_layers"], "NUM_HEADS": sizes["text_heads"],
        "INTERMEDIATE_SIZE": sizes["text_intermediate"],
        "MAX_POSITION_EMBEDDINGS": sizes["max_position_embeddings"],
    }  # fmt: skip
    cfg = _small_cfg(sizes, text, use_sdpa=True)
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "fine_grained" / "fiber_b.yaml"))
    cfg.MODEL.FPN.OUT_CHANNELS = sizes["fpn_channels"]
    cfg.MODEL.DYHEAD.NUM_BLOCKS, cfg.MODEL.DYHEAD.GN_GROUPS = 2, 16
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 160
    cfg.MODEL.DEVICE = "cpu"
    path.write_text(cfg.dump())
    return str(path)


def test_golden_trunk_converts_through_the_tool(reference_dir, tmp_path):
    golden_path = reference_dir / "golden" / "fiber_small_trunk.pt"
    golden = torch.load(golden_path, weights_only=True)
    config = _small_fine_config(golden, tmp_path / "small.yaml")
    out = tmp_path / "trunk.pth"
    assert tool.main([str(golden_path), str(out), "--config", config]) == 0
    converted = torch.load(out, weights_only=True)["model"]
    assert all(k.startswith("backbone.") for k in converted)
    model = build_model(
        tool.load_config(tool.build_parser().parse_args(["a", "b", "--config", config]), "fine")
    )
    backbone = model.backbone.eval()
    backbone.load_state_dict(
        {k.removeprefix("backbone."): v for k, v in converted.items()}, strict=True
    )
    with torch.no_grad():
        out = backbone(golden["images"], golden["input_ids"], golden["attention_mask"])
    for level, expected in zip(range(2, 6), golden["res2_res5"]):
        torch.testing.assert_close(out.res[f"res{level}"], expected, **TOLERANCE)
    for level, expected in zip(range(3, 8), golden["p3_p7"]):
        torch.testing.assert_close(out.features[f"p{level}"], expected, **TOLERANCE)
    torch.testing.assert_close(out.text.embedded, golden["text_embedded"], **TOLERANCE)


def test_verify_prints_the_top_detections(reference_dir, tmp_path, capsys):
    trunk = torch.load(reference_dir / "golden" / "fiber_small_trunk.pt", weights_only=True)
    head = torch.load(reference_dir / "golden" / "fiber_small_head.pt", weights_only=True)
    official = tmp_path / "small_fine.pth"
    torch.save({"model": {**trunk["state_dict"], **head["state_dict"]}}, official)
    tokenizer = tmp_path / "tokenizer"
    train_byte_level_bpe(["a red square. a blue circle"], tokenizer, vocab_size=280)
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (128, 160, 3), np.uint8))
    argv = [
        str(official),
        str(tmp_path / "out.pth"),
        "--config",
        _small_fine_config(trunk, tmp_path / "s.yaml"),
    ]
    argv += [
        "--verify",
        str(image),
        "--prompt",
        "red square. blue circle",
        "--tokenizer",
        str(tokenizer),
    ]
    argv += ["--top-k", "3", "--opts", "MODEL.GROUNDING.SCORE_THRESH_TEST", "0.0"]
    assert tool.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(printed) if line.startswith("top 3 of "))
    rows = [line.split() for line in printed[start + 1 :]]
    assert len(rows) == 3
    scores = [float(row[2]) for row in rows]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    assert {" ".join(row[:2]) for row in rows} <= {"red square", "blue circle"}


def test_official_wrappers_ema_and_prefixes(tmp_path):
    weights, ema = {"module.a.weight": torch.ones(2)}, {"module.a.weight": torch.zeros(2)}
    torch.save({"model": weights, "model_ema": ema, "iteration": 3}, tmp_path / "m.pth")
    assert torch.equal(load_official_state_dict(str(tmp_path / "m.pth"))["a.weight"], torch.ones(2))
    loaded_ema = load_official_state_dict(str(tmp_path / "m.pth"), ema=True)
    assert list(loaded_ema) == ["a.weight"] and torch.equal(loaded_ema["a.weight"], torch.zeros(2))
    lightning = {"state_dict": {"vit_model.x": torch.ones(1)}, "epoch": 2}
    assert list(unwrap_official_checkpoint(lightning, "l.ckpt")) == ["vit_model.x"]
    assert list(unwrap_official_checkpoint({"rpn.head.bias0": torch.ones(1)}, "bare")) == [
        "rpn.head.bias0"
    ]
    with pytest.raises(KeyError, match=r"l\.ckpt: EMA weights asked for.*'model_ema'"):
        unwrap_official_checkpoint(lightning, "l.ckpt", ema=True)
    with pytest.raises(ValueError, match=r"x\.pth: entries that are not tensors: \['step'\]"):
        unwrap_official_checkpoint({"state_dict": {"step": 3}}, "x.pth")
    torch.save({"model": weights, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match=r"pickled\.pth: holds objects.*allow_pickle=True"):
        load_official_state_dict(str(tmp_path / "pickled.pth"))
    assert list(load_official_state_dict(str(tmp_path / "pickled.pth"), allow_pickle=True)) == [
        "a.weight"
    ]
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        load_official_state_dict(str(tmp_path / "gone.pth"))
    with pytest.raises(ValueError, match=r"no 'fusion_backbone\.\*'.*\['a\.weight'\]"):
        detect_official_format({"a.weight": torch.ones(1)})
    assert detect_official_format({"fusion_backbone.backbone.body.x": torch.ones(1)}) == "fine"


def test_save_is_atomic(tmp_path):
    path = tmp_path / "out.pth"
    save_converted_checkpoint({"a": torch.ones(2)}, str(path), source="in.pth")
    saved = torch.load(path, weights_only=True)
    assert saved["source"] == "in.pth" and saved["matching_heuristics"] is False
    with pytest.raises((AttributeError, pickle.PicklingError)):
        save_converted_checkpoint({"a": torch.zeros(2)}, str(path), broken=lambda: None)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    assert torch.equal(torch.load(path, weights_only=True)["model"]["a"], torch.ones(2))


def test_refcoco_fusion_v3_weights_need_the_query_norm(fine_release, tmp_path, capsys):
    """The RefCOCO fine-tunes' extra `norm_i2t_i` (fine_grained_spec FS3) loads with QUERY_NORM."""
    v3 = dict(fine_release)
    body = "fusion_backbone.backbone.body.layers"
    for stage, block, width in [(2, b, 512) for b in range(14, 18)] + [(3, 0, 1024), (3, 1, 1024)]:
        for name in ("weight", "bias"):
            v3[f"{body}.{stage}.blocks.{block}.attn.norm_i2t_i.{name}"] = torch.ones(width)
    torch.save({"model": v3}, tmp_path / "refcoco.pth")
    argv = [str(tmp_path / "refcoco.pth"), str(tmp_path / "out.pth")]
    assert tool.main(argv) == 1
    query_norm = "backbone.trunk.image_backbone.layers.3.blocks.1.i2t.query_norm.weight"
    assert f"unexpected (the model has no such key): '{query_norm}'" in capsys.readouterr().err
    assert tool.main(argv + ["--opts", "MODEL.FIBER.FUSION.QUERY_NORM", "True"]) == 0
    assert query_norm in torch.load(tmp_path / "out.pth", weights_only=True)["model"]
