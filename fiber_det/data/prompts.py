"""Text prompts for grounding detection: class names -> caption + char spans -> token maps.

One implementation serves training (the original's prompt policies, fine_grained_spec.md e.1),
evaluation (fixed-order prompts chunked to the token limit, f.2) and the user-facing predictor.
The positive map is binary: the original L1-normalises it in the dataset and re-binarises it in
the collator (spec h.4), so the effective target is binary.
"""

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

Span = tuple[int, int]
SEPARATOR = ". "
# The original's Objects365 path keeps positives + negatives below 254 tokens (microsoft/FIBER
# O2G, check_for_positive_overflow): 256 minus <s> and </s>.
SPECIAL_TOKENS_PER_PROMPT = 2


@dataclass
class TokenizedPrompt:
    """A caption tokenized without padding: input_ids / attention_mask (L,), offsets (L, 2).

    `offsets[i]` is the [start, end) character span of token i in `caption` ((0, 0) for special
    tokens); `covered_chars` is the end of the last real token, so a char span ending after it
    was cut off by truncation.
    """

    caption: str
    input_ids: Tensor
    attention_mask: Tensor
    offsets: Tensor
    covered_chars: int


class TrainingPrompt(NamedTuple):
    """A training prompt, the (N, L) positive map of its N instances and which ones survived."""

    prompt: dict
    gt_positive_map: Tensor
    keep: Tensor


def clean_name(name: str) -> str:
    """Category name as the original writes it in captions: '(...)' removed, '_' -> ' '."""
    name = re.sub(r"\(.*?\)", "", name).replace("_", " ")
    return re.sub(r"\s+", " ", name).strip()


def build_caption(
    names: Sequence[str],
    separator: str = SEPARATOR,
    affixes: Sequence[tuple[str, str]] | None = None,
) -> tuple[str, list[Span]]:
    """Join names with `separator` (no trailing one); return the caption and each name's span.

    `affixes` optionally gives a (prefix, suffix) per name (the original's ODinW CAPTION_PROMPT);
    the span then covers only the name, as in microsoft/FIBER's evaluation prompts.
    """
    if affixes is not None and len(affixes) != len(names):
        raise ValueError(f"affixes has {len(affixes)} entries for {len(names)} names")
    parts: list[str] = []
    spans: list[Span] = []
    length = 0
    for index, name in enumerate(names):
        prefix, suffix = affixes[index] if affixes is not None else ("", "")
        piece = (separator if index else "") + prefix
        start = length + len(piece)
        spans.append((start, start + len(name)))
        piece += name + suffix
        parts.append(piece)
        length += len(piece)
    return "".join(parts), spans


def tokenize_prompt(
    tokenizer: PreTrainedTokenizerBase, caption: str, max_len: int = 256
) -> TokenizedPrompt:
    """Tokenize `caption` with special tokens, truncated to `max_len`, unpadded."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer (offsets needed)")
    encoded = tokenizer(caption, truncation=True, max_length=max_len, return_offsets_mapping=True)
    offsets = torch.tensor(encoded["offset_mapping"], dtype=torch.long).reshape(-1, 2)
    return TokenizedPrompt(
        caption=caption,
        input_ids=torch.tensor(encoded["input_ids"], dtype=torch.long),
        attention_mask=torch.tensor(encoded["attention_mask"], dtype=torch.long),
        offsets=offsets,
        covered_chars=int(offsets[:, 1].max()) if len(offsets) else 0,
    )


def positive_map_from_spans(
    tokenized: TokenizedPrompt, spans: Sequence[Sequence[Span]]
) -> tuple[Tensor, list[int]]:
    """Binary map (R, L): for each char span of row r, its first to last overlapping token.

    Tokens in between are included even when their trimmed offsets are empty (a lone "Ġ"), as
    the original's char_to_token(start) .. char_to_token(end - 1) range (microsoft/FIBER MC).

    Returns the map and the rows that could not be mapped completely (a span cut off by
    truncation, or one covering no token, e.g. only spaces); those rows are all zero, never
    partially mapped. A span outside the caption raises ValueError.
    """
    num_tokens = len(tokenized.input_ids)
    positive_map = torch.zeros(len(spans), num_tokens)
    flat = [(row, beg, end) for row, row_spans in enumerate(spans) for beg, end in row_spans]
    if not flat:
        return positive_map, [row for row, row_spans in enumerate(spans) if not row_spans]
    rows, begs, ends = torch.tensor(flat, dtype=torch.long).unbind(1)
    bad = (begs < 0) | (ends <= begs) | (ends > len(tokenized.caption))
    if bad.any():
        index = int(bad.nonzero()[0])
        raise ValueError(
            f"span {flat[index][1:]} of row {flat[index][0]} lies outside the caption "
            f"(length {len(tokenized.caption)}): {tokenized.caption!r}"
        )
    tok_beg, tok_end = tokenized.offsets.unbind(1)
    overlap = (
        (tok_beg[None] < ends[:, None]) & (tok_end[None] > begs[:, None]) & (tok_end > tok_beg)
    )
    # like the original (first token to last token of each span), tokens in between included
    token_index = torch.arange(num_tokens)
    first = torch.where(overlap, token_index, num_tokens).min(1, keepdim=True).values
    last = torch.where(overlap, token_index, -1).max(1, keepdim=True).values
    overlap = (token_index >= first) & (token_index <= last)
    span_ok = overlap.any(1) & (ends <= tokenized.covered_chars)
    failed_spans = torch.zeros(len(spans), dtype=torch.long).index_add_(0, rows, (~span_ok).long())
    has_spans = torch.tensor([len(row_spans) > 0 for row_spans in spans], dtype=torch.bool)
    row_ok = (failed_spans == 0) & has_spans
    positive_map.index_put_((rows,), overlap.float(), accumulate=True)
    positive_map = (positive_map > 0).float() * row_ok[:, None].float()
    return positive_map, (~row_ok).nonzero().flatten().tolist()


def _name_token_costs(names: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens each name adds to a caption, counted as ' name.' (the original's per-class cost)."""
    encoded = tokenizer([f" {name}." for name in names], add_special_tokens=False)
    return [len(ids) for ids in encoded["input_ids"]]


def chunk_vocabulary(
    names: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_len: int = 256,
    max_per_chunk: int | None = None,
) -> list[list[int]]:
    """Split names into consecutive chunks of indices; each chunk's caption fits in `max_len`.

    Every index appears exactly once, in order. `max_per_chunk` additionally caps the number of
    names per chunk (the original's TEST.CHUNKED_EVALUATION, 40 for LVIS).
    """
    budget = max_len - SPECIAL_TOKENS_PER_PROMPT
    costs = _name_token_costs(names, tokenizer)
    chunks: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, cost in enumerate(costs):
        if cost > budget:
            raise ValueError(f"category name {names[index]!r} alone exceeds {max_len} tokens")
        full = max_per_chunk is not None and len(current) >= max_per_chunk
        if current and (used + cost > budget or full):
            chunks.append(current)
            current, used = [], 0
        current.append(index)
        used += cost
    if current:
        chunks.append(current)
    return [
        piece for chunk in chunks for piece in _split_until_fits(chunk, names, tokenizer, max_len)
    ]


def _split_until_fits(
    chunk: list[int], names: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_len: int
) -> list[list[int]]:
    """Verify a chunk with the real tokenizer; halve it in the rare case the estimate was short."""
    caption, _ = build_caption([names[i] for i in chunk])
    length = len(tokenizer(caption, add_special_tokens=True)["input_ids"])
    if length <= max_len or len(chunk) == 1:
        return [chunk]
    half = len(chunk) // 2
    return _split_until_fits(chunk[:half], names, tokenizer, max_len) + _split_until_fits(
        chunk[half:], names, tokenizer, max_len
    )


def _prompt_dict(tokenized: TokenizedPrompt, positive_map: Tensor, labels: Sequence[int]) -> dict:
    return {
        "input_ids": tokenized.input_ids,
        "attention_mask": tokenized.attention_mask,
        "positive_map": positive_map,
        "labels": torch.as_tensor(list(labels), dtype=torch.long),
        "caption": tokenized.caption,
    }


def build_detection_prompts(
    names: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_len: int = 256,
    max_per_chunk: int | None = None,
    affixes: Sequence[tuple[str, str]] | None = None,
) -> list[dict]:
    """Evaluation prompts over a whole vocabulary: fixed order, chunked, names cleaned.

    Each dict is one "prompts" entry of the data contract; its `labels` index into `names`
    and its `positive_map` is (K, L) for the K names of that chunk.
    """
    cleaned = [clean_name(name) for name in names]
    prompts = []
    for chunk in chunk_vocabulary(cleaned, tokenizer, max_len, max_per_chunk):
        chunk_affixes = [affixes[i] for i in chunk] if affixes is not None else None
        caption, spans = build_caption([cleaned[i] for i in chunk], affixes=chunk_affixes)
        tokenized = tokenize_prompt(tokenizer, caption, max_len)
        positive_map, unmapped = positive_map_from_spans(tokenized, [[s] for s in spans])
        if unmapped:
            raise ValueError(f"names {[cleaned[chunk[r]] for r in unmapped]} do not fit a prompt")
        prompts.append(_prompt_dict(tokenized, positive_map, chunk))
    return prompts


def build_grounding_prompt(
    caption: str,
    phrase_spans: Sequence[Sequence[Span]],
    tokenizer: PreTrainedTokenizerBase,
    max_len: int = 256,
    strict: bool = False,
) -> dict:
    """One prompt whose rows are phrases (labels = phrase index); cut-off phrases map to zeros,
    or, when `strict`, are an error naming the phrase and the limit."""
    tokenized = tokenize_prompt(tokenizer, caption, max_len)
    positive_map, unmapped = positive_map_from_spans(tokenized, phrase_spans)
    if strict and unmapped:
        row = unmapped[0]
        phrase = " ".join(caption[beg:end] for beg, end in phrase_spans[row])
        why = "covers no token"
        if any(end > tokenized.covered_chars for _, end in phrase_spans[row]):
            why = f"falls past the token limit (MAX_QUERY_LEN={max_len}; the caption's first "
            why += f"{tokenized.covered_chars} characters fit)"
        raise ValueError(f"phrase {row} {phrase!r} {why}; shorten the caption")
    return _prompt_dict(tokenized, positive_map, range(len(phrase_spans)))


def _training_prompt(
    class_order: list[int],
    names: Sequence[str],
    instance_classes: Tensor,
    tokenizer: PreTrainedTokenizerBase,
    max_len: int,
) -> TrainingPrompt:
    """Prompt over `class_order`; gt rows copy their class row; instances of cut classes drop."""
    caption, spans = build_caption([clean_name(names[c]) for c in class_order])
    tokenized = tokenize_prompt(tokenizer, caption, max_len)
    positive_map, unmapped = positive_map_from_spans(tokenized, [[s] for s in spans])
    row_of_class = torch.full((len(names),), -1, dtype=torch.long)
    row_of_class[torch.as_tensor(class_order, dtype=torch.long)] = torch.arange(len(class_order))
    row_of_class[torch.as_tensor(class_order, dtype=torch.long)[unmapped]] = -1
    rows = row_of_class[instance_classes.long()]
    keep = rows >= 0
    gt_positive_map = positive_map[rows.clamp(min=0)] * keep[:, None].float()
    return TrainingPrompt(_prompt_dict(tokenized, positive_map, class_order), gt_positive_map, keep)


def shuffled_all_classes_prompt(
    names: Sequence[str],
    instance_classes: Tensor,
    tokenizer: PreTrainedTokenizerBase,
    max_len: int = 256,
    rng: random.Random | None = None,
) -> TrainingPrompt:
    """COCO fine-tuning policy (spec e.1): all classes, order reshuffled per sample.

    `instance_classes` (N,) are contiguous class ids; `keep` (N,) is False for instances whose
    class fell beyond the token limit (never the case for COCO's 80 classes).
    """
    order = list(range(len(names)))
    (rng or random).shuffle(order)
    return _training_prompt(order, names, instance_classes, tokenizer, max_len)


def sample_negative_count(
    max_negatives: int, control_probs: tuple[float, float, float], rng: random.Random
) -> int:
    """Number of negatives: P(one negative), P(none), P(all `max_negatives`), else uniform 1..max.

    The original's fourth control probability (drop positives) is asserted to be 0 in
    microsoft/FIBER (spec h.3), so it is not offered here.
    """
    one_negative, no_negative, full = control_probs
    draw = rng.random()
    if draw < one_negative:
        return 1
    if draw < one_negative + no_negative:
        return 0
    if draw < one_negative + no_negative + full:
        return max_negatives
    return rng.randint(1, max_negatives)


def positives_plus_negatives_prompt(
    names: Sequence[str],
    instance_classes: Tensor,
    tokenizer: PreTrainedTokenizerBase,
    max_len: int = 256,
    max_negatives: int = 85,
    control_probs: tuple[float, float, float] = (0.05, 0.05, 0.5),
    rng: random.Random | None = None,
) -> TrainingPrompt:
    """Objects365 pre-training policy (spec e.1): shuffled positives + sampled negatives.

    Positives that overflow the 254-token budget are dropped (their instances get keep=False);
    negatives are sampled without replacement and cut to the remaining budget; the union is
    shuffled.
    """
    rng = rng or random.Random(random.getrandbits(32))
    budget = max_len - SPECIAL_TOKENS_PER_PROMPT
    costs = _name_token_costs([clean_name(n) for n in names], tokenizer)
    positives = sorted(set(instance_classes.tolist()))
    rng.shuffle(positives)
    chosen, used = [], 0
    for cls in positives:
        if used + costs[cls] <= budget:
            chosen.append(cls)
            used += costs[cls]
    candidates = [c for c in range(len(names)) if c not in set(positives)]
    count = min(sample_negative_count(max_negatives, control_probs, rng), len(candidates))
    for cls in rng.sample(candidates, count):
        if used + costs[cls] > budget:
            break
        chosen.append(cls)
        used += costs[cls]
    rng.shuffle(chosen)
    return _training_prompt(chosen, names, instance_classes, tokenizer, max_len)
