"""Saved-model directories: save_pretrained -> from_pretrained gives identical detections (local
folder, moved folder, hub repository served from a local hub cache), and broken directories fail
with errors naming the file."""

import shutil

import pytest
import torch
import yaml
from transformers import RobertaConfig

from fiber_det.predictor import GroundingPredictor
from fiber_det.pretrained import standalone_config
from tests.hub_cache import hub_cache_entry
from tests.modeling.grounding.tiny_detector import NAMES, SCENES, draw_scene, trained_tiny_detector


@pytest.fixture(scope="module")
def saved(tiny_tokenizer, tmp_path_factory):
    """(the in-memory predictor of the trained tiny detector, its saved directory)."""
    model, cfg, _ = trained_tiny_detector(tiny_tokenizer)
    predictor = GroundingPredictor(cfg, tokenizer=tiny_tokenizer, model=model)
    directory = tmp_path_factory.mktemp("saved") / "tiny-fiber"
    assert predictor.save_pretrained(directory) == directory
    return predictor, directory


def assert_same_detections(first: GroundingPredictor, second: GroundingPredictor) -> None:
    images = [draw_scene(128, 128, scene) for scene in SCENES]
    for request in ({"names": NAMES}, {"caption": "red. yellow", "phrase_spans": [[(0, 3)]]}):
        for one, two in zip(first(images, **request), second(images, **request), strict=True):
            assert one.labels == two.labels and len(one.labels) > 0
            assert torch.equal(one.instances.scores, two.instances.scores)
            assert torch.equal(one.instances.pred_boxes.tensor, two.instances.pred_boxes.tensor)


def test_save_then_load_gives_identical_detections(saved):
    predictor, directory = saved
    files = {path.name for path in directory.iterdir()}
    assert {"config.yaml", "model.safetensors", "tokenizer_config.json"} <= files
    config = yaml.safe_load((directory / "config.yaml").read_text())
    assert config["MODEL"]["WEIGHTS"] == "model.safetensors"
    assert config["INPUT"]["TEXT"]["TOKENIZER"] == "."
    loaded = GroundingPredictor.from_pretrained(str(directory))
    assert loaded.tokenizer.get_vocab() == predictor.tokenizer.get_vocab()
    assert_same_detections(predictor, loaded)


def test_a_moved_directory_still_loads(saved, tmp_path):
    predictor, directory = saved
    moved = shutil.copytree(directory, tmp_path / "elsewhere")
    assert_same_detections(predictor, GroundingPredictor.from_pretrained(str(moved)))


def test_a_hub_repository_loads_from_the_hub_cache(saved, tmp_path):
    predictor, directory = saved
    hub_cache_entry(tmp_path, "someone/tiny-fiber", {p.name: p for p in directory.iterdir()})
    loaded = GroundingPredictor.from_pretrained("someone/tiny-fiber", cache_dir=str(tmp_path))
    assert_same_detections(predictor, loaded)


def test_a_hub_repository_missing_offline_names_the_download_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf download someone/other-model"):
        GroundingPredictor.from_pretrained("someone/other-model", cache_dir=str(tmp_path))


def test_unknown_local_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such model directory"):
        GroundingPredictor.from_pretrained(str(tmp_path / "nowhere"))


def test_a_directory_without_config_yaml_is_refused(saved, tmp_path):
    _, directory = saved
    broken = shutil.copytree(directory, tmp_path / "no-config")
    (broken / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=f"{broken} has no config.yaml"):
        GroundingPredictor.from_pretrained(str(broken))


def test_a_truncated_safetensors_file_is_named(saved, tmp_path):
    _, directory = saved
    broken = shutil.copytree(directory, tmp_path / "truncated")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{weights}: not a complete safetensors file"):
        GroundingPredictor.from_pretrained(str(broken))


def test_a_config_of_another_model_is_refused(saved, tmp_path):
    _, directory = saved
    broken = shutil.copytree(directory, tmp_path / "coarse")
    text = (broken / "config.yaml").read_text()
    coarse = text.replace("META_ARCHITECTURE: GroundingDetector", "META_ARCHITECTURE: Coarse")
    (broken / "config.yaml").write_text(coarse)
    with pytest.raises(ValueError, match="META_ARCHITECTURE is 'Coarse'"):
        GroundingPredictor.from_pretrained(str(broken))


def test_saving_to_a_file_path_is_refused(saved, tmp_path):
    predictor, _ = saved
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match="a_file: it is a file"):
        predictor.save_pretrained(tmp_path / "a_file")


def test_text_tower_sizes_from_its_weights_folder_are_written_out(saved, tmp_path):
    predictor, _ = saved
    RobertaConfig(vocab_size=77, hidden_size=48, num_hidden_layers=5).save_pretrained(tmp_path)
    cfg = predictor.cfg.clone()
    cfg.MODEL.FIBER.TEXT.WEIGHTS = str(tmp_path)
    cfg.MODEL.FIBER.SWIN.WEIGHTS = str(tmp_path / "swin.pth")
    text = standalone_config(cfg).MODEL.FIBER.TEXT
    assert (text.WEIGHTS, text.VOCAB_SIZE, text.HIDDEN_SIZE, text.NUM_LAYERS) == ("", 77, 48, 5)
    assert standalone_config(cfg).MODEL.FIBER.SWIN.WEIGHTS == ""
