"""The parameter-holding parts of a BERT-family text layer, named as transformers names them.

Only torch layers: the containers give state-dict keys identical to transformers' BERT and
RoBERTa (`embeddings.word_embeddings.weight`, `attention.self.query.weight`,
`attention.output.LayerNorm.weight`, `intermediate.dense.weight`, `output.dense.weight`, ...),
so pretrained checkpoints load one-to-one, while the forwards are fiber_det's own. Sizes come
from a transformers config (`hidden_size`, `intermediate_size`, `hidden_act`, ...), a public
and stable interface.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

# transformers' `hidden_act` names of the activations fiber_det's text towers support.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class TextEmbeddings(nn.Module):
    """Word + position + token-type (type 0) embeddings, LayerNorm, dropout.

    `position_padding_idx`: the position row kept at zero and without gradient (RoBERTa: its
    pad id, where padded tokens sit; BERT: None).
    """

    def __init__(self, config: PretrainedConfig, position_padding_idx: int | None):
        super().__init__()
        width = config.hidden_size
        self.word_embeddings = nn.Embedding(
            config.vocab_size, width, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, width)
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # built last, as transformers does: the same seed gives the same initial weights
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, width, padding_idx=position_padding_idx
        )

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and (B, L) position ids -> (B, L, D)."""
        embedded = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        embedded = embedded + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(embedded))


class SelfAttentionProjections(nn.Module):
    """The query / key / value projections and the attention-probability dropout."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        width = config.hidden_size
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)


class TextOutput(nn.Module):
    """`dense` into the hidden width, its dropout and the residual's LayerNorm."""

    def __init__(self, config: PretrainedConfig, in_features: int | None = None):
        super().__init__()
        width = config.hidden_size
        self.dense = nn.Linear(in_features or config.intermediate_size, width)
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)


class TextAttention(nn.Module):
    """`self` (projections) and `output` (dense, LayerNorm, dropout) of a self-attention."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.self = SelfAttentionProjections(config)
        self.output = TextOutput(config, in_features=config.hidden_size)


class TextIntermediate(nn.Module):
    """The FFN's first projection and activation: (..., D) -> (..., intermediate_size)."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        if config.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"text config hidden_act {config.hidden_act!r} is not supported; "
                f"use one of {sorted(ACTIVATIONS)}"
            )
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden))
