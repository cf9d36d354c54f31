"""GroundingPredictor loads weights safely and strictly, and rejects bad requests: every error
names its culprit (file, keys, argument). Pickled code in a weights file is proven inert."""

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fiber_det.predictor import GroundingPredictor
from tests.modeling.grounding.tiny_detector import NAMES, build_tiny_detector
from tests.pickle_payload import RunsCode


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    """(freshly initialised tiny detector, its config)."""
    return build_tiny_detector(tiny_tokenizer)


def _predictor(cfg, weights, tokenizer) -> GroundingPredictor:
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(weights)
    return GroundingPredictor(cfg, tokenizer=tokenizer)


def test_pickled_code_is_refused_and_never_runs(tiny, tiny_tokenizer, tmp_path):
    model, cfg = tiny
    marker = tmp_path / "code_ran"
    payload = {"model": {**model.state_dict(), "evil": RunsCode(marker)}}
    for name in ("weights.pkl", "weights.pth"):
        torch.save(payload, tmp_path / name)
    with pytest.raises(ValueError, match=r"weights\.pkl: pickle files can run arbitrary code"):
        _predictor(cfg, tmp_path / "weights.pkl", tiny_tokenizer)
    with pytest.raises(ValueError, match=r"weights\.pth: holds objects other than tensors"):
        _predictor(cfg, tmp_path / "weights.pth", tiny_tokenizer)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("drop", r"1 missing keys \(the model has them, the file does not\): head\.bias0"),
        ("extra", r"1 unexpected keys \(the model has no such parameter\): head\.extra"),
        ("shape", r"1 keys of the wrong shape: head\.bias_lang \[3\] vs model \[32\]"),
        ("nan", r"1 tensors with NaN or infinite values: head\.bias0"),
        ("inf", r"1 tensors with NaN or infinite values: head\.bias_lang"),
        ("coarse", r"is a coarse-stage checkpoint \(keys 'trunk\.\*'\)"),
        ("official", r"is an official FIBER checkpoint \(keys 'rpn\.\*'\)"),
    ],
)
def test_weights_that_do_not_fit_are_errors_naming_file_and_keys(
    tiny, tiny_tokenizer, tmp_path, edit, message
):
    model, cfg = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if edit == "drop":
        del state["head.bias0"]
    elif edit == "extra":
        state["head.extra"] = torch.zeros(2)
    elif edit == "shape":
        state["head.bias_lang"] = torch.zeros(3)
    elif edit == "nan":
        state["head.bias0"] = torch.full_like(state["head.bias0"], float("nan"))
    elif edit == "inf":
        state["head.bias_lang"][-1] = -float("inf")
    elif edit == "coarse":
        state = {k.replace("backbone.trunk.", "trunk."): v for k, v in state.items()}
    elif edit == "official":
        state = {k.replace("head.", "rpn.head."): v for k, v in state.items()}
    path = tmp_path / f"{edit}.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=message) as error:
        _predictor(cfg, path, tiny_tokenizer)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"empty\.pth: not a readable PyTorch checkpoint"),
        (b"not a checkpoint\n" * 8, r"text\.pth: not a readable PyTorch checkpoint"),
    ],
)
def test_unreadable_weights_files_are_named(tiny, tiny_tokenizer, tmp_path, content, message):
    _, cfg = tiny
    path = tmp_path / ("empty.pth" if not content else "text.pth")
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        _predictor(cfg, path, tiny_tokenizer)


def test_a_pth_of_tensors_loads_strictly(tiny, tiny_tokenizer, tmp_path):
    model, cfg = tiny
    torch.save({"model": model.state_dict(), "iteration": 3}, tmp_path / "ok.pth")
    loaded = _predictor(cfg, tmp_path / "ok.pth", tiny_tokenizer).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_no_weights_is_refused_unless_random_weights_are_asked_for(tiny, tiny_tokenizer, caplog):
    _, cfg = tiny
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(ValueError, match="no weights: cfg.MODEL.WEIGHTS is empty"):
        GroundingPredictor(cfg, tokenizer=tiny_tokenizer)
    with caplog.at_level(logging.WARNING, logger="fiber_det.predictor"):
        GroundingPredictor(cfg, tokenizer=tiny_tokenizer, allow_random_weights=True)
    assert "RANDOM WEIGHTS" in caplog.text


@pytest.fixture(scope="module")
def random_predictor(tiny, tiny_tokenizer):
    model, cfg = tiny
    return GroundingPredictor(cfg, tokenizer=tiny_tokenizer, model=model)


@pytest.mark.parametrize(
    ("request_args", "error", "message"),
    [
        ({"names": "cat"}, TypeError, r"got the string 'cat'.*did you mean names=\['cat'\]"),
        ({"names": []}, ValueError, "names is empty"),
        ({"names": ["red", "  "]}, ValueError, r"names\[1\] = '  ' has no letter or digit"),
        ({"names": ["red", "?!."]}, ValueError, r"names\[1\] = '\?!\.' has no letter or digit"),
        ({"names": ["red", 3]}, TypeError, r"names\[1\] is int 3, not a string"),
        ({"caption": "   "}, ValueError, "caption is empty"),
    ],
)
def test_bad_class_names_and_captions_are_named(random_predictor, request_args, error, message):
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(error, match=message):
        random_predictor(image, **request_args)


def test_images_that_are_not_uint8_are_refused_with_a_hint(random_predictor):
    image = np.full((32, 32, 3), 0.5, dtype=np.float32)
    with pytest.raises(ValueError, match=r"got float32 with values in \[0\.5, 0\.5\].*\* 255"):
        random_predictor(image, names=NAMES)
    with pytest.raises(ValueError, match=r"got int64 with values in \[300, 300\]"):
        random_predictor(np.full((8, 8, 3), 300), names=NAMES)
