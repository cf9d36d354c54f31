"""CIDEr optimisation of the caption model (coarse_grained_spec.md c.4 and f.11).

Per image `num_samples` captions are drawn by multinomial sampling (`<mask>` suppressed, as the
original), re-scored with gradient (mean token log-probability over each sample's tokens up to
and including its end token, log(softmax + 1e-9) as microsoft/FIBER), and rewarded with CIDEr-D
against the image's references:

    loss = sum_samples mean_logp * (100 * baseline - 100 * CIDEr) / B

* "cider_reinforce": the original's REINFORCE with the constant baseline CIDEr = 1.0;
* "cider_scst": the standard self-critical baseline (Rennie et al. 2017): the CIDEr of the
  image's greedy caption.

The model never sees strings: CIDEr-D is computed on token-id n-grams (`TokenCiderReward`, with
fiber_det.evaluation.cider.CiderD), every caption without `<s>` / `<pad>` and ending in one
`</s>` (the original appends " <eos>" to every caption). Its document frequencies should come
from the training references: the trainer calls `model.set_caption_reward(TokenCiderReward(
corpus, ...))` (or any callable with the same signature). Without one, the frequencies come from
the current batch's references (one document per image, as pycocoevalcap computes them over the
evaluated set), with a warning. Unlike the original, the token n-grams are BPE pieces, not words
with the final "." removed.
"""

import logging
from collections.abc import Callable, Sequence

import torch
from detectron2.utils.logger import log_first_n

from fiber_det.evaluation.cider import CiderD
from fiber_det.modeling.vision_language.beam_search import greedy_decode, map_state, sample_decode

__all__ = ["CaptionRewardMixin", "TokenCiderReward", "reinforce_loss"]

# candidates (N token-id lists), references (N lists of token-id lists) -> N rewards
RewardFunction = Callable[[list[list[int]], list[list[list[int]]]], list[float]]


def reinforce_loss(
    mean_log_probs: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor | float
) -> torch.Tensor:
    """sum over (B, K) samples of mean_logp * (100 baseline - 100 reward), divided by B.

    mean_log_probs, rewards: (B, K); baseline: a float or (B, K). A sample that beats the
    baseline gets its log-probability pushed up by gradient descent."""
    if mean_log_probs.shape != rewards.shape or mean_log_probs.dim() != 2:
        raise ValueError(
            f"mean_log_probs {tuple(mean_log_probs.shape)} and rewards "
            f"{tuple(rewards.shape)} must both be (B, K)"
        )
    advantage = 100.0 * baseline - 100.0 * rewards.to(mean_log_probs)
    return (mean_log_probs * advantage).sum() / mean_log_probs.shape[0]


class TokenCiderReward:
    """CIDEr-D of token-id captions, document frequencies from `corpus` (per training image the
    list of its references' token ids). `end_id`: `</s>`; `drop_ids`: `<s>`, `<pad>`."""

    def __init__(self, corpus: list[list[Sequence[int]]], end_id: int, drop_ids: Sequence[int]):
        self.end_id = int(end_id)
        self.drop_ids = {int(i) for i in drop_ids} | {self.end_id}
        self.cider = CiderD([[self.words(r) for r in refs] for refs in corpus])

    def words(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Token ids -> "id id ... </s>-id": special ids removed, one end id appended."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return " ".join([str(i) for i in ids if int(i) not in self.drop_ids] + [str(self.end_id)])

    def __call__(
        self, candidates: list[list[int]], references: list[list[list[int]]]
    ) -> list[float]:
        words = [[self.words(r) for r in refs] for refs in references]
        return self.cider([self.words(c) for c in candidates], words)


class CaptionRewardMixin:
    """CIDEr optimisation for FiberCaptionModel (needs its decoding and scoring methods)."""

    caption_reward: RewardFunction | None = None

    def set_caption_reward(self, reward: RewardFunction | None) -> None:
        """The reward of CIDEr optimisation, e.g. TokenCiderReward over the training captions."""
        self.caption_reward = reward

    def _reward_function(self, references: list[list[torch.Tensor]]) -> RewardFunction:
        if self.caption_reward is not None:
            return self.caption_reward
        if len(references) < 2:
            raise ValueError(
                "CIDEr optimisation without a corpus reward (set_caption_reward) needs at least "
                "2 images per batch for its document frequencies"
            )
        log_first_n(
            logging.WARNING,
            "no caption reward set (set_caption_reward): CIDEr-D document frequencies come from "
            "each batch's references",
            n=1,
        )
        ids = self.special_ids
        return TokenCiderReward(references, ids["eos"], (ids["bos"], ids["pad"]))

    def _rewards(
        self, sequences: torch.Tensor, references: list[list[torch.Tensor]], repeats: int
    ) -> torch.Tensor:
        """CIDEr-D (N,) of generated rows (N, T), row n against image n // repeats."""
        reward = self._reward_function(references)
        candidates = [row.tolist() for row in sequences]
        refs = [[r.tolist() for r in references[n // repeats]] for n in range(len(candidates))]
        return torch.tensor(reward(candidates, refs), dtype=torch.float32, device=self.device)

    def sample_mean_log_probs(self, image_key_values, sequences: torch.Tensor) -> torch.Tensor:
        """With gradient: mean log-probability (N,) of each sampled row (N, T) after `<s>`, over
        its tokens up to and including the end token (pads excluded)."""
        ids = self.special_ids
        bos = torch.full_like(sequences[:, :1], ids["bos"])
        input_ids = torch.cat([bos, sequences], dim=1)
        hidden, _ = self.trunk.decode_text(input_ids, image_key_values, input_ids != ids["pad"])
        log_probs = torch.log(self.lm_logits(hidden).softmax(dim=-1) + 1e-9)
        targets = torch.cat([input_ids[:, 1:], torch.full_like(bos, ids["pad"])], dim=1)
        valid = targets != ids["pad"]
        token_log_probs = log_probs.gather(2, targets[..., None])[..., 0] * valid
        return token_log_probs.sum(dim=1) / valid.sum(dim=1).clamp(min=1)

    def cider_loss(self, image_key_values, references: list[list[torch.Tensor]]) -> torch.Tensor:
        """The RL loss of one batch: image keys / values from `encode_images`, per image its
        reference token ids (each with or without `<s>` / `</s>`)."""
        batch, num_samples = len(references), self.num_samples
        start = torch.full((batch, 1), self.special_ids["bos"], device=self.device)
        state = {"image": image_key_values, "cache": None}
        samples = sample_decode(
            self.decoding_step(), start, state, num_samples=num_samples, **self.decode_options()
        ).sequences
        rewards = self._rewards(samples, references, num_samples).view(batch, num_samples)
        baseline: torch.Tensor | float = 1.0
        if self.objective == "cider_scst":
            greedy = greedy_decode(self.decoding_step(), start, state, **self.decode_options())
            baseline = self._rewards(greedy.sequences, references, 1)[:, None].expand_as(rewards)
        repeated = map_state(lambda t: t.repeat_interleave(num_samples, dim=0), image_key_values)
        mean_log_probs = self.sample_mean_log_probs(repeated, samples).view(batch, num_samples)
        return reinforce_loss(mean_log_probs, rewards, baseline)
