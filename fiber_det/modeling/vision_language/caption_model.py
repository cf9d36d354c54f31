"""FiberCaptionModel: the coarse trunk turned into an image-to-text decoder (coarse_grained_spec.md
c.4, microsoft/FIBER `infer_caption` / `caption_test_step`).

* Encoder: the Swin alone (no fusion), its raw last-stage tokens (B, N, C) without the final norm.
* Decoder: the RoBERTa tower as a causal LM. Text layers below the fused ones use self-attention
  only; each fused layer keeps its text-queries-image cross-attention (`t2i`). A fused layer
  paired with an earlier Swin stage (FIBER-B: layers 6-9, stage 3) reads the last-stage tokens
  through `cross_modal_att_layers[layer]` (Linear last-stage width -> that stage's width; the
  original creates one per layer below the first last-stage layer, indices below the first
  fused layer unused); layers paired with the last stage read the tokens directly. Every layer
  applies its output LayerNorm. Then `cross_modal_text_transform` -> `mlm_score` (the MLM head
  as LM head).
* Training: MLE (targets = ids shifted left, `<pad>` appended, pads ignored; mean CE), or CIDEr
  optimisation (`caption_rl.py`). Inference: beam search (or greedy) with a key/value cache, so
  each step runs one token; `<mask>` is never generated.

The other coarse modules (`cross_modal_image_transform*`, poolers, `_itc` transforms) are kept
from FiberImageTextModel, as the released caption checkpoint has them.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from fiber_det.modeling.backbone.fiber import FiberTrunk
from fiber_det.modeling.backbone.roberta import KeyValue
from fiber_det.modeling.text_padding import pad_texts
from fiber_det.modeling.vision_language.beam_search import (
    DecodeOutput,
    beam_search,
    greedy_decode,
    reorder_rows,
)
from fiber_det.modeling.vision_language.caption_rewards import CaptionRewardMixin
from fiber_det.modeling.vision_language.image_text_model import (
    FiberImageTextModel,
    image_text_config,
)
from fiber_det.modeling.vision_language.pretrain_heads import MLMHead

__all__ = ["FiberCaptionModel", "caption_targets"]

OBJECTIVES = ("mle", "cider_reinforce", "cider_scst")


def caption_targets(input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Next-token targets (B, L): ids shifted left, `<pad>` appended, every pad -> -100."""
    targets = torch.cat([input_ids[:, 1:], torch.full_like(input_ids[:, :1], pad_id)], dim=1)
    return targets.masked_fill(targets == pad_id, -100)


def projection_widths(layer_stages: dict[int, int], dims: list[int]) -> list[int]:
    """Output widths of `cross_modal_att_layers[0..K-1]`, K = the first text layer paired with
    the last stage (when an earlier stage is paired at all): the paired stage's width, and for
    the unused layers below the first fused one the first fused layer's width (FIBER-B: ten
    Linear 1024 -> 512, indices 0-5 unused, as the original)."""
    last_stage = len(dims) - 1
    earlier = [layer for layer, stage in layer_stages.items() if stage < last_stage]
    if not earlier:
        return []
    first_width = dims[layer_stages[min(layer_stages)]]
    return [
        dims[layer_stages[i]] if i in layer_stages else first_width for i in range(max(earlier) + 1)
    ]


def reorder_decoding_state(state: dict, rows: torch.Tensor) -> dict:
    """Beam re-ordering of a decoding state: only the self-attention cache moves; a beam's
    parent always belongs to the same image, so the image keys / values stay as they are."""
    return {"image": state["image"], "cache": reorder_rows(state["cache"], rows)}


@META_ARCH_REGISTRY.register()
class FiberCaptionModel(CaptionRewardMixin, FiberImageTextModel):
    """Image captioning on the coarse trunk (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        trunk: FiberTrunk,
        hidden_size: int,
        vocab_size: int,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        mask_token_id: int,
        mlm_head_eps: float = 1e-12,
        beam_size: int = 5,
        max_length: int = 50,
        objective: str = "mle",
        num_samples: int = 5,
        mle_weight: float = 0.3,
    ) -> None:
        super().__init__(
            trunk=trunk, hidden_size=hidden_size, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        if objective not in OBJECTIVES:
            raise ValueError(f"caption objective must be one of {OBJECTIVES}, got {objective!r}")
        if not 0 <= mask_token_id < vocab_size:
            raise ValueError(
                f"mask_token_id {mask_token_id} is outside the vocabulary {vocab_size}"
            )
        self.mlm_score = MLMHead(hidden_size, vocab_size, mlm_head_eps)
        self.layer_stages = trunk.fused_layer_stages()
        dims = list(trunk.image_channels.values())
        self.cross_modal_att_layers = nn.ModuleList(
            nn.Linear(dims[-1], width) for width in projection_widths(self.layer_stages, dims)
        )
        self.init_heads()
        self.special_ids = {**trunk.text_special_token_ids, "mask": mask_token_id}
        self.beam_size = beam_size
        self.max_length = max_length
        self.objective = objective
        self.num_samples = num_samples
        self.mle_weight = mle_weight

    @classmethod
    def from_config(cls, cfg) -> dict:
        pretrain, caption = cfg.MODEL.PRETRAIN, cfg.MODEL.PRETRAIN.CAPTION
        base = image_text_config(cfg)
        return {
            **base,
            "vocab_size": base["trunk"].text_vocab_size,
            "mask_token_id": caption.MASK_TOKEN_ID,
            "mlm_head_eps": pretrain.MLM_HEAD_EPS,
            "beam_size": caption.BEAM_SIZE,
            "max_length": caption.MAX_LENGTH,
            "objective": caption.OBJECTIVE,
            "num_samples": caption.NUM_SAMPLES,
            "mle_weight": caption.MLE_WEIGHT,
        }

    # ----- encoder and decoder -----

    def image_contexts(self, image_tokens: torch.Tensor) -> dict[int, torch.Tensor]:
        """Cross-attention input of every fused text layer from the last-stage tokens (B, N, C)."""
        last_stage = len(self.trunk.image_channels) - 1
        return {
            layer: image_tokens
            if stage == last_stage
            else self.cross_modal_att_layers[layer](image_tokens)
            for layer, stage in self.layer_stages.items()
        }

    def encode_images(self, images: torch.Tensor) -> list[KeyValue | None]:
        """Normalised images (B, 3, H, W) -> per text layer the t2i keys / values (None where
        the layer has no cross-attention), computed once per image."""
        image_tokens = self.trunk(images, fuse=False).image_tokens
        return self.trunk.text_image_keys_values(self.image_contexts(image_tokens))

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final decoder states (..., D) -> vocabulary logits (..., V)."""
        return self.mlm_score(self.cross_modal_text_transform(hidden))

    def caption_logits(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) of captions (B, L) on normalised images."""
        hidden, _ = self.trunk.decode_text(input_ids, self.encode_images(images), attention_mask)
        return self.lm_logits(hidden)

    def mle_loss(self, logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Mean CE of logits (B, L, V) against the next tokens of input_ids (B, L)."""
        targets = caption_targets(input_ids, self.special_ids["pad"])
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    # ----- decoding -----

    def _step_cached(self, input_ids: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """beam_search step: runs only the ids after the cached ones; logits (N, V)."""
        cache = state["cache"]
        past = 0 if cache is None else cache[0][0].shape[2]
        hidden, cache = self.trunk.decode_text(input_ids[:, past:], state["image"], cache=cache)
        return self.lm_logits(hidden[:, -1]), {"image": state["image"], "cache": cache}

    def _step_uncached(self, input_ids: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """beam_search step re-running the whole prefix (the original's decode)."""
        hidden, _ = self.trunk.decode_text(input_ids, state["image"])
        return self.lm_logits(hidden[:, -1]), state

    def decoding_step(self, cached: bool = True):
        """The step function for `beam_search`, with or without the cache; its state is
        {"image": `encode_images(...)`, "cache": None}."""
        return self._step_cached if cached else self._step_uncached

    def decode_options(self) -> dict:
        """Keyword arguments of beam_search / greedy_decode / sample_decode."""
        ids = self.special_ids
        return {
            "max_length": self.max_length,
            "end_ids": (ids["eos"], ids["pad"]),
            "pad_id": ids["pad"],
            "suppress_ids": (ids["mask"],),
        }

    @torch.no_grad()
    def generate(
        self, images: torch.Tensor, beam_size: int | None = None, cached: bool = True
    ) -> DecodeOutput:
        """Captions of normalised images (B, 3, H, W): (B, T) ids after `<s>` (beam 1 = greedy)."""
        beam_size = self.beam_size if beam_size is None else beam_size
        state = {"image": self.encode_images(images), "cache": None}
        start = torch.full((images.shape[0], 1), self.special_ids["bos"], device=self.device)
        step = self.decoding_step(cached)
        if beam_size == 1:
            return greedy_decode(step, start, state, **self.decode_options())
        return beam_search(
            step,
            start,
            state,
            beam_size=beam_size,
            reorder_state=reorder_decoding_state,
            **self.decode_options(),
        )

    def strip_caption(self, sequence: torch.Tensor) -> torch.Tensor:
        """Generated ids (T,) -> the caption's ids: cut at the first `</s>` / `<pad>`, no `<s>`."""
        ids = self.special_ids
        ends = torch.isin(sequence, torch.tensor([ids["eos"], ids["pad"]], device=sequence.device))
        length = int(ends.long().argmax()) if bool(ends.any()) else sequence.numel()
        caption = sequence[:length]
        return caption[caption != ids["bos"]]

    # ----- detectron2 entry point -----

    def forward(self, batched_inputs: list[dict]):
        """Training: {"loss_caption"} (+ {"loss_caption_rl"} with CIDEr optimisation);
        eval: [{"caption_ids": (T,)}] without `<s>`, `</s>` or padding."""
        images = self.normalize_images([x["image"] for x in batched_inputs])
        if not self.training:
            sequences = self.generate(images).sequences
            return [{"caption_ids": self.strip_caption(s).cpu()} for s in sequences]
        text = pad_texts(batched_inputs, self.special_ids["pad"])
        input_ids = text["input_ids"].to(self.device)
        image_key_values = self.encode_images(images)
        hidden, _ = self.trunk.decode_text(
            input_ids, image_key_values, text["attention_mask"].to(self.device)
        )
        mle = self.mle_loss(self.lm_logits(hidden), input_ids)
        if self.objective == "mle":
            return {"loss_caption": mle}
        references = [x["reference_ids"] for x in batched_inputs]
        rl = self.cider_loss(image_key_values, references)
        return {
            "loss_caption": self.mle_weight * mle,
            "loss_caption_rl": (1 - self.mle_weight) * rl,
        }
