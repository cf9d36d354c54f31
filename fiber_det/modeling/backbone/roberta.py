"""RoBERTa text tower with text->image fusion in its top layers.

The modules are plain torch layers named as transformers' RoBERTa names them
(`embeddings.word_embeddings`, `attention.self.query`, `attention.output.LayerNorm`,
`intermediate.dense`, `output.dense`, ...), so checkpoints map one-to-one, while no forward of
transformers' internal modules is called (their keyword names change between releases). The
layer composes the forward the way FIBER's fused layer does (fine_grained_spec.md b,
microsoft/FIBER roberta_fused_model_v2.py):

    s  = dropout(attention.output.dense(self_attention(h)))      # no residual, no LayerNorm yet
    s += gate * dropout(out(CrossAttn(query=s, key/value=image)))  # fused layers only
    h' = attention.output.LayerNorm(h + s)
    y  = output.LayerNorm(h' + dropout(output.dense(GELU(intermediate.dense(h')))))

With the gate at 0 (or no image) this is exactly transformers' RobertaLayer.

`FusedRobertaLayer.decode` runs the same layer as a causal decoder (the coarse captioning
model, coarse_grained_spec.md c.4): self-attention over cached keys / values plus the new
tokens, the t2i cross-attention on image keys / values computed once per image, every output
LayerNorm applied.
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig

from fiber_det.modeling.backbone.fusion import (
    GatedCrossAttention,
    extended_attention_bias,
    multi_head_attention,
)
from fiber_det.modeling.backbone.text_parts import (
    TextAttention,
    TextEmbeddings,
    TextIntermediate,
    TextOutput,
)

KeyValue = tuple[torch.Tensor, torch.Tensor]


def causal_attention_bias(
    attention_mask: torch.Tensor | None,
    num_queries: int,
    num_keys: int,
    dtype: torch.dtype,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Additive decoder bias (B or 1, 1, T, P + T) for T new queries after P cached keys.

    As the original's `_prepare_decoder_attention_mask` (golden README, captioning): -inf where
    a key lies after its query (query t sits at position P + t), plus finfo.min on padded keys
    (`attention_mask` (B, P + T) 0/1; None: no padding), the two summed.
    """
    device = attention_mask.device if attention_mask is not None else device
    queries = torch.arange(num_keys - num_queries, num_keys, device=device)[:, None]
    keys = torch.arange(num_keys, device=device)[None, :]
    bias = torch.zeros(num_queries, num_keys, dtype=dtype, device=device)
    bias = bias.masked_fill(keys > queries, float("-inf"))[None, None]
    if attention_mask is None:
        return bias
    if attention_mask.shape[1] != num_keys:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[1]} tokens, the decoder {num_keys}"
        )
    padding = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return bias + padding


def roberta_position_ids(
    input_ids: torch.Tensor, pad_token_id: int, past_length: int = 0
) -> torch.Tensor:
    """RoBERTa's position ids (B, L) of (B, L) ids: real tokens count from pad_token_id + 1
    (continuing after `past_length` earlier tokens), padding sits at pad_token_id."""
    real = input_ids.ne(pad_token_id).long()
    return (real.cumsum(dim=1) + past_length) * real + pad_token_id


def bert_position_ids(input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:
    """BERT's absolute position ids (B, L): past_length, past_length + 1, ... for every token,
    padding included (the attention mask hides padding)."""
    length = input_ids.shape[1]
    positions = torch.arange(past_length, past_length + length, device=input_ids.device)
    return positions.expand_as(input_ids)


class FusedRobertaLayer(nn.Module):
    """One RoBERTa encoder layer; with `image_dim` it also carries the gated `t2i` attention."""

    def __init__(self, config: PretrainedConfig, image_dim: int | None, use_sdpa: bool):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.use_sdpa = use_sdpa
        self.attention = TextAttention(config)
        self.t2i = None
        if image_dim is not None:
            self.t2i = GatedCrossAttention(
                config.hidden_size,
                image_dim,
                config.hidden_size,
                config.num_attention_heads,
                "separate",
                use_sdpa=use_sdpa,
                dropout=config.attention_probs_dropout_prob,
                output_dropout=config.hidden_dropout_prob,
            )
        self.intermediate = TextIntermediate(config)
        self.output = TextOutput(config)

    def _queries_keys_values(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, L, D) -> query, key, value, each (B, h, L, d)."""
        module = self.attention.self
        return tuple(
            proj(hidden).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
            for proj in (module.query, module.key, module.value)
        )

    def _attend(self, query, key, value, bias: torch.Tensor | None) -> torch.Tensor:
        """Self-attention context (B, L, D) of (B, h, L, d) queries on (B, h, M, d) keys."""
        dropout = self.attention.self.dropout.p if self.training else 0.0
        context = multi_head_attention(query, key, value, bias, self.use_sdpa, dropout)
        return context.transpose(1, 2).flatten(2)

    def self_attention(self, hidden: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Multi-head self-attention context (B, L, D) before the output dense."""
        return self._attend(*self._queries_keys_values(hidden), bias)

    def _feed_forward(self, hidden: torch.Tensor, branch: torch.Tensor, output_norm: bool):
        """LN_attn(hidden + branch), then the FFN with its residual (and output LayerNorm)."""
        hidden = self.attention.output.LayerNorm(hidden + branch)
        ffn = self.output.dropout(self.output.dense(self.intermediate(hidden)))
        hidden = hidden + ffn
        return self.output.LayerNorm(hidden) if output_norm else hidden

    def forward(
        self,
        hidden: torch.Tensor,
        attention_bias: torch.Tensor | None,
        image: torch.Tensor | None = None,
        output_norm: bool = True,
        image_key_value: KeyValue | None = None,
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D).

        `attention_bias` is additive, (B, 1, 1, L) for padding or (B, 1, L, L) e.g. causal.
        `image` (B, N, C) fuses when this layer has `t2i`, or its `image_keys_values` computed
        beforehand; `output_norm=False` skips the final LayerNorm (the coarse fused path's
        last layer, coarse_grained_spec.md a.3).
        """
        self_output = self.attention.output
        branch = self_output.dropout(self_output.dense(self.self_attention(hidden, attention_bias)))
        if image_key_value is not None:
            branch = branch + self.t2i.attend(branch, image_key_value)
        elif image is not None and self.t2i is not None:
            branch = branch + self.t2i(branch, image)
        return self._feed_forward(hidden, branch, output_norm)

    def image_keys_values(self, image: torch.Tensor) -> KeyValue:
        """The t2i keys and values (B, h, N, d) of image tokens (B, N, C), once per image."""
        if self.t2i is None:
            raise ValueError("this text layer has no t2i cross-attention")
        return self.t2i.keys_values(image)

    def decode(
        self,
        hidden: torch.Tensor,
        bias: torch.Tensor,
        past: KeyValue | None = None,
        image_key_value: KeyValue | None = None,
    ) -> tuple[torch.Tensor, KeyValue]:
        """Causal decoder layer on T new tokens (B, T, D) -> ((B, T, D), self keys / values).

        `bias` (B or 1, 1, T, P + T) from `causal_attention_bias`; `past` the P cached self
        keys / values (B, h, P, d); `image_key_value` from `image_keys_values` (None: no
        cross-attention). The output LayerNorm is always applied (coarse spec c.4).
        """
        query, key, value = self._queries_keys_values(hidden)
        if past is not None:
            key, value = torch.cat([past[0], key], dim=2), torch.cat([past[1], value], dim=2)
        self_output = self.attention.output
        branch = self_output.dropout(self_output.dense(self._attend(query, key, value, bias)))
        if image_key_value is not None:
            branch = branch + self.t2i.attend(branch, image_key_value)
        return self._feed_forward(hidden, branch, output_norm=True), (key, value)


class FusedRoberta(nn.Module):
    """RoBERTa embeddings + layers (no pooler); the last `len(fused_image_dims)` layers fuse.
    `FusedBert` is the BERT-family variant (GLIP's text tower).

    Args:
        config: a transformers RobertaConfig (sizes, activation, dropout, pad id, LayerNorm eps).
        fused_image_dims: key/value width of each fused layer, bottom to top (FIBER-B:
            512, 512, 512, 512, 1024, 1024: the widths of the paired Swin blocks).
        use_sdpa: SDPA for self- and cross-attention.
        use_checkpoint: activation checkpointing per layer.
    """

    def __init__(
        self,
        config: PretrainedConfig,
        fused_image_dims: list[int],
        use_sdpa: bool = True,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        num_layers = config.num_hidden_layers
        if len(fused_image_dims) > num_layers:
            raise ValueError(
                f"{len(fused_image_dims)} fused layers requested but the text model has "
                f"{num_layers} layers"
            )
        self.config = config
        self.use_checkpoint = use_checkpoint
        self.first_fused = num_layers - len(fused_image_dims)
        image_dims = [None] * self.first_fused + list(fused_image_dims)
        self.embeddings = TextEmbeddings(config, self.position_padding_idx(config))
        self.layers = nn.ModuleList(
            [FusedRobertaLayer(config, dim, use_sdpa) for dim in image_dims]
        )
        self.apply(self._init_like_transformers)

    @staticmethod
    def position_padding_idx(config: PretrainedConfig) -> int | None:
        """The position row padded tokens use (kept at zero): RoBERTa's pad id."""
        return config.pad_token_id

    def position_ids(self, input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        """(B, L) position ids of (B, L) ids after `past_length` decoded tokens."""
        return roberta_position_ids(input_ids, self.pad_token_id, past_length)

    def _init_like_transformers(self, module: nn.Module) -> None:
        """RobertaPreTrainedModel's init (normal(0, initializer_range), zero bias, unit LayerNorm),
        also what the original's `from_pretrained` gave the new t2i layers."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def freeze(self, freeze_at: int) -> None:
        """Freeze the embeddings (freeze_at >= 1) and layers 1..freeze_at-1, as SWIN.FREEZE_AT
        does for the image tower. The fused layers' cross-attention stays trainable."""
        if freeze_at - 1 > self.first_fused:
            raise ValueError(
                f"MODEL.FIBER.TEXT.FREEZE_AT {freeze_at} would freeze fused layers: at most "
                f"{self.first_fused + 1} (the first fused layer is layer {self.first_fused + 1})"
            )
        modules = [self.embeddings] if freeze_at >= 1 else []
        modules += list(self.layers[: max(freeze_at - 1, 0)])
        for module in modules:
            module.requires_grad_(False)

    @property
    def pad_token_id(self) -> int:
        return self.config.pad_token_id

    def embed(self, input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        """(B, L) ids -> (B, L, D) with the tower's position ids (`position_ids`).

        `past_length`: tokens already decoded before these (incremental decoding: their
        positions continue after the past ones)."""
        exporting = torch.compiler.is_exporting()  # data-dependent checks: the runner's job
        if not exporting and (input_ids.max() >= self.config.vocab_size or input_ids.min() < 0):
            raise ValueError(
                f"input_ids hold values outside [0, {self.config.vocab_size}): "
                f"min {int(input_ids.min())}, max {int(input_ids.max())}"
            )
        positions = self.position_ids(input_ids, past_length)
        if not exporting and positions.max() >= self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids of length {past_length + input_ids.shape[1]} exceed the text "
                f"model's max_position_embeddings {self.config.max_position_embeddings}"
            )
        return self.embeddings(input_ids, positions)

    def run_layer(
        self,
        index: int,
        hidden: torch.Tensor,
        attention_bias: torch.Tensor | None,
        image: torch.Tensor | None = None,
        output_norm: bool = True,
        image_key_value: KeyValue | None = None,
    ) -> torch.Tensor:
        """Layer `index` on (B, L, D), with activation checkpointing if enabled;
        `image_key_value`: its t2i keys / values computed beforehand (instead of `image`)."""
        layer = self.layers[index]
        arguments = (hidden, attention_bias, image, output_norm, image_key_value)
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *arguments, use_reentrant=False)
        return layer(*arguments)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Every layer without fusion, each with its output LayerNorm: (B, L) ids and 0/1 mask
        -> (B, L, D)."""
        hidden = self.embed(input_ids)
        bias = extended_attention_bias(attention_mask, hidden.dtype)
        for index in range(len(self.layers)):
            hidden = self.run_layer(index, hidden, bias)
        return hidden

    def image_keys_values(self, contexts: dict[int, torch.Tensor]) -> list[KeyValue | None]:
        """Per layer the t2i keys / values of its image context (B, N, C) from `contexts`
        ({layer index: tokens}); None for layers without a context."""
        return [
            layer.image_keys_values(contexts[i]) if i in contexts else None
            for i, layer in enumerate(self.layers)
        ]

    def decode(
        self,
        input_ids: torch.Tensor,
        image_key_values: list[KeyValue | None],
        attention_mask: torch.Tensor | None = None,
        cache: list[KeyValue] | None = None,
    ) -> tuple[torch.Tensor, list[KeyValue]]:
        """The tower as a causal decoder on T new ids (B, T) after P cached ones -> final hidden
        (B, T, D) and the new cache (per layer self keys / values (B, h, P + T, d)).

        `image_key_values` from `image_keys_values`; `attention_mask` (B, P + T) marks real
        tokens (None: all real). With activation checkpointing on, training recomputes each
        layer in the backward pass.
        """
        past = 0 if cache is None else cache[0][0].shape[2]
        hidden = self.embed(input_ids, past_length=past)
        length = past + input_ids.shape[1]
        bias = causal_attention_bias(
            attention_mask, input_ids.shape[1], length, hidden.dtype, input_ids.device
        )
        checkpointed = self.use_checkpoint and self.training and torch.is_grad_enabled()
        new_cache = []
        for index, layer in enumerate(self.layers):
            inputs = (
                hidden,
                bias,
                None if cache is None else cache[index],
                image_key_values[index],
            )
            if checkpointed:
                hidden, key_value = checkpoint(layer.decode, *inputs, use_reentrant=False)
            else:
                hidden, key_value = layer.decode(*inputs)
            new_cache.append(key_value)
        return hidden, new_cache


class FusedBert(FusedRoberta):
    """A BERT-family text tower (BERT, MiniLM; GLIP's text tower is BERT): the same layers and
    parameter names as RoBERTa's, absolute position ids from 0 (no padding row), token type 0."""

    @staticmethod
    def position_padding_idx(config: PretrainedConfig) -> int | None:
        return None

    def position_ids(self, input_ids: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        return bert_position_ids(input_ids, past_length)
