"""Beam search and greedy decoding: hand-checkable toy decoders, cache equivalence, golden."""

import math

import pytest
import torch
from torch import nn

from fiber_det.modeling.vision_language.beam_search import beam_search, greedy_decode, sample_decode

BOS, PAD, EOS, A, B, MASK = range(6)
IDS = {"end_ids": (EOS, PAD), "pad_id": PAD, "suppress_ids": (MASK,)}


def bigram_step(table: dict[int, dict[int, float]]):
    """A decoder whose next-token distribution depends on the last token only. Every row gives
    the probabilities of the real tokens; <mask> gets the largest logit, to be suppressed."""

    logits = torch.full((6, 6), -math.inf)
    for previous, probabilities in table.items():
        for token, probability in probabilities.items():
            logits[previous, token] = math.log(probability)
        logits[previous, MASK] = 5.0

    def step(input_ids, state):
        return logits[input_ids[:, -1]], state

    return step


# Greedy takes "a" (0.5) then </s> (0.4): log(0.2) / 2. Beam 2 also keeps "b" (0.4), whose
# </s> (0.9) gives log(0.36) / 2, the better normalised score.
GREEDY_MISSES = {
    BOS: {A: 0.5, B: 0.4, EOS: 0.1},
    A: {EOS: 0.4, A: 0.3, B: 0.3},
    B: {EOS: 0.9, A: 0.05, B: 0.05},
}
# "</s>" alone scores log(0.45); "a </s>" log(0.55 * 0.7) / 2 is better only after
# normalising by length (its sum log(0.385) is lower).
NORMALISATION_DECIDES = {BOS: {EOS: 0.45, A: 0.55}, A: {EOS: 0.7, A: 0.3}}


def test_greedy_and_beam_on_a_known_bigram_model():
    step = bigram_step(GREEDY_MISSES)
    start = torch.full((1, 1), BOS)
    greedy = greedy_decode(step, start, max_length=6, **IDS)
    assert greedy.sequences.tolist() == [[A, EOS]]
    assert greedy.scores.item() == pytest.approx(math.log(0.2) / 2, abs=1e-6)
    beam = beam_search(step, start, beam_size=2, max_length=6, **IDS)
    assert beam.sequences.tolist() == [[B, EOS]]
    assert beam.scores.item() == pytest.approx(math.log(0.36) / 2, abs=1e-6)
    one_beam = beam_search(step, start, beam_size=1, max_length=6, **IDS)
    assert one_beam.sequences.tolist() == [[A, EOS]]


def test_length_normalisation_and_finished_beams():
    step = bigram_step(NORMALISATION_DECIDES)
    result = beam_search(step, torch.full((2, 1), BOS), beam_size=2, max_length=8, **IDS)
    assert result.sequences.tolist() == [[A, EOS], [A, EOS]]
    assert result.scores.tolist() == pytest.approx([math.log(0.385) / 2] * 2, abs=1e-6)
    # At max_length unfinished beams compete too: 3 new tokens, and "a a a" (log(.198) / 3)
    # beats "a a </s>" (log(.132) / 3), "a </s>" (log(.22) / 2) and "</s>" (log(.45)).
    loop = {BOS: {EOS: 0.45, A: 0.55}, A: {A: 0.6, EOS: 0.4}}
    start = torch.full((1, 1), BOS)
    capped = beam_search(bigram_step(loop), start, beam_size=3, max_length=4, **IDS)
    assert capped.sequences.tolist() == [[A, A, A]]
    assert capped.scores.item() == pytest.approx(math.log(0.55 * 0.6 * 0.6) / 3, abs=1e-6)


def test_mask_is_never_chosen_and_finished_rows_are_padded():
    step = bigram_step({BOS: {EOS: 0.9, A: 0.1}, A: {A: 1.0}})
    result = greedy_decode(step, torch.full((1, 1), BOS), max_length=5, **IDS)
    assert result.sequences.tolist() == [[EOS]]  # stops once every row has ended
    assert result.scores.item() == pytest.approx(math.log(0.9), abs=1e-6)
    unsuppressed = greedy_decode(
        step, torch.full((1, 1), BOS), max_length=2, end_ids=(EOS,), pad_id=PAD
    )
    assert unsuppressed.sequences.tolist() == [[MASK]]
    padded = beam_search(step, torch.full((1, 1), BOS), beam_size=2, max_length=5, **IDS)
    assert padded.sequences.tolist() == [[EOS, PAD]]  # the "a" beam ran one step more


def test_sampling_draws_from_the_suppressed_distribution_per_image():
    step = bigram_step({BOS: {A: 0.25, B: 0.75}, A: {EOS: 1.0}, B: {EOS: 1.0}})
    generator = torch.Generator().manual_seed(0)
    start = torch.full((2, 1), BOS)
    samples = sample_decode(step, start, num_samples=400, max_length=6, generator=generator, **IDS)
    assert samples.sequences.shape == (800, 2)  # all rows ended after "</s>"
    assert (samples.sequences[:, 1] == EOS).all()
    first = samples.sequences[:, 0]
    assert set(first.tolist()) == {A, B}  # the dominant <mask> logit is suppressed
    assert (first == A).float().mean().item() == pytest.approx(0.25, abs=0.05)
    expected = torch.where(first == A, math.log(0.25) / 2, math.log(0.75) / 2)
    torch.testing.assert_close(samples.scores, expected)


def test_samples_of_one_image_are_consecutive_rows():
    def step(input_ids, state):  # the first token is the image's own, then </s>
        logits = torch.full((input_ids.size(0), 6), -9.0)
        token = state["token"] if input_ids.size(1) == 1 else torch.full_like(state["token"], EOS)
        return logits.scatter(1, token[:, None], 9.0), state

    state = {"token": torch.tensor([A, B])}
    samples = sample_decode(
        step, torch.full((2, 1), BOS), state, num_samples=3, max_length=4, **IDS
    )
    assert samples.sequences.tolist() == [[A, EOS]] * 3 + [[B, EOS]] * 3
    with pytest.raises(ValueError, match="num_samples"):
        sample_decode(step, torch.full((2, 1), BOS), state, num_samples=0, **IDS)


def reference_beam_search(log_probs: list[list[float]], width: int, steps: int) -> tuple:
    """The original's search written plainly: every beam x every token (a finished beam once
    per token, extended with <pad>), sorted by summed log-probability / length."""
    vocab = len(log_probs)
    first = sorted(range(vocab), key=lambda token: -log_probs[BOS][token])[:width]
    beams = [([token], log_probs[BOS][token], 1, token in (EOS, PAD)) for token in first]
    for _ in range(steps - 1):
        if all(beam[3] for beam in beams):
            break
        candidates = []
        for tokens, total, length, done in beams:
            for token in range(vocab):
                if done:
                    candidates.append((tokens + [PAD], total, length, True))
                else:
                    score = total + log_probs[tokens[-1]][token]
                    candidates.append((tokens + [token], score, length + 1, token in (EOS, PAD)))
        beams = sorted(candidates, key=lambda c: -c[1] / c[2])[:width]
    return beams[0][0], beams[0][1] / beams[0][2]


@pytest.mark.parametrize("seed", range(4))
def test_beam_search_equals_the_plain_flat_search(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(7, 7, generator=generator)
    logits[:, EOS] += 1.0  # some beams finish before max_length
    table = torch.log_softmax(logits, dim=1)

    def step(input_ids, state):
        return logits[input_ids[:, -1]], state

    expected, score = reference_beam_search(table.tolist(), width=3, steps=6)
    start = torch.full((1, 1), BOS)
    result = beam_search(step, start, beam_size=3, max_length=7, end_ids=(EOS, PAD), pad_id=PAD)
    assert result.sequences[0].tolist()[: len(expected)] == expected
    assert result.scores.item() == pytest.approx(score, abs=1e-5)


class ToyDecoder(nn.Module):
    """One causal self-attention layer + cross-attention to image features, with an optional
    key/value cache: `step` re-runs the prefix, `cached_step` feeds only the last token."""

    def __init__(self, vocab: int = 11, dim: int = 16, max_positions: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(max_positions, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.cross = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.out = nn.Linear(dim, vocab)
        with torch.no_grad():
            self.out.weight.mul_(3.0)  # peaked distributions: beams diverge, some end early

    def _hidden(self, ids: torch.Tensor, offset: int) -> torch.Tensor:
        positions = torch.arange(offset, offset + ids.size(1))
        return self.embed(ids) + self.position(positions)

    def _finish(self, hidden, attended, image):
        mixed = hidden + attended
        return self.out(mixed + self.cross(mixed, image, image)[0])[:, -1]

    def step(self, ids: torch.Tensor, state: dict):
        hidden = self._hidden(ids, 0)
        q, k, v = self.qkv(hidden).chunk(3, dim=-1)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self._finish(hidden, attended, state["image"]), state

    def cached_step(self, ids: torch.Tensor, state: dict):
        start = state["keys"].size(1)
        hidden = self._hidden(ids[:, start:], start)
        q, k, v = self.qkv(hidden).chunk(3, dim=-1)
        keys, values = torch.cat([state["keys"], k], 1), torch.cat([state["values"], v], 1)
        mask = torch.ones(q.size(1), keys.size(1), dtype=torch.bool).tril(diagonal=start)
        attended = nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        logits = self._finish(hidden, attended, state["image"])
        return logits, {"image": state["image"], "keys": keys, "values": values}


def test_cached_decoding_matches_uncached():
    decoder = ToyDecoder().eval()
    image = 4 * torch.randn(3, 5, 16)
    start = torch.tensor([[BOS], [BOS], [BOS]])
    empty = torch.zeros(3, 0, 16)
    cached_state = {"image": image, "keys": empty, "values": empty}
    options = {"beam_size": 4, "max_length": 12, **IDS}
    plain = beam_search(decoder.step, start, {"image": image}, **options)
    cached = beam_search(decoder.cached_step, start, cached_state, **options)
    assert torch.equal(plain.sequences, cached.sequences)
    torch.testing.assert_close(plain.scores, cached.scores)
    ended = torch.isin(plain.sequences, torch.tensor([EOS, PAD])).any(dim=1)
    assert ended.any() and not ended.all()  # some rows end early, one runs to max_length
    # Without re-ordering the cache with the beams, decoding goes wrong: the test can fail.
    unordered = beam_search(
        decoder.cached_step, start, cached_state, reorder_state=lambda s, rows: s, **options
    )
    assert not torch.equal(unordered.sequences, plain.sequences)
    greedy_plain = greedy_decode(decoder.step, start, {"image": image}, max_length=12, **IDS)
    greedy_cached = greedy_decode(decoder.cached_step, start, cached_state, max_length=12, **IDS)
    assert torch.equal(greedy_plain.sequences, greedy_cached.sequences)
    one_beam = beam_search(decoder.step, start, {"image": image}, **{**options, "beam_size": 1})
    assert torch.equal(one_beam.sequences, greedy_plain.sequences)


def test_greedy_matches_the_original_decode(reference_dir):
    """Replays the original's per-step logits (fiber_small_caption.pt): same ids, 8 steps."""
    golden = torch.load(reference_dir / "golden" / "fiber_small_caption.pt", weights_only=True)
    step_logits, expected = golden["greedy_step_logits"], golden["greedy_raw_ids"]

    def replay(ids, state):
        position = ids.size(1) - 1
        assert torch.equal(ids[:, 1:], expected[:, :position])  # the decoded prefix is fed back
        return step_logits[position], state

    start = torch.zeros(2, 1, dtype=torch.long)
    ids = {"end_ids": (2, 1), "pad_id": 1, "suppress_ids": (999,)}
    greedy = greedy_decode(replay, start, max_length=golden["greedy_steps"] + 1, **ids)
    assert torch.equal(greedy.sequences, expected)
    one_beam = beam_search(replay, start, beam_size=1, max_length=9, **ids)
    assert torch.equal(one_beam.sequences, expected)


def test_bad_arguments_are_named():
    step = bigram_step(GREEDY_MISSES)
    with pytest.raises(ValueError, match="max_length"):
        greedy_decode(step, torch.full((1, 1), BOS), max_length=1, **IDS)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(step, torch.full((1, 1), BOS), beam_size=7, max_length=4, **IDS)
    with pytest.raises(ValueError, match="start_ids"):
        beam_search(step, torch.tensor([BOS]), max_length=4, **IDS)
