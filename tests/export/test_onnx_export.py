"""ONNX export of the tiny detector run in onnxruntime against PyTorch: raw outputs, detections
through GroundingPredictor, and the fixed-vocabulary graph."""

import numpy as np
import onnxruntime
import pytest
import torch

from fiber_det.export import export_onnx, load_onnx_predictor
from fiber_det.export.graph import GroundingGraph
from fiber_det.export.onnx_export import export_cfg
from fiber_det.modeling.text_padding import pad_texts
from fiber_det.predictor import GroundingPredictor
from fiber_det.pretrained import load_pretrained_config, save_pretrained
from tests.modeling.grounding.tiny_detector import NAMES, SCENES, draw_scene, trained_tiny_detector
from tests.tools.tool_module import load_tool

TWENTY_NAMES = NAMES + [
    "square", "circle", "triangle", "star", "hexagon", "ring", "person", "bicycle", "car",
    "remote control", "cat", "dog", "traffic light", "purple", "orange", "small",
]  # fmt: skip
PROMPTS = {"one class": ["red"], "twenty classes": TWENTY_NAMES}
# (height, width) of the original images, resized to a shorter side of 160 and padded to
# 160x160 and 160x288 (5 and 9 blocks of 32): the trace ran at 5x6 blocks
IMAGE_SIZES = [(128, 128), (90, 160)]


@pytest.fixture(scope="module")
def exported(tiny_tokenizer, tmp_path_factory):
    """(PyTorch predictor of the saved tiny model, its export-config predictor, the export
    directory with prompts as inputs (written by tools/export.py), the fixed-vocabulary export
    directory (written by export_onnx))."""
    torch.set_num_threads(1)
    model, cfg, _ = trained_tiny_detector(tiny_tokenizer)
    saved = save_pretrained(tmp_path_factory.mktemp("saved"), model, cfg, tiny_tokenizer)
    cfg = load_pretrained_config(saved, "cpu")
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 160, 320  # the graph's minimum is 160
    reference = GroundingPredictor(cfg)
    exporting = GroundingPredictor(export_cfg(cfg))
    prompt_graph = tmp_path_factory.mktemp("onnx")
    sizes = ["INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "320"]
    load_tool("export").main(["--model", str(saved), "--output", str(prompt_graph), *sizes])
    fixed_graph = export_onnx(exporting, tmp_path_factory.mktemp("onnx_fixed"), names=NAMES)
    return reference, exporting, prompt_graph, fixed_graph


def _image(size, scene):
    return draw_scene(*size, scene)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("size", IMAGE_SIZES)
def test_graph_outputs_match_pytorch(exported, prompt, size):
    _, exporting, directory, _ = exported
    session = onnxruntime.InferenceSession(str(directory / "model.onnx"))
    prompts = exporting.prompts(PROMPTS[prompt])[0]
    text = pad_texts(prompts, exporting.model.backbone.text_pad_token_id)
    image = exporting._input(_image(size, SCENES[0]), prompts)["image"]
    images = exporting.model.preprocess_image([{"image": image}] * 2).tensor
    with torch.no_grad():
        graph = GroundingGraph(exporting.model)
        expected = graph(images, text["input_ids"], text["attention_mask"])
    feeds = {"images": images.numpy(), **{k: v.numpy() for k, v in text.items()}}
    outputs = session.run(None, feeds)
    rows = len(prompts)
    assert outputs[2].shape == (2, rows, expected[3].shape[0], text["input_ids"].shape[1])
    for name, got, want in zip(("boxes", "centerness", "logits", "anchors"), outputs, expected):
        assert np.abs(got - want.numpy()).max() <= 1e-4, name
    np.testing.assert_array_equal(outputs[4], expected[4].numpy())


def _assert_same_detections(got, want):
    assert got.labels == want.labels and len(want.labels) > 0
    torch.testing.assert_close(got.instances.scores, want.instances.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(
        got.instances.pred_boxes.tensor, want.instances.pred_boxes.tensor, atol=1e-3, rtol=0
    )


@pytest.mark.parametrize("prompt", PROMPTS)
def test_detections_match_pytorch(exported, prompt):
    reference, _, directory, _ = exported
    onnx_predictor = load_onnx_predictor(directory, threads=1)
    images = [_image(size, scene) for size, scene in zip(IMAGE_SIZES, SCENES)]
    for got, want in zip(
        onnx_predictor(images, names=PROMPTS[prompt]), reference(images, names=PROMPTS[prompt])
    ):
        _assert_same_detections(got, want)


def test_fixed_vocabulary_graph(exported):
    reference, _, _, directory = exported
    onnx_predictor = load_onnx_predictor(directory, threads=1)
    assert [i.name for i in onnx_predictor.model.session.get_inputs()] == ["images"]
    for size, scene in zip(IMAGE_SIZES, SCENES):
        image = _image(size, scene)
        _assert_same_detections(onnx_predictor(image, names=NAMES), reference(image, names=NAMES))
    with pytest.raises(ValueError, match="exported for the vocabulary"):
        onnx_predictor(image, names=["red"])


def test_image_below_the_graph_minimum_is_refused(exported):
    _, _, directory, _ = exported
    onnx_predictor = load_onnx_predictor(directory, threads=1)
    prompts = onnx_predictor.prompts(["red"])[0]
    small = {"image": torch.zeros(3, 64, 96, dtype=torch.uint8), "prompts": prompts}
    with pytest.raises(ValueError, match=r"at least 160x160 pixels .* got \(64, 96\)"):
        onnx_predictor.model([small])


def test_export_cli_keeps_names_and_overrides_apart(capsys):
    export = load_tool("export")
    args = export.parse_args(["--model", "m", "--names", "a", "b", "--output", "o", "K.V", "1"])
    assert args.names == ["a", "b"] and args.opts == ["K.V", "1"]
    with pytest.raises(SystemExit):
        export.parse_args(["--model", "m", "--output", "o", "K.V", "1", "--names", "a"])
    assert "put the overrides last" in capsys.readouterr().err


def test_export_refuses_a_test_size_below_the_graph_minimum(exported, tmp_path):
    _, exporting, _, _ = exported
    cfg = exporting.cfg.clone()
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TEST = 128
    small = GroundingPredictor(cfg, exporting.tokenizer, model=exporting.model)
    with pytest.raises(ValueError, match="INPUT.MIN_SIZE_TEST 128 is below .* 160"):
        export_onnx(small, tmp_path)
    assert not (tmp_path / "model.onnx").exists()
