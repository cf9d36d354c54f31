"""RetrievalEvaluator: exact recalls on hand-made embeddings and ITM scores; ITM on the ITC top-k
scores only the top-k pairs, ITM on all pairs equals top-k with k = the gallery size."""

import json

import pytest
import torch

from fiber_det.evaluation.retrieval import (
    RetrievalEvaluator,
    format_retrieval_table,
    rank_candidates,
    recall_at_k,
    rerank_top_k,
)

# image i: embedding; captions of each image. sim = images @ texts.T is
#   I0: [1.0, 0.0, 0.6, 0.8]   I1: [0.0, 1.0, 0.8, 0.6]   I2: [0.6, 0.8, 1.0, 0.96]
IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
TEXTS_OF_IMAGE = [
    torch.tensor([[1.0, 0.0], [0.0, 1.0]]),  # T0, T1 belong to I0
    torch.tensor([[0.6, 0.8]]),  # T2 belongs to I1
    torch.tensor([[0.8, 0.6]]),  # T3 belongs to I2
]
# hand-made ITM scores (image, text). By rows (TR): I0 ranks T0 first, I1 T2 first, I2 ranks
# its T3 last; by columns (IR): T0 -> I0 first, T1 -> I0 third, T2 -> I1 first, T3 -> I2 first.
ITM = torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.3, 0.2, 0.8, 0.1], [0.4, 0.7, 0.6, 0.3]])


def _feed(evaluator: RetrievalEvaluator) -> None:
    text_index = 0
    for index, (image, texts) in enumerate(zip(IMAGES, TEXTS_OF_IMAGE, strict=True)):
        captions = []
        for _ in texts:
            # token 1 names the caption's image, token 2 the caption, for the scorers below
            ids = torch.tensor([0, 10 + index, 20 + text_index, 2])
            captions.append({"input_ids": ids, "attention_mask": torch.ones(4)})
            text_index += 1
        sample = {
            "image_id": f"img{index}",
            "image": torch.full((3, 2, 2), index, dtype=torch.uint8),
            "texts": captions,
        }
        evaluator.process([sample], [{"image_embedding": image, "text_embeddings": texts}])


def _pairs(images: list[torch.Tensor], texts: list[dict], image_index: torch.Tensor):
    """(image number, text number) of every scored pair."""
    image_numbers = torch.stack([im[0, 0, 0].long() for im in images])[image_index]
    return image_numbers, torch.stack([t["input_ids"][2] - 20 for t in texts])


def _oracle_scorer(images, texts, image_index) -> torch.Tensor:
    """ITM that knows the truth: 1 for a matching pair, 0 otherwise."""
    image_numbers, _ = _pairs(images, texts, image_index)
    owner = torch.stack([t["input_ids"][1] - 10 for t in texts])
    return (image_numbers == owner).float()


class RecordingScorer:
    """Returns ITM[image, text] and records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[tuple[int, int]]]] = []

    def __call__(self, images, texts, image_index) -> torch.Tensor:
        image_numbers, text_numbers = _pairs(images, texts, image_index)
        pairs = list(zip(image_numbers.tolist(), text_numbers.tolist(), strict=True))
        self.calls.append((len(images), pairs))
        return ITM[image_numbers, text_numbers]

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [pair for _, pairs in self.calls for pair in pairs]


def _evaluate(itm_top_k: int, scorer=None, **kwargs) -> dict:
    evaluator = RetrievalEvaluator(
        scorer=scorer or RecordingScorer(), itm_top_k=itm_top_k, recall_ks=(1, 2, 3), **kwargs
    )
    _feed(evaluator)
    return evaluator.evaluate()["retrieval"]


def test_recall_at_k_counts_first_positive():
    ranking = torch.tensor([[2, 0, 1], [0, 1, 2]])
    positives = torch.tensor([[True, False, False], [False, False, True]])
    assert recall_at_k(ranking, positives, (1, 2, 3)) == [0.0, 50.0, 100.0]
    with pytest.raises(ValueError, match="positive"):
        recall_at_k(ranking, torch.zeros(2, 3, dtype=torch.bool), (1,))


def test_itc_recalls_are_exact(tmp_path):
    evaluator = RetrievalEvaluator("hand_made", output_dir=str(tmp_path), recall_ks=(1, 2, 3))
    _feed(evaluator)
    results = evaluator.evaluate()["retrieval"]
    assert results["itc_tr_r1"] == pytest.approx(100 / 3)
    assert results["itc_tr_r2"] == pytest.approx(100.0)
    assert [results[f"itc_ir_r{k}"] for k in (1, 2, 3)] == pytest.approx([50.0, 75.0, 100.0])
    assert "itm_tr_r1" not in results
    written = json.loads((tmp_path / "retrieval_results.json").read_text())
    assert written == pytest.approx(results)


def test_itm_reranking_acts_only_inside_top_k():
    results = _evaluate(2, _oracle_scorer)
    assert results["itc_tr_r1"] == pytest.approx(100 / 3)
    assert results["itm_tr_r1"] == pytest.approx(100.0)
    # T1's image is third by ITC, outside the top 2: the oracle cannot lift it
    assert [results[f"itm_ir_r{k}"] for k in (1, 2, 3)] == pytest.approx([75.0, 75.0, 100.0])


def test_all_pairs_itm_recalls_are_exact(tmp_path):
    scorer = RecordingScorer()
    results = _evaluate(-1, scorer, output_dir=str(tmp_path))
    # hand-ranked from ITM (see its comment): TR hits I0, I1 at 1, I2 beyond 3
    assert [results[f"itm_tr_r{k}"] for k in (1, 2, 3)] == pytest.approx([200 / 3] * 3)
    assert [results[f"itm_ir_r{k}"] for k in (1, 2, 3)] == pytest.approx([75.0, 75.0, 100.0])
    assert results["itm_r_mean"] == pytest.approx((200 + 250) / 6)
    # the original's exhaustive protocol: rank every candidate by its ITM score
    positives = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert recall_at_k(rank_candidates(ITM), positives, (1, 2, 3)) == pytest.approx([200 / 3] * 3)
    assert sorted(scorer.pairs) == [(i, t) for i in range(3) for t in range(4)]
    assert results["itm_pairs_scored"] == 12.0
    written = json.loads((tmp_path / "retrieval_results.json").read_text())
    assert written == pytest.approx(results)


@pytest.mark.parametrize("top_k", [4, 100])
def test_all_pairs_equals_top_k_of_the_gallery_size(top_k):
    assert _evaluate(top_k) == _evaluate(-1)


def test_top_k_scores_only_the_top_k_pairs_image_by_image():
    scorer = RecordingScorer()
    results = _evaluate(2, scorer, itm_batch_size=3)
    # ITC top-2 texts of I0, I1, I2 and top-2 images of T0, T1, T2, T3 (see the sim comment)
    tr_top = {(0, 0), (0, 3), (1, 1), (1, 2), (2, 2), (2, 3)}
    ir_top = {(0, 0), (2, 0), (1, 1), (2, 1), (2, 2), (1, 2), (2, 3), (0, 3)}
    assert sorted(scorer.pairs) == sorted(tr_top | ir_top)  # each pair once, 8 <= 2 * (3 + 4)
    assert results["itm_pairs_scored"] == 8.0
    # image-major chunks of 3 pairs; each distinct image goes to the scorer once per chunk
    assert [count for count, _ in scorer.calls] == [2, 2, 1]
    assert scorer.calls[0][1] == [(0, 0), (0, 3), (1, 1)]


def test_rerank_top_k_keeps_the_tail_in_itc_order():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.5]])
    top_k = scores.topk(3, dim=1).indices  # [0, 2, 4]
    ranking = rerank_top_k(scores, top_k, torch.tensor([[0.0, 1.0, 2.0]]))
    assert ranking.tolist() == [[4, 2, 0, 3, 1]]
    assert rank_candidates(scores).tolist() == [[0, 2, 4, 3, 1]]
    everything = scores.topk(5, dim=1).indices  # no tail left
    assert rerank_top_k(scores, everything, -scores.gather(1, everything)).tolist() == [
        [1, 3, 4, 2, 0]
    ]


def test_table_lists_each_mode_and_bad_top_k_is_rejected():
    recalls = {"tr_r1": 50.0, "ir_r1": 25.0, "r_mean": 37.5}
    table = format_retrieval_table(
        {"ITC": {**recalls, "pairs_scored": 0}, "ITM, all pairs": {**recalls, "pairs_scored": 12}},
        (1,),
    )
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()]
    assert rows[0] == ["mode", "ITM pairs", "TR R@1", "IR R@1", "R mean"]
    assert rows[2:] == [
        ["ITC", "0", "50.00", "25.00", "37.50"],
        ["ITM, all pairs", "12", "50.00", "25.00", "37.50"],
    ]
    with pytest.raises(ValueError, match="ITM_RERANK_TOP_K"):
        RetrievalEvaluator(scorer=_oracle_scorer, itm_top_k=-2)


def test_duplicate_image_ids_are_rejected():
    evaluator = RetrievalEvaluator()
    _feed(evaluator)
    evaluator.process(
        [{"image_id": "img0", "texts": []}],
        [{"image_embedding": IMAGES[0], "text_embeddings": torch.zeros(0, 2)}],
    )
    with pytest.raises(ValueError, match="image_id"):
        evaluator.evaluate()
