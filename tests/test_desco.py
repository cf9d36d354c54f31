"""DesCo-FIBER in one line: `GroundingPredictor.from_pretrained("harold/DesCo",
filename="desco_fiber_base.pth")` downloads (here: from a local directory laid out as the hub
cache), converts with fiber_det's converter, caches the converted directory and loads it
strictly into FIBER-B. The checkpoint is a fake in the official layout: every key and shape of
the released FIBER-B detector (../shared/reference), random float16 values (500 MB)."""

import json

import pytest
import torch
from transformers import RobertaConfig

from fiber_det import hub
from fiber_det.checkpoint import read_model_weights, weight_errors
from fiber_det.predictor import GroundingPredictor
from tests.hub_cache import hub_cache_entry

# official key -> fiber_det key, spread over the trunk, the fusion, the FPN and the head
SPOT_CHECKS = {
    "module.fusion_backbone.backbone.body.layers.2.blocks.14.attn.alpha_i2t": (
        "backbone.trunk.image_backbone.layers.2.blocks.14.i2t.gate"
    ),
    "module.fusion_backbone.language_backbone.body.model.encoder.layer.6.crossattention_t2i"
    ".self.key.weight": "backbone.trunk.text_backbone.layers.6.t2i.key.weight",
    "module.fusion_backbone.backbone.fpn.top_blocks.p6.weight": "backbone.fpn.top_block.p6.weight",
    "module.rpn.head.dyhead_tower.5.offset.weight": "head.tower.blocks.5.offset.weight",
    "module.rpn.head.bias0": "head.bias0",
}


@pytest.fixture(scope="module")
def hub_cache(reference_dir, tiny_tokenizer_dir, tmp_path_factory):
    """A hub cache holding harold/DesCo's desco_fiber_base.pth (fake) and roberta-base's
    tokenizer files (the tiny test tokenizer standing in)."""
    cache = tmp_path_factory.mktemp("hf_hub_cache")
    dump = json.loads((reference_dir / "fiber_fine_grained_state_dict.json").read_text())
    generator = torch.Generator().manual_seed(0)
    state = {
        f"module.{key}": torch.randn(shape, generator=generator, dtype=torch.float16)
        for key, shape in {**dump["params"], **dump["buffers"]}.items()
    }
    snapshot = hub_cache_entry(cache, "harold/DesCo", {})
    torch.save({"model": state, "iteration": 1}, snapshot / "desco_fiber_base.pth")
    tokenizer_files = {path.name: path for path in tiny_tokenizer_dir.iterdir()}
    RobertaConfig().save_pretrained(cache / "roberta_config")  # the hub repo has one too
    tokenizer_files["config.json"] = cache / "roberta_config" / "config.json"
    hub_cache_entry(cache, "roberta-base", tokenizer_files)
    return cache, {key: state[key] for key in SPOT_CHECKS}


def test_desco_fiber_loads_in_one_line_with_every_key(hub_cache, tmp_path, monkeypatch):
    cache, official = hub_cache
    monkeypatch.setenv("FIBER_DET_CACHE", str(tmp_path))
    predictor = GroundingPredictor.from_pretrained(
        "harold/DesCo", filename="desco_fiber_base.pth", cache_dir=str(cache), device="cpu"
    )
    (converted,) = (tmp_path / "converted").iterdir()
    assert converted.name.startswith("desco_fiber_base-")
    saved = read_model_weights(converted / "model.safetensors")
    assert weight_errors(saved, predictor.model, "converted") == []  # 0 missing, 0 unexpected
    assert set(saved) == set(predictor.model.state_dict())
    parameters = sum(p.numel() for p in predictor.model.parameters())
    assert parameters == 252_034_744  # the released 252,055,304 minus the dropped cls_logits
    state = predictor.model.state_dict()
    for official_key, key in SPOT_CHECKS.items():
        assert torch.equal(state[key], official[official_key].float()), key
    report = json.loads((converted / "conversion.json").read_text())
    assert report["source"] == "harold/DesCo/desco_fiber_base.pth"
    assert predictor.tokenizer.convert_tokens_to_ids("<pad>") == 1
    # the alias resolves to the same cached directory without converting again
    monkeypatch.setattr(hub, "load_official_state_dict", pytest.fail)
    assert hub.resolve_model_directory("desco-fiber-base", cache_dir=str(cache)) == converted


def test_missing_tokenizer_offline_says_what_to_download(hub_cache, tmp_path, monkeypatch):
    cache, _ = hub_cache
    monkeypatch.setenv("FIBER_DET_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hf download roberta-nonexistent config.json"):
        GroundingPredictor.from_pretrained(
            "desco-fiber-base", cache_dir=str(cache), tokenizer="roberta-nonexistent"
        )
    assert not (tmp_path / "converted").exists() or not any((tmp_path / "converted").iterdir())


def test_missing_checkpoint_offline_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("FIBER_DET_CACHE", str(tmp_path / "converted"))
    with pytest.raises(FileNotFoundError, match="hf download harold/DesCo desco_fiber_base.pth"):
        GroundingPredictor.from_pretrained("desco-fiber-base", cache_dir=str(tmp_path))


def test_a_local_file_that_is_not_an_official_checkpoint_is_named(
    tiny_tokenizer_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("FIBER_DET_CACHE", str(tmp_path / "cache"))
    torch.save({"model": {"head.bias0": torch.zeros(1)}}, tmp_path / "mine.pth")
    with pytest.raises(ValueError, match=r"mine\.pth: not an official FIBER checkpoint"):
        GroundingPredictor.from_pretrained(
            str(tmp_path / "mine.pth"), tokenizer=str(tiny_tokenizer_dir)
        )
