"""The BERT-family text tower (MODEL.FIBER.TEXT.ARCHITECTURE "bert", GLIP's text tower): equal
to transformers' BertModel when not fused; absolute position ids; loaded from a transformers
directory through the config, and refused when the directory holds another architecture."""

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, RobertaConfig, RobertaModel

from fiber_det.checkpoint import convert_text_state_dict
from fiber_det.modeling.backbone.fiber import FiberTrunk
from fiber_det.modeling.backbone.roberta import FusedBert, bert_position_ids
from tests.modeling.backbone.test_roberta import _run
from tests.modeling.backbone.tiny import random_text, tiny_trunk_cfg

CONFIG = BertConfig(
    vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=40, type_vocab_size=2, pad_token_id=0,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12,
)  # fmt: skip


def test_position_ids_are_absolute_and_continue_after_the_past():
    ids = torch.tensor([[101, 7, 8, 102, 0, 0], [101, 9, 102, 0, 0, 0]])
    assert bert_position_ids(ids).tolist() == [[0, 1, 2, 3, 4, 5]] * 2
    assert bert_position_ids(torch.tensor([[5, 6]]), past_length=3).tolist() == [[3, 4]]


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_unfused_bert_equals_transformers(use_sdpa):
    reference = BertModel(CONFIG, add_pooling_layer=False).eval()
    text = FusedBert(CONFIG, [48, 48], use_sdpa=use_sdpa).eval()
    converted = convert_text_state_dict(reference.state_dict())
    missing, unexpected = text.load_state_dict(converted.state_dict, strict=False)
    assert not unexpected and all(".t2i." in k for k in missing)
    ids, mask = random_text(3, 12, [12, 7, 4])
    ids = ids.masked_fill(mask == 0, CONFIG.pad_token_id)
    expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        torch.testing.assert_close(_run(text, ids, mask), expected, atol=1e-5, rtol=1e-5)
    assert text.embeddings.position_embeddings.padding_idx is None


def test_config_builds_a_pretrained_bert_tower(tmp_path):
    masked_lm = BertForMaskedLM(CONFIG)  # keys under `bert.`, plus the `cls.` MLM head
    masked_lm.save_pretrained(tmp_path / "bert")
    cfg = tiny_trunk_cfg(**{"TEXT.WEIGHTS": str(tmp_path / "bert"), "TEXT.ARCHITECTURE": "bert"})
    cfg.MODEL.FIBER.FUSION.NUM_LAYERS = 2
    cfg.MODEL.FIBER.SWIN.DEPTHS = [1, 1, 1, 1]
    trunk = FiberTrunk(cfg)
    assert isinstance(trunk.text_backbone, FusedBert) and trunk.text_pad_token_id == 0
    torch.testing.assert_close(
        trunk.state_dict()["text_backbone.layers.2.output.dense.weight"],
        masked_lm.state_dict()["bert.encoder.layer.2.output.dense.weight"],
    )


def test_weights_of_another_architecture_are_refused(tmp_path):
    roberta = RobertaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40,
    )  # fmt: skip
    RobertaModel(roberta).save_pretrained(tmp_path / "roberta")
    cfg = tiny_trunk_cfg(**{"TEXT.WEIGHTS": str(tmp_path / "roberta"), "TEXT.ARCHITECTURE": "bert"})
    with pytest.raises(ValueError, match="holds a 'roberta' model but .*ARCHITECTURE is 'bert'"):
        FiberTrunk(cfg)
    cfg.MODEL.FIBER.TEXT.ARCHITECTURE = "gpt"
    with pytest.raises(ValueError, match="ARCHITECTURE 'gpt'"):
        FiberTrunk(cfg)


def test_real_minilm_loads_and_matches_transformers(minilm_dir):
    """all-MiniLM-L6-v2 (the quickstart's text tower) through MODEL.FIBER.TEXT: unfused text
    features equal transformers' BertModel on a real prompt tokenised by its own tokenizer."""
    from transformers import AutoTokenizer

    cfg = tiny_trunk_cfg(**{"TEXT.WEIGHTS": str(minilm_dir), "TEXT.ARCHITECTURE": "bert"})
    cfg.MODEL.FIBER.FUSION.NUM_LAYERS = 2
    cfg.MODEL.FIBER.SWIN.DEPTHS = [1, 1, 1, 1]
    trunk = FiberTrunk(cfg).eval()
    assert trunk.text_hidden_size == 384 and trunk.num_text_layers == 6
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    batch = tokenizer(
        ["red circle. blue star.", "a green cross"], padding=True, return_tensors="pt"
    )
    reference = BertModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        ours = trunk.encode_text(batch["input_ids"], batch["attention_mask"]).hidden
        expected = reference(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[real], expected[real], atol=1e-4, rtol=1e-4)


def test_freeze_at_stops_gradients_below_the_fused_layers():
    text = FusedBert(CONFIG, [48])  # layers 0, 1 text-only, layer 2 fused
    text.freeze(3)
    trainable = {
        n.split(".")[0] + "." + n.split(".")[1]
        for n, p in text.named_parameters()
        if p.requires_grad
    }
    assert trainable == {"layers.2"}
    ids, mask = random_text(2, 6, [6, 4])
    ids = ids.masked_fill(mask == 0, CONFIG.pad_token_id)
    _run(text, ids, mask, torch.randn(2, 3, 48)).sum().backward()
    assert (
        text.layers[2].t2i.gate.grad is not None and text.layers[1].output.dense.weight.grad is None
    )
    with pytest.raises(ValueError, match="FREEZE_AT 4 would freeze fused layers: at most 3"):
        FusedBert(CONFIG, [48]).freeze(4)
