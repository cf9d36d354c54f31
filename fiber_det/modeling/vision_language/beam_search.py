"""Model-agnostic caption decoding: length-normalised beam search, greedy decoding and
multinomial sampling (for CIDEr optimisation).

All drive a step function `step(input_ids, state) -> (logits, state)`:
- `input_ids` (N, t) holds every token so far (start tokens included); `logits` (N, V) score the
  next token. A decoder without a cache re-runs the prefix; a cached one reads only
  `input_ids[:, -1:]` and its keys / values from `state`.
- `state` is None or a (nested) tuple / list / dict of tensors whose dim 0 is the batch, e.g.
  the image features plus the key/value cache. The first call sees the B images; beam search
  then repeats every row `beam_size` times (rows b * K + k) and re-orders the rows with the
  beams after every step (`reorder_state`, default: index dim 0 of every tensor). Sampling
  repeats the rows `num_samples` times before its first call.

The search follows microsoft/FIBER's `caption_test_step` (coarse_grained_spec.md c.4): the
suppressed ids (`<mask>`) get logit -10000 before log_softmax; the first step takes the top K
tokens; a hypothesis ranks by its summed log-probability divided by its length. A finished
hypothesis (last token an end id: `</s>` or `<pad>`) stays in the beam and continues with
`<pad>` at no cost and no length; as in the original's flat top-K over (beam x vocabulary), it
enters that top-K once per vocabulary entry, so it can fill several beam slots. Decoding stops
when every beam has finished or at `max_length` tokens (start included: the original's
`max_text_len`, 50); the answer is each image's best beam, finished or not. One deliberate
difference: the original keeps the lengths in beam-slot order when beams are re-ordered, so a
hypothesis can be normalised by another's length; here lengths move with their hypotheses.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

SUPPRESSED_LOGIT = -10000.0

StepFunction = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]


@dataclass
class DecodeOutput:
    """sequences: (B, T) generated ids (start tokens excluded; `pad_id` after an end id);
    scores: (B,) summed log-probability / number of tokens up to and including the end id."""

    sequences: torch.Tensor
    scores: torch.Tensor


def map_state(function: Callable[[torch.Tensor], torch.Tensor], state: Any) -> Any:
    """`function` applied to every tensor of a nested tuple / list / dict (other leaves kept)."""
    if isinstance(state, torch.Tensor):
        return function(state)
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(function, item) for item in state)
    if isinstance(state, dict):
        return {key: map_state(function, value) for key, value in state.items()}
    return state


def reorder_rows(state: Any, rows: torch.Tensor) -> Any:
    """Every tensor of `state` indexed by `rows` (N,) along dim 0."""
    return map_state(lambda tensor: tensor.index_select(0, rows), state)


def _log_probs(logits: torch.Tensor, suppressed: torch.Tensor) -> torch.Tensor:
    """(N, V) float32 log-probabilities with the suppressed ids' logits set to -10000."""
    if logits.dim() != 2:
        raise ValueError(f"step logits must be (N, V), got shape {tuple(logits.shape)}")
    logits = logits.float()
    if suppressed.numel():
        logits = logits.index_fill(1, suppressed.to(logits.device), SUPPRESSED_LOGIT)
    return torch.log_softmax(logits, dim=-1)


def _check_arguments(start_ids: torch.Tensor, max_length: int, end_ids: Sequence[int]) -> int:
    if start_ids.dim() != 2 or start_ids.size(1) == 0:
        raise ValueError(f"start_ids must be (B, T0) with T0 >= 1, got {tuple(start_ids.shape)}")
    if max_length <= start_ids.size(1):
        raise ValueError(f"max_length {max_length} leaves no step after {start_ids.size(1)} ids")
    if not end_ids:
        raise ValueError("end_ids must name at least one token (e.g. </s> and <pad>)")
    return max_length - start_ids.size(1)


def _decode_rows(
    step: StepFunction,
    start_ids: torch.Tensor,
    state: Any,
    choose: Callable[[torch.Tensor], torch.Tensor],
    max_length: int,
    end_ids: Sequence[int],
    pad_id: int,
    suppress_ids: Sequence[int],
) -> DecodeOutput:
    """Extends every row of start_ids (N, T0) by `choose(log_probs (N, V)) -> (N,)` tokens."""
    num_steps = _check_arguments(start_ids, max_length, end_ids)
    suppressed = torch.tensor(list(suppress_ids), dtype=torch.long)
    device = start_ids.device
    end = torch.tensor(list(end_ids), dtype=torch.long, device=device)
    finished = torch.zeros(start_ids.size(0), dtype=torch.bool, device=device)
    total = torch.zeros(start_ids.size(0), device=device)
    lengths = torch.zeros_like(total)
    ids = start_ids
    for _ in range(num_steps):
        logits, state = step(ids, state)
        log_probs = _log_probs(logits, suppressed)
        tokens = choose(log_probs)
        total += log_probs.gather(1, tokens[:, None])[:, 0].masked_fill(finished, 0.0)
        lengths += (~finished).float()
        tokens = tokens.masked_fill(finished, pad_id)
        finished = finished | torch.isin(tokens, end)
        ids = torch.cat([ids, tokens[:, None]], dim=1)
        if finished.all():
            break
    return DecodeOutput(ids[:, start_ids.size(1) :], total / lengths)


@torch.no_grad()
def greedy_decode(
    step: StepFunction,
    start_ids: torch.Tensor,
    state: Any = None,
    *,
    max_length: int,
    end_ids: Sequence[int],
    pad_id: int,
    suppress_ids: Sequence[int] = (),
) -> DecodeOutput:
    """Arg-max decoding (what beam search with beam 1 returns), from start_ids (B, T0)."""
    choose = partial(torch.argmax, dim=1)
    return _decode_rows(step, start_ids, state, choose, max_length, end_ids, pad_id, suppress_ids)


@torch.no_grad()
def sample_decode(
    step: StepFunction,
    start_ids: torch.Tensor,
    state: Any = None,
    *,
    num_samples: int = 5,
    max_length: int = 50,
    end_ids: Sequence[int],
    pad_id: int,
    suppress_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> DecodeOutput:
    """`num_samples` captions per image by multinomial sampling, as microsoft/FIBER's CIDEr
    optimisation draws them (5 per image): rows b * num_samples + k of (B * num_samples, T);
    scores are mean log-probabilities (no gradient: re-score the samples to train)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    rows = start_ids.repeat_interleave(num_samples, dim=0)
    state = map_state(lambda tensor: tensor.repeat_interleave(num_samples, dim=0), state)

    def choose(log_probs: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(log_probs.exp(), 1, generator=generator)[:, 0]

    return _decode_rows(step, rows, state, choose, max_length, end_ids, pad_id, suppress_ids)


@torch.no_grad()
def beam_search(
    step: StepFunction,
    start_ids: torch.Tensor,
    state: Any = None,
    *,
    beam_size: int = 5,
    max_length: int = 50,
    end_ids: Sequence[int],
    pad_id: int,
    suppress_ids: Sequence[int] = (),
    reorder_state: Callable[[Any, torch.Tensor], Any] = reorder_rows,
) -> DecodeOutput:
    """Length-normalised beam search from start_ids (B, T0); returns each image's best beam."""
    num_steps = _check_arguments(start_ids, max_length, end_ids)
    suppressed = torch.tensor(list(suppress_ids), dtype=torch.long)
    device = start_ids.device
    end = torch.tensor(list(end_ids), dtype=torch.long, device=device)
    batch, width = start_ids.size(0), beam_size

    logits, state = step(start_ids, state)
    log_probs = _log_probs(logits, suppressed)
    if not 1 <= width <= log_probs.size(1):
        raise ValueError(f"beam_size must be in [1, {log_probs.size(1)}], got {width}")
    first_log_probs, tokens = log_probs.topk(width, dim=1)  # (B, K), best first
    total = first_log_probs.reshape(-1)  # (B * K,) summed log-probabilities
    lengths = torch.ones_like(total)
    tokens = tokens.reshape(-1)
    finished = torch.isin(tokens, end)
    ids = torch.cat([start_ids.repeat_interleave(width, dim=0), tokens[:, None]], dim=1)
    state = map_state(lambda tensor: tensor.repeat_interleave(width, dim=0), state)
    row_offsets = torch.arange(batch, device=device)[:, None] * width

    for _ in range(num_steps - 1):
        if finished.all():
            break
        logits, state = step(ids, state)
        # Two-stage top-K, equal to the flat top-K over (beam x vocabulary): a candidate in the
        # overall top K is in its own beam's top K (one beam has one length, one ranking).
        row_log_probs, row_tokens = _log_probs(logits, suppressed).topk(width, dim=1)
        row_log_probs = row_log_probs.masked_fill(finished[:, None], 0.0)  # pad at no cost
        row_tokens = row_tokens.masked_fill(finished[:, None], pad_id)
        candidates = (total[:, None] + row_log_probs).view(batch, width * width)
        candidate_lengths = lengths + (~finished).float()  # (B * K,)
        row_lengths = candidate_lengths.repeat_interleave(width).view(batch, width * width)
        chosen = (candidates / row_lengths).topk(width, dim=1).indices  # (B, K), best first
        parents = (chosen // width + row_offsets).reshape(-1)
        total = candidates.gather(1, chosen).reshape(-1)
        lengths = candidate_lengths[parents]
        tokens = row_tokens.view(batch, width * width).gather(1, chosen).reshape(-1)
        finished = finished[parents] | torch.isin(tokens, end)
        ids = torch.cat([ids[parents], tokens[:, None]], dim=1)
        state = reorder_state(state, parents)

    best = row_offsets[:, 0]  # beam 0 of each image ranks first
    return DecodeOutput(ids[best, start_ids.size(1) :], (total / lengths)[best])
