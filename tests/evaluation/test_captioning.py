"""COCO caption metrics through pycocoevalcap on a tiny reference set with hand-derived values.

Image 1: reference "a b c d f", caption "a b c d e": 4/5 unigrams, 3/4 bigrams, 2/3 trigrams and
1/2 four-grams match, LCS 4 of 5. Image 2: reference "The cat sat on the mat.", caption "the cat
sat on the mat": identical after PTB tokenisation (lowercase, punctuation removed).
- BLEU (corpus level): p_n = (matches of 1 + matches of 2) / (n-grams of 1 + of 2), i.e.
  10/11, 8/9, 6/7, 4/5; equal lengths, so no brevity penalty.
- ROUGE-L (beta 1.2): 0.8 and 1.0, mean 0.9.
- CIDEr: the two images share no n-gram, so every n-gram's idf is log(2) and the cosines are
  the match fractions above: image 1 = 10 * mean(4/5, 3/4, 2/3, 1/2), image 2 = 10.
"""

import json
import math

import pytest
import torch
from detectron2.data import DatasetCatalog

from fiber_det.evaluation import captioning
from fiber_det.evaluation.captioning import (
    CaptionEvaluator,
    score_captions,
    tokenize_captions,
    use_spice,
)

DATASET = "test_captioning_evaluator"
RECORDS = [
    {"image_id": 1, "captions": ["a b c d f"]},
    {"image_id": 2, "captions": ["The cat sat on the mat."]},
]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One real evaluation (Java: PTB tokenizer, METEOR) shared by the value tests."""
    output_dir = tmp_path_factory.mktemp("captioning")
    DatasetCatalog.register(DATASET, lambda: RECORDS)
    evaluator = CaptionEvaluator(DATASET, str(output_dir), spice=False)
    evaluator.reset()
    evaluator.process([{"image_id": 2}], [{"caption": "the cat sat on the mat"}])
    evaluator.process([{"image_id": 1}, {"image_id": 2}], [{"caption": "a b c d e"}] * 2)
    return evaluator.evaluate()["captioning"], output_dir


def test_bleu_rouge_and_cider_match_hand_values(evaluated):
    metrics, _ = evaluated
    precisions = [10 / 11, 8 / 9, 6 / 7, 4 / 5]
    for n in range(1, 5):
        expected = 100 * math.prod(precisions[:n]) ** (1 / n)
        assert metrics[f"BLEU-{n}"] == pytest.approx(expected, rel=1e-6)
    assert metrics["ROUGE-L"] == pytest.approx(90.0)
    image_1 = 10 * (4 / 5 + 3 / 4 + 2 / 3 + 1 / 2) / 4
    assert metrics["CIDEr"] == pytest.approx(100 * (image_1 + 10) / 2)
    assert metrics["num_images"] == 2.0  # image 2's second caption is ignored
    assert "SPICE" not in metrics


def test_meteor_lies_between_the_partial_and_the_exact_match(evaluated):
    metrics, _ = evaluated
    # METEOR is 1 for the exact caption and below 1 for image 1 (4 of 5 words, a chunk break).
    assert 50.0 < metrics["METEOR"] < 100.0


def test_results_and_metrics_are_written(evaluated):
    metrics, output_dir = evaluated
    results = json.loads((output_dir / f"captions_{DATASET}.json").read_text())
    assert results == [
        {"image_id": 2, "caption": "the cat sat on the mat"},
        {"image_id": 1, "caption": "a b c d e"},
    ]
    saved = json.loads((output_dir / f"captioning_{DATASET}.json").read_text())
    assert saved["CIDEr"] == pytest.approx(metrics["CIDEr"])


def test_ptb_tokenisation_lowercases_and_drops_punctuation():
    tokens = tokenize_captions({"x": ["The cat, sat.", "A DOG's toy!"]})
    assert tokens == {"x": ["the cat sat", "a dog 's toy"]}


def test_spice_is_optional_and_missing_jars_are_named(monkeypatch):
    assert use_spice(False) is False
    monkeypatch.setattr(captioning, "spice_jars_missing", lambda: ["/lib/stanford-corenlp.jar"])
    with pytest.raises(FileNotFoundError, match="/lib/stanford-corenlp.jar"):
        use_spice(True)
    assert use_spice(None) is False
    monkeypatch.setattr(captioning, "spice_jars_missing", lambda: [])
    assert use_spice(None) is True


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no captions"):
        score_captions({1: ["a"]}, {})
    with pytest.raises(ValueError, match=r"without reference captions, e.g. \[7\]"):
        score_captions({1: ["a"]}, {7: "a"})
    evaluator = CaptionEvaluator(DATASET)
    with pytest.raises(ValueError, match="must be a string"):
        evaluator.process([{"image_id": 1}], [{"caption": ["a"]}])


def test_caption_ids_are_decoded_with_the_tokenizer(tiny_tokenizer):
    """FiberCaptionModel's "caption_ids" (no <s> / </s>) decode to the caption text."""
    ids = tiny_tokenizer("a red square", add_special_tokens=False)["input_ids"]
    evaluator = CaptionEvaluator(DATASET, tokenizer=tiny_tokenizer)
    evaluator.process(
        [{"image_id": 1}, {"image_id": 2}],
        [{"caption_ids": torch.tensor(ids)}, {"caption_ids": [0, *ids, 2], "caption": "kept"}],
    )
    assert evaluator._captions == [(1, "a red square"), (2, "kept")]
    with pytest.raises(ValueError, match="give CaptionEvaluator a tokenizer"):
        CaptionEvaluator(DATASET).process([{"image_id": 1}], [{"caption_ids": ids}])
    with pytest.raises(ValueError, match="need 'caption' or 'caption_ids'"):
        evaluator.process([{"image_id": 1}], [{"text": "a"}])
