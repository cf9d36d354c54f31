"""Image-text retrieval: Recall@K from ITC scores, and from ITM on the ITC top-k or on all pairs.

TR (image -> text): a query image is a hit at K when any of its captions ranks within the top
K texts. IR (text -> image): a caption is a hit when its image ranks within the top K images.
Modes (`itm_top_k`, cfg MODEL.PRETRAIN.ITM_RERANK_TOP_K):
* 0: ITC alone (cosine similarity of the unimodal embeddings).
* k > 0: the ITC top-k candidates of every query are re-ordered by the ITM "match" logit and
  stay ahead of the rest, whose ITC order is unchanged (fiber_det's fast path, k * (I + T)
  fused passes at most).
* -1: ITM scores every image-text pair, I * T fused passes: the original's exhaustive protocol
  (coarse_grained_spec.md c.3 / f.13). It is the same code path with k = the gallery size.
ITC recalls are always reported ("itc_*"), the ITM mode's under "itm_*".
"""

import json
import logging
import os
from collections.abc import Callable, Sequence

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

logger = logging.getLogger(__name__)

# (images: M uint8 (3, H, W), texts: P dicts {"input_ids", "attention_mask"} (L,),
#  image_index: (P,) long, the image of each pair) -> (P,) ITM match scores
PairScorer = Callable[[list[torch.Tensor], list[dict], torch.Tensor], torch.Tensor]


def rank_candidates(scores: torch.Tensor) -> torch.Tensor:
    """(Q, N) scores -> (Q, N) candidate indices, best first (stable for ties)."""
    return scores.argsort(dim=1, descending=True, stable=True)


def rerank_top_k(
    scores: torch.Tensor, top_k: torch.Tensor, top_k_scores: torch.Tensor
) -> torch.Tensor:
    """Ranking (Q, N) whose first k entries are `top_k` (Q, k) ordered by `top_k_scores` (Q, k),
    followed by every other candidate in the order of `scores` (Q, N)."""
    num_queries, num_candidates = scores.shape
    head = top_k.gather(1, top_k_scores.argsort(dim=1, descending=True, stable=True))
    in_top_k = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top_k, True)
    full = rank_candidates(scores)
    tail = full[~in_top_k.gather(1, full)].view(num_queries, num_candidates - top_k.shape[1])
    return torch.cat([head, tail], dim=1)


def recall_at_k(ranking: torch.Tensor, positives: torch.Tensor, ks: Sequence[int]) -> list[float]:
    """Percent of queries whose first positive lies in the top K of `ranking`, for each K.

    ranking: (Q, N) candidate indices best first; positives: (Q, N) bool over candidates.
    """
    hits = positives.gather(1, ranking)
    if not bool(hits.any(dim=1).all()):
        raise ValueError("every retrieval query needs at least one positive candidate")
    first = hits.float().argmax(dim=1)
    return [100.0 * float((first < k).float().mean()) for k in ks]


def itm_mode_name(itm_top_k: int) -> str:
    """Human-readable name of a retrieval mode (see the module docstring)."""
    if itm_top_k == 0:
        return "ITC"
    return "ITM, all pairs" if itm_top_k < 0 else f"ITM on ITC top-{itm_top_k}"


def format_retrieval_table(modes: dict[str, dict[str, float]], ks: Sequence[int]) -> str:
    """A pipe table, one row per mode: fused passes, TR / IR R@K and the mean recall.

    modes: name -> {"pairs_scored", "tr_r{K}", "ir_r{K}", "r_mean"}."""
    headers = ["mode", "ITM pairs", *[f"TR R@{k}" for k in ks], *[f"IR R@{k}" for k in ks]]
    headers.append("R mean")
    rows = [
        [name, int(m["pairs_scored"])]
        + [m[f"{d}_r{k}"] for d in ("tr", "ir") for k in ks]
        + [m["r_mean"]]
        for name, m in modes.items()
    ]
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".2f")


class RetrievalEvaluator(DatasetEvaluator):
    """IR / TR Recall@K from a model's eval outputs, gathered over processes.

    `process` reads, per image, outputs {"image_embedding": (D,), "text_embeddings": (C, D)}
    (L2-normalised ITC features) and inputs {"image_id", "image", "texts"}. With `scorer` and
    `itm_top_k` != 0 (k > 0: the ITC top-k, -1: all pairs), ITM ranks too; each process scores
    the pairs of its own images, image by image so the scorer can share one image prefix.
    """

    def __init__(
        self,
        dataset_name: str | None = None,
        scorer: PairScorer | None = None,
        itm_top_k: int = 0,
        output_dir: str | None = None,
        recall_ks: Sequence[int] = (1, 5, 10),
        itm_batch_size: int = 32,
    ) -> None:
        if itm_top_k < -1:
            raise ValueError(
                f"itm_top_k (MODEL.PRETRAIN.ITM_RERANK_TOP_K) must be 0 (ITC only), k > 0 "
                f"(ITM on the ITC top-k) or -1 (ITM on all pairs), got {itm_top_k}"
            )
        self.dataset_name = dataset_name
        self.scorer = scorer
        self.itm_top_k = itm_top_k if scorer is not None else 0
        self.output_dir = output_dir
        self.recall_ks = tuple(recall_ks)
        self.itm_batch_size = itm_batch_size
        self.reset()

    def reset(self) -> None:
        self._image_ids: list = []
        self._image_embeddings: list[torch.Tensor] = []
        self._text_embeddings: list[torch.Tensor] = []
        self._texts: list[list[dict]] = []
        self._images: list[torch.Tensor] = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        for sample, output in zip(inputs, outputs, strict=True):
            self._image_ids.append(sample["image_id"])
            self._image_embeddings.append(output["image_embedding"].detach().float().cpu())
            self._text_embeddings.append(output["text_embeddings"].detach().float().cpu())
            self._texts.append(
                [
                    {k: text[k].cpu() for k in ("input_ids", "attention_mask")}
                    for text in sample["texts"]
                ]
            )
            if self.itm_top_k:
                self._images.append(sample["image"].cpu())

    def _gather(self) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor, list[dict], int]:
        """Global image ids, image (I, D) / text (T, D) embeddings, text -> image index (T,),
        global texts, and the offset of this process's first image."""
        parts = comm.all_gather(
            (self._image_ids, self._image_embeddings, self._text_embeddings, self._texts)
        )
        offset = sum(len(p[0]) for p in parts[: comm.get_rank()])
        image_ids = [i for p in parts for i in p[0]]
        if len(set(image_ids)) != len(image_ids):
            raise ValueError("RetrievalEvaluator got the same image_id twice")
        images = torch.stack([e for p in parts for e in p[1]])
        texts_per_image = [t for p in parts for t in p[2]]
        text_image = torch.cat(
            [torch.full((len(t),), i, dtype=torch.long) for i, t in enumerate(texts_per_image)]
        )
        texts = [text for p in parts for captions in p[3] for text in captions]
        return image_ids, images, torch.cat(texts_per_image), text_image, texts, offset

    def evaluate(self) -> dict:
        image_ids, images, texts_emb, text_image, texts, offset = self._gather()
        itc = images @ texts_emb.t()
        positives = text_image[None, :] == torch.arange(len(image_ids))[:, None]
        tr_ranking, ir_ranking = rank_candidates(itc), rank_candidates(itc.t())
        itc_recalls = self._recalls(tr_ranking, ir_ranking, positives, 0)
        modes = {itm_mode_name(0): itc_recalls}
        results = {f"itc_{k}": v for k, v in itc_recalls.items() if k != "pairs_scored"}
        if self.itm_top_k:
            tr_ranking, ir_ranking, num_pairs = self._itm_rankings(itc, texts, offset)
            itm = self._recalls(tr_ranking, ir_ranking, positives, num_pairs)
            modes[itm_mode_name(self.itm_top_k)] = itm
            results.update({f"itm_{k}": v for k, v in itm.items()})
        if not comm.is_main_process():
            return {}
        logger.info(
            "Retrieval on %s (%d images, %d texts):\n%s",
            self.dataset_name,
            len(image_ids),
            len(texts),
            format_retrieval_table(modes, self.recall_ks),
        )
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "retrieval_results.json"), "w") as handle:
                json.dump(results, handle, indent=2)
        return {"retrieval": results}

    def _recalls(self, tr_ranking, ir_ranking, positives, num_pairs: int) -> dict[str, float]:
        """{"tr_r{K}", "ir_r{K}", "r_mean", "pairs_scored"} of one mode's rankings."""
        tr = recall_at_k(tr_ranking, positives, self.recall_ks)
        ir = recall_at_k(ir_ranking, positives.t(), self.recall_ks)
        results = {f"tr_r{k}": v for k, v in zip(self.recall_ks, tr, strict=True)}
        results.update({f"ir_r{k}": v for k, v in zip(self.recall_ks, ir, strict=True)})
        results["r_mean"] = (sum(tr) + sum(ir)) / (2 * len(self.recall_ks))
        results["pairs_scored"] = float(num_pairs)
        return results

    def _itm_rankings(self, itc: torch.Tensor, texts: list[dict], offset: int):
        """TR and IR rankings with the ITC top-k of every query (k = the gallery size for all
        pairs) re-ordered by ITM scores, and the number of distinct pairs scored."""
        num_images, num_texts = itc.shape
        every = self.itm_top_k < 0
        tr_top = itc.topk(num_texts if every else min(self.itm_top_k, num_texts), dim=1).indices
        ir_top = itc.t().topk(num_images if every else min(self.itm_top_k, num_images), dim=1)
        ir_top = ir_top.indices
        # a pair (image i, text t) is the flat index i * T + t; sorted, hence image-major
        tr_flat = torch.arange(num_images)[:, None] * num_texts + tr_top
        ir_flat = ir_top * num_texts + torch.arange(num_texts)[:, None]
        pairs = torch.unique(torch.cat([tr_flat.flatten(), ir_flat.flatten()]))
        first, stop = offset * num_texts, (offset + len(self._images)) * num_texts
        local = pairs[(pairs >= first) & (pairs < stop)]
        gathered = comm.all_gather((local, self._score_pairs(local, texts, offset, num_texts)))
        keys = torch.cat([p for p, _ in gathered])
        order = keys.argsort()
        keys, values = keys[order], torch.cat([s for _, s in gathered])[order]
        tr_scores = values[torch.searchsorted(keys, tr_flat)]
        ir_scores = values[torch.searchsorted(keys, ir_flat)]
        tr_ranking = rerank_top_k(itc, tr_top, tr_scores)
        return tr_ranking, rerank_top_k(itc.t(), ir_top, ir_scores), len(pairs)

    @torch.no_grad()
    def _score_pairs(
        self, pairs: torch.Tensor, texts: list[dict], offset: int, num_texts: int
    ) -> torch.Tensor:
        """ITM match scores (P,) of sorted flat pairs (P,) whose image is local, in chunks of
        `itm_batch_size` pairs; each chunk hands the scorer its distinct images once."""
        scores = []
        for start in range(0, len(pairs), self.itm_batch_size):
            chunk = pairs[start : start + self.itm_batch_size]
            distinct, image_index = torch.unique(chunk // num_texts, return_inverse=True)
            images = [self._images[i - offset] for i in distinct.tolist()]
            chosen = [texts[t] for t in (chunk % num_texts).tolist()]
            scores.append(self.scorer(images, chosen, image_index).float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)
