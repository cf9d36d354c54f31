"""The gated cross-attention that fuses the two towers (FIBER, fine_grained_spec.md a.3 and b).

One module class, `GatedCrossAttention`, serves both directions: query tokens of one modality
attend to every token of the other, and the result is scaled by a scalar gate initialised to 0,
so an untrained fusion leaves both towers exactly unimodal. The two directions differ only in
how the released checkpoint lays out the projections (microsoft/FIBER): image->text fuses
key and value into one Linear (`qkv_text_i2t`), text->image keeps them separate
(`crossattention_t2i.self.{key,value}`). `key_value_layout` picks the layout so the rename table
stays one-to-one.
"""

import torch
import torch.nn.functional as F
from torch import nn

# Additive value for masked keys: transformers-4.6's extended attention mask, as in the
# original (coarse_grained_spec.md "Padding is an additive -10000").
MASKED_LOGIT = -10000.0


def extended_attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 0/1 mask -> (B, 1, 1, L) additive bias: 0 on real tokens, -10000 on padding."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, L), got shape {tuple(attention_mask.shape)}")
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASKED_LOGIT


def multi_head_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bias: torch.Tensor | None,
    use_sdpa: bool,
    dropout: float = 0.0,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for (B, h, N, d) q and (B, h, M, d) k, v -> (B, h, N, d).

    `bias` broadcasts to (B, h, N, M). With `use_sdpa` the fused
    torch.nn.functional.scaled_dot_product_attention kernel computes the same value.
    """
    if use_sdpa:
        if bias is not None:
            bias = bias.to(query.dtype)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout)
    logits = (query * query.shape[-1] ** -0.5) @ key.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    probs = F.dropout(logits.softmax(dim=-1), p=dropout, training=dropout > 0)
    return probs @ value


class GatedCrossAttention(nn.Module):
    """`gate * out(attend(query(norm(x)), key/value(context)))` for one fusion direction.

    Args:
        query_dim: width C of the query tokens (and of the output).
        context_dim: width of the context tokens (keys / values).
        inner_dim: attention width (heads * head_dim); the output is projected back to C.
        num_heads: number of heads.
        key_value_layout: "fused" (one Linear -> 2 * inner, key first) or "separate".
        query_norm: LayerNorm on the query tokens before the query projection (FIBER v3).
        use_sdpa: use torch's scaled_dot_product_attention.
        dropout: attention-probability dropout (training only).
        output_dropout: dropout on the projected output, before the gate (training only).
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        inner_dim: int,
        num_heads: int,
        key_value_layout: str = "fused",
        query_norm: bool = False,
        use_sdpa: bool = True,
        dropout: float = 0.0,
        output_dropout: float = 0.0,
    ):
        super().__init__()
        if inner_dim % num_heads:
            raise ValueError(f"inner_dim {inner_dim} is not divisible by num_heads {num_heads}")
        if key_value_layout not in ("fused", "separate"):
            raise ValueError(
                f"key_value_layout must be 'fused' or 'separate', got {key_value_layout}"
            )
        self.num_heads = num_heads
        self.use_sdpa = use_sdpa
        self.dropout = dropout
        self.query_norm = nn.LayerNorm(query_dim) if query_norm else nn.Identity()
        self.query = nn.Linear(query_dim, inner_dim)
        if key_value_layout == "fused":
            self.key_value = nn.Linear(context_dim, 2 * inner_dim)
        else:
            self.key = nn.Linear(context_dim, inner_dim)
            self.value = nn.Linear(context_dim, inner_dim)
        self.out = nn.Linear(inner_dim, query_dim)
        self.out_dropout = nn.Dropout(output_dropout)
        self.gate = nn.Parameter(torch.zeros(1))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, h * d) -> (B, h, N, d)."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys and values (B, h, M, d) of `context` (B, M, Dc); a decoder caches them."""
        if hasattr(self, "key_value"):
            key, value = self.key_value(context).chunk(2, dim=-1)
        else:
            key, value = self.key(context), self.value(context)
        return self._split_heads(key), self._split_heads(value)

    def queries(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-head queries (B, h, N, d) of `tokens` (B, N, C)."""
        return self._split_heads(self.query(self.query_norm(tokens)))

    def forward(
        self,
        tokens: torch.Tensor,
        context: torch.Tensor,
        context_bias: torch.Tensor | None = None,
        query: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The gated update (B, N, C) for `tokens` (B, N, C) attending to `context` (B, M, Dc).

        `context_bias` is an additive (B, 1, 1, M) mask over the context (None: attend to all);
        `query`, when given, is `queries(tokens)` computed beforehand (e.g. once per image).
        The caller adds the returned update to its residual stream.
        """
        if tokens.shape[0] != context.shape[0]:
            raise ValueError(
                f"batch mismatch: {tokens.shape[0]} query sequences, {context.shape[0]} contexts"
            )
        return self.attend(tokens, self.keys_values(context), context_bias, query)

    def attend(
        self,
        tokens: torch.Tensor,
        key_value: tuple[torch.Tensor, torch.Tensor],
        context_bias: torch.Tensor | None = None,
        query: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward` on keys / values (B, h, M, d) that `keys_values` computed (e.g. cached)."""
        if query is None:
            query = self.queries(tokens)
        dropout = self.dropout if self.training else 0.0
        attended = multi_head_attention(query, *key_value, context_bias, self.use_sdpa, dropout)
        return self.gate * self.out_dropout(self.out(attended.transpose(1, 2).flatten(2)))
