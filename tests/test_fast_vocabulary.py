"""Fast mode for fixed vocabularies: cached fusion-off text features, one image pass."""

import pytest
import torch
from detectron2.structures import Instances
from safetensors.torch import save_file

from fiber_det.modeling.grounding.decoding import decode_row, flatten_head_outputs
from fiber_det.predictor import GroundingPredictor
from fiber_det.vocabulary_cache import VocabularyCacheMismatch, load_vocabulary_text
from tests.modeling.grounding.tiny_detector import (
    NAMES,
    SCENES,
    build_tiny_detector,
    draw_scene,
)


@pytest.fixture
def predictor(tiny_tokenizer):
    """A seeded random tiny detector, 2 classes per chunk, every candidate kept."""
    model, cfg = build_tiny_detector(tiny_tokenizer)
    cfg.TEST.CHUNK_SIZE = 2
    cfg.MODEL.GROUNDING.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    model = type(model)(cfg).eval()  # rebuilt: the post-processor reads the threshold
    model.load_state_dict(build_tiny_detector(tiny_tokenizer)[0].state_dict())
    return GroundingPredictor(cfg, tokenizer=tiny_tokenizer, model=model)


def _assert_same(first, second):
    assert first.labels == second.labels and len(first.labels) > 0
    torch.testing.assert_close(first.instances.scores, second.instances.scores, atol=0, rtol=0)
    torch.testing.assert_close(
        first.instances.pred_boxes.tensor, second.instances.pred_boxes.tensor, atol=0, rtol=0
    )


def test_cached_text_features_give_the_same_detections(predictor, tmp_path):
    cache = tmp_path / "colours.safetensors"
    on_the_fly = predictor.vocabulary(NAMES)
    assert len(on_the_fly.prompts) == 2 and on_the_fly.text_embedded.shape[0] == 2
    predictor.vocabulary(NAMES, cache=cache)  # computed and saved
    reloaded = predictor.vocabulary(NAMES, cache=cache)  # read back
    torch.testing.assert_close(reloaded.text_embedded, on_the_fly.text_embedded, atol=0, rtol=0)
    images = [draw_scene(128, 128, scene) for scene in SCENES]
    for fresh, cached in zip(
        predictor(images, vocabulary=on_the_fly), predictor(images, vocabulary=reloaded)
    ):
        _assert_same(fresh, cached)


def test_fast_mode_equals_fusion_off_chunks_run_one_by_one(predictor):
    """One image and DyHead tower pass scored per chunk == each chunk through the whole
    fusion-off detector (trunk with fusion disabled, head, decoding)."""
    model = predictor.model
    vocabulary = predictor.vocabulary(NAMES)
    image = draw_scene(128, 128, SCENES[1])
    fast = predictor(image, vocabulary=vocabulary)
    request = predictor._input(image, vocabulary.prompts)
    images = model.preprocess_image([request])
    model.backbone.trunk.fusion_enabled = False
    chunks = []
    with torch.no_grad():
        for prompt in vocabulary.prompts:
            ids, mask = prompt["input_ids"][None], prompt["attention_mask"][None]
            flat = flatten_head_outputs(*model._head(model.backbone(images.tensor, ids, mask)))
            chunks.append(decode_row(model.postprocessor, flat, 0, prompt, images.image_sizes[0]))
    naive = model._merge([request], [chunks], images.image_sizes)[0]["instances"]
    assert isinstance(naive, Instances)
    assert fast.instances.pred_classes.tolist() == naive.pred_classes.tolist()
    torch.testing.assert_close(fast.instances.scores, naive.scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        fast.instances.pred_boxes.tensor, naive.pred_boxes.tensor, atol=1e-4, rtol=0
    )


def test_vocabulary_argument_excludes_names(predictor):
    with pytest.raises(ValueError, match="give `vocabulary` alone"):
        predictor(draw_scene(64, 64, []), names=NAMES, vocabulary=predictor.vocabulary(NAMES))


def test_mismatched_cache_is_refused_naming_what_differs(predictor, tmp_path):
    cache = tmp_path / "colours.safetensors"
    predictor.vocabulary(NAMES, cache=cache)
    with pytest.raises(VocabularyCacheMismatch, match="different class names than"):
        predictor.vocabulary(NAMES[:3], cache=cache)
    predictor.cfg.TEST.CHUNK_SIZE = 3
    with pytest.raises(VocabularyCacheMismatch, match="different chunking than"):
        predictor.vocabulary(NAMES, cache=cache)
    predictor.cfg.TEST.CHUNK_SIZE = 2
    with torch.no_grad():
        next(iter(predictor.model.backbone.text_tower_state_dict().values())).add_(1.0)
    with pytest.raises(VocabularyCacheMismatch, match="different text tower sha256 than"):
        predictor.vocabulary(NAMES, cache=cache)
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(VocabularyCacheMismatch, match="not a fiber_det vocabulary cache"):
        load_vocabulary_text(tmp_path / "weights.safetensors", {})
