"""FiberPretrainModel: FIBER's coarse stage (ITC + ITM + MLM) on the shared fused trunk.

Training (coarse_grained_spec.md b), per step on a local batch of B (image, caption) pairs:
* ITC with fusion off: L2-normalised pooled features of each tower, logits over the global
  batch gathered from every process (only the local rows keep gradient) plus an optional queue
  of detached past features; captions of the same image are never negatives.
* ITM with fusion on, cross-entropy on `itm_score(cls_feats)`. Negatives "hard" (pre-training):
  for every pair one hard-negative image and one hard-negative caption drawn from the ITC
  similarities over the global batch (never the positive or the same image), 3B pairs
  [pos; (img, neg txt); (neg img, txt)]. Negatives "random" (the ITM retrieval fine-tune,
  spec b.2 / c.3): B pairs, B // 2 kept, the others with the image replaced by a uniformly drawn
  image of the global batch with another image id; no ITC pass is needed.
* MLM: the masked captions of the mapper on the positive images, fused; CE on masked tokens.
The ITM and MLM fused passes share one forward (4B pairs with hard negatives) and one image
prefix for the B images and their negatives. Eval returns ITC embeddings for retrieval, and
`itm_match_scores` scores given pairs (one prefix per distinct image).
"""

import hashlib

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from torch import nn

from fiber_det.modeling.backbone.fiber import FiberTrunk
from fiber_det.modeling.text_padding import pad_texts
from fiber_det.modeling.vision_language.image_text_model import (
    FiberImageTextModel,
    image_text_config,
)
from fiber_det.modeling.vision_language.pretrain_heads import (
    FeatureQueue,
    ITMHead,
    MLMHead,
    contrastive_logits,
    contrastive_loss,
    gather_keep_local_grad,
    random_match_labels,
    same_image_mask,
    sample_hard_negatives,
    sample_random_negatives,
)

__all__ = ["FiberPretrainModel", "image_id_hash"]

ITM_NEGATIVES = ("hard", "random")


def image_id_hash(image_id) -> int:
    """A stable signed 64-bit id for any image_id (int or str), equal across processes."""
    digest = hashlib.blake2b(str(image_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@META_ARCH_REGISTRY.register()
class FiberPretrainModel(FiberImageTextModel):
    """The coarse image-text model. Head names follow the released checkpoint (see module doc)."""

    @configurable
    def __init__(
        self,
        *,
        trunk: FiberTrunk,
        hidden_size: int,
        vocab_size: int,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        itc_weight: float = 1.0,
        itm_weight: float = 1.0,
        mlm_weight: float = 1.0,
        temperature: float = 0.07,
        temperature_range: tuple[float, float] = (0.001, 1.0),
        queue_size: int = 0,
        mlm_head_eps: float = 1e-12,
        itm_negatives: str = "hard",
    ) -> None:
        super().__init__(
            trunk=trunk, hidden_size=hidden_size, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        self.itm_score = ITMHead(2 * hidden_size)
        self.mlm_score = MLMHead(hidden_size, vocab_size, mlm_head_eps)
        self.init_heads()
        self.temp = nn.Parameter(torch.tensor(float(temperature)))
        self.temperature_range = tuple(temperature_range)
        self.loss_weights = {"itc": itc_weight, "itm": itm_weight, "mlm": mlm_weight}
        self.queue = FeatureQueue(queue_size, hidden_size) if queue_size > 0 else None
        if itm_negatives not in ITM_NEGATIVES:
            raise ValueError(
                f"MODEL.PRETRAIN.ITM_NEGATIVES must be one of {ITM_NEGATIVES}, "
                f"got {itm_negatives!r}"
            )
        self.itm_negatives = itm_negatives

    @classmethod
    def from_config(cls, cfg) -> dict:
        pretrain = cfg.MODEL.PRETRAIN
        base = image_text_config(cfg)
        return {
            **base,
            "vocab_size": base["trunk"].text_vocab_size,
            "itc_weight": pretrain.ITC_WEIGHT,
            "itm_weight": pretrain.ITM_WEIGHT,
            "mlm_weight": pretrain.MLM_WEIGHT,
            "temperature": pretrain.TEMPERATURE,
            "temperature_range": tuple(pretrain.TEMPERATURE_RANGE),
            "queue_size": pretrain.QUEUE_SIZE,
            "mlm_head_eps": pretrain.MLM_HEAD_EPS,
            "itm_negatives": pretrain.ITM_NEGATIVES,
        }

    def itm_logits(self, images: torch.Tensor, input_ids, mask) -> torch.Tensor:
        """ITM logits (N, 2) of N (normalised image, caption) pairs."""
        return self.itm_score(self.fused_cls_feats(images, input_ids, mask))

    def mlm_logits(self, images: torch.Tensor, input_ids, mask) -> torch.Tensor:
        """MLM logits (B, L, V) of (masked) captions fused with their images."""
        prefix = self.trunk.encode_image_prefix(images)
        return self.mlm_score(self.fused_features(prefix, input_ids, mask)["text_feats"])

    @torch.no_grad()
    def itm_match_scores(
        self,
        images: list[torch.Tensor],
        texts: list[dict],
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ITM "match" logit itm_logits[:, 1] (P,) of P pairs (retrieval, spec f.12).

        images: M uint8 (3, H, W); texts: P caption dicts; image_index (P,): the image of each
        pair (default: pair p uses image p, M = P). Each distinct image runs the
        text-independent part of the image tower once. Runs in eval mode whatever the model's
        mode (evaluators call it after detectron2's inference context has restored training).
        """
        if image_index is None:
            image_index = torch.arange(len(images))
        if len(image_index) != len(texts):
            raise ValueError(f"{len(image_index)} image indices for {len(texts)} texts")
        batch = pad_texts(texts, self.trunk.text_pad_token_id)
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        was_training = self.training
        self.eval()
        try:
            prefix = self.trunk.encode_image_prefix(self.normalize_images(images))
            prefix = prefix.select(image_index.to(self.device))
            cls_feats = self.fused_features(prefix, ids, mask)["cls_feats"]
        finally:
            self.train(was_training)
        return self.itm_score(cls_feats)[:, 1]

    # ----- detectron2 entry point -----

    def forward(self, batched_inputs: list[dict]):
        """Training: {"loss_itc", "loss_itm", "loss_mlm"}; eval: per image
        {"image_embedding": (H,), "text_embeddings": (C, H)} for every caption in "texts"."""
        images = self.normalize_images([x["image"] for x in batched_inputs])
        if not self.training:
            return self.inference(images, batched_inputs)
        texts = [x["texts"][0] for x in batched_inputs]
        keys = ("input_ids", "attention_mask", "mlm_input_ids", "mlm_labels")
        text = pad_texts(
            texts, self.trunk.text_pad_token_id, keys if self.loss_weights["mlm"] else keys[:2]
        )
        text = {k: v.to(self.device) for k, v in text.items()}
        image_ids = torch.tensor(
            [image_id_hash(x["image_id"]) for x in batched_inputs], device=self.device
        )
        return self.losses(images, text, image_ids)

    def inference(self, images: torch.Tensor, batched_inputs: list[dict]) -> list[dict]:
        image_embeddings = self.encode_image_itc(images)
        texts = [t for x in batched_inputs for t in x["texts"]]
        batch = pad_texts(texts, self.trunk.text_pad_token_id)
        text_embeddings = self.encode_text_itc(
            batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        ).split([len(x["texts"]) for x in batched_inputs])
        return [
            {"image_embedding": image, "text_embeddings": text}
            for image, text in zip(image_embeddings, text_embeddings, strict=True)
        ]

    # ----- losses -----

    def losses(self, images: torch.Tensor, text: dict, image_ids: torch.Tensor) -> dict:
        """The weighted ITC / ITM / MLM losses of one local batch (see the module docstring).

        The unimodal ITC pass runs when ITC is on or hard ITM negatives need its similarities."""
        all_ids, _ = gather_keep_local_grad(image_ids)
        losses, similarities = {}, None
        hard_itm = self.loss_weights["itm"] and self.itm_negatives == "hard"
        if self.loss_weights["itc"] or hard_itm:
            loss, similarities = self._contrastive(images, text, all_ids)
            if self.loss_weights["itc"]:
                losses["loss_itc"] = self.loss_weights["itc"] * loss
        if self.loss_weights["itm"] or self.loss_weights["mlm"]:
            losses.update(self._fused_losses(images, text, image_ids, all_ids, similarities))
        return losses

    def _contrastive(self, images, text, all_ids) -> tuple[torch.Tensor, tuple]:
        """ITC loss on the global batch (+ queue) and the local rows' i2t / t2i similarities
        (B, N) over the global batch; then the queue takes the global features."""
        with torch.set_grad_enabled(self.loss_weights["itc"] > 0):
            image_feats = self.encode_image_itc(images)
            text_feats = self.encode_text_itc(text["input_ids"], text["attention_mask"])
        all_image, offset = gather_keep_local_grad(image_feats, global_loss=True)
        all_text, _ = gather_keep_local_grad(text_feats, global_loss=True)
        logits_i2t, logits_t2i = self._itc_logits(all_image, all_text, all_ids)
        loss = contrastive_loss(logits_i2t, logits_t2i) if self.loss_weights["itc"] else None
        num_global = all_ids.shape[0]
        local = slice(offset, offset + images.shape[0])
        similarities = (logits_i2t[local, :num_global], logits_t2i[local, :num_global])
        if self.queue is not None:
            self.queue.enqueue(all_image, all_text, all_ids)
        return loss, similarities

    def _itc_logits(self, all_image, all_text, all_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """Global i2t / t2i logits (N, N + F) with other captions of the same image masked."""
        with torch.no_grad():
            self.temp.clamp_(*self.temperature_range)
        queue_image, queue_text, queue_ids = (
            self.queue.contents() if self.queue is not None else (None, None, all_ids[:0])
        )
        logits_i2t, logits_t2i = contrastive_logits(
            all_image, all_text, self.temp, queue_image, queue_text
        )
        false_negatives = same_image_mask(all_ids, torch.cat([all_ids, queue_ids]))
        false_negatives[:, : all_ids.shape[0]].fill_diagonal_(False)
        return (
            logits_i2t.masked_fill(false_negatives, float("-inf")),
            logits_t2i.masked_fill(false_negatives, float("-inf")),
        )

    def _hard_negative_pairs(self, images, text, image_ids, all_ids, similarities):
        """The 3B ITM pairs: negative images, image rows into [images; negatives], ids, masks,
        labels [1] * B + [0] * 2B."""
        batch = images.shape[0]
        logits_i2t, logits_t2i = similarities
        forbidden = same_image_mask(image_ids, all_ids)
        with torch.no_grad():
            negative_images = sample_hard_negatives(logits_t2i, forbidden)
            negative_texts = sample_hard_negatives(logits_i2t, forbidden)
        all_images, _ = gather_keep_local_grad(images.detach())
        all_input_ids, all_masks = self._gather_text(text)
        positives = torch.arange(batch, device=self.device)
        rows = [positives, positives, positives + batch]
        ids = [text["input_ids"], all_input_ids[negative_texts], text["input_ids"]]
        masks = [text["attention_mask"], all_masks[negative_texts], text["attention_mask"]]
        labels = torch.zeros(3 * batch, dtype=torch.long, device=self.device)
        labels[:batch] = 1
        return all_images[negative_images], rows, ids, masks, labels

    def _random_negative_pairs(self, images, text, image_ids, all_ids):
        """The B pairs of the ITM fine-tune: B // 2 random rows keep their image (label 1); the
        others get a uniformly drawn global-batch image of another image id (label 0)."""
        batch = images.shape[0]
        labels = random_match_labels(batch, self.device)
        negative_rows = (labels == 0).nonzero().squeeze(1)
        with torch.no_grad():
            negatives = sample_random_negatives(same_image_mask(image_ids[negative_rows], all_ids))
        all_images, _ = gather_keep_local_grad(images.detach())
        rows = torch.arange(batch, device=self.device)
        rows[negative_rows] = batch + torch.arange(len(negative_rows), device=self.device)
        ids, masks = [text["input_ids"]], [text["attention_mask"]]
        return all_images[negatives], [rows], ids, masks, labels

    def _fused_losses(self, images, text, image_ids, all_ids, similarities) -> dict:
        """ITM on the hard or random negative pairs and MLM, in one fused pass."""
        batch = images.shape[0]
        extra_images, rows_image, ids, masks, labels = images[:0], [], [], [], None
        if self.loss_weights["itm"] and self.itm_negatives == "hard":
            extra_images, rows_image, ids, masks, labels = self._hard_negative_pairs(
                images, text, image_ids, all_ids, similarities
            )
        elif self.loss_weights["itm"]:
            extra_images, rows_image, ids, masks, labels = self._random_negative_pairs(
                images, text, image_ids, all_ids
            )
        if self.loss_weights["mlm"]:
            ids.append(text["mlm_input_ids"])
            masks.append(text["attention_mask"])
            rows_image.append(torch.arange(batch, device=self.device))
        prefix = self.trunk.encode_image_prefix(torch.cat([images, extra_images]))
        prefix = prefix.select(torch.cat(rows_image))
        length = max(t.shape[1] for t in ids)
        pad = self.trunk.text_pad_token_id
        feats = self.fused_features(
            prefix,
            torch.cat([F.pad(t, (0, length - t.shape[1]), value=pad) for t in ids]),
            torch.cat([F.pad(m, (0, length - m.shape[1]), value=0) for m in masks]),
        )
        losses = {}
        if self.loss_weights["itm"]:
            logits = self.itm_score(feats["cls_feats"][: labels.shape[0]])
            losses["loss_itm"] = self.loss_weights["itm"] * F.cross_entropy(logits, labels)
        if self.loss_weights["mlm"]:
            text_feats = feats["text_feats"][-batch:, : text["mlm_labels"].shape[1]]
            losses["loss_mlm"] = self.loss_weights["mlm"] * self._mlm_loss(
                text_feats, text["mlm_labels"]
            )
        return losses

    def _mlm_loss(self, text_feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over masked positions only (labels -100 elsewhere); 0 when none (the
        head still joins the graph, so DDP sees every parameter used)."""
        selected = labels != -100
        if not bool(selected.any()):
            return self.mlm_score(text_feats[:1, :1]).sum() * 0.0
        return F.cross_entropy(self.mlm_score(text_feats[selected]), labels[selected])

    def _gather_text(self, text: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Global (N, L) caption ids and masks, padded to the longest caption of any process."""
        length = max(comm.all_gather(int(text["input_ids"].shape[1])))
        pad = self.trunk.text_pad_token_id
        extra = length - text["input_ids"].shape[1]
        input_ids, _ = gather_keep_local_grad(F.pad(text["input_ids"], (0, extra), value=pad))
        masks, _ = gather_keep_local_grad(F.pad(text["attention_mask"], (0, extra), value=0))
        return input_ids, masks
