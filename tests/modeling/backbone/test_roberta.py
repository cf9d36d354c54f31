"""The text tower: equal to transformers' RobertaModel when not fused; the t2i gate."""

import pytest
import torch
from transformers import RobertaConfig, RobertaModel

from fiber_det.checkpoint import convert_text_state_dict
from fiber_det.modeling.backbone.fusion import extended_attention_bias
from fiber_det.modeling.backbone.roberta import FusedRoberta, roberta_position_ids
from tests.modeling.backbone.tiny import random_text

CONFIG = RobertaConfig(
    vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)  # fmt: skip


def _run(text: FusedRoberta, ids, mask, image=None):
    hidden = text.embed(ids)
    bias = extended_attention_bias(mask, hidden.dtype)
    for index in range(len(text.layers)):
        hidden = text.run_layer(index, hidden, bias, image if index >= text.first_fused else None)
    return hidden


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_unfused_text_equals_transformers(use_sdpa):
    reference = RobertaModel(CONFIG, add_pooling_layer=False).eval()
    text = FusedRoberta(CONFIG, [48, 48], use_sdpa=use_sdpa).eval()
    converted = convert_text_state_dict(reference.state_dict())
    missing, unexpected = text.load_state_dict(converted.state_dict, strict=False)
    assert not unexpected and all(".t2i." in k for k in missing)
    ids, mask = random_text(3, 12, [12, 7, 4])
    expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        torch.testing.assert_close(_run(text, ids, mask), expected, atol=1e-5, rtol=1e-5)
        image = torch.randn(3, 5, 48)
        # gates at 0: image tokens change nothing
        torch.testing.assert_close(_run(text, ids, mask, image), expected, atol=1e-5, rtol=1e-5)


def test_t2i_gate_mixes_image_and_gets_gradients():
    text = FusedRoberta(CONFIG, [48], use_sdpa=True).eval()
    ids, mask = random_text(2, 8, [8, 5])
    image = torch.randn(2, 5, 48)
    _run(text, ids, mask, image).square().sum().backward()
    gate = text.layers[2].t2i.gate
    assert gate.grad is not None and gate.grad.abs().item() > 0
    with torch.no_grad():
        gate.fill_(1.0)
        changed = _run(text, ids, mask, image) - _run(text, ids, mask, torch.randn(2, 5, 48))
    assert changed.abs().max() > 1e-3


def test_input_errors_name_the_limit():
    text = FusedRoberta(CONFIG, [])
    with pytest.raises(ValueError, match=r"outside \[0, 64\)"):
        text.embed(torch.tensor([[0, 70, 2]]))
    with pytest.raises(ValueError, match="max_position_embeddings 40"):
        text.embed(torch.zeros(1, 39, dtype=torch.long))
    with pytest.raises(ValueError, match="4 fused layers"):
        FusedRoberta(CONFIG, [8, 8, 8, 8])


def test_position_ids_follow_roberta_for_padded_and_incremental_inputs():
    right_padded, left_padded = [0, 7, 8, 2, 1, 1], [1, 1, 0, 7, 8, 2]
    ids = torch.tensor([right_padded, left_padded])
    assert roberta_position_ids(ids, 1).tolist() == [[2, 3, 4, 5, 1, 1], [1, 1, 2, 3, 4, 5]]
    # two new tokens after 4 decoded ones; a padded new token stays at the pad position
    new = torch.tensor([[9, 10], [9, 1]])
    assert roberta_position_ids(new, 1, past_length=4).tolist() == [[6, 7], [6, 1]]
