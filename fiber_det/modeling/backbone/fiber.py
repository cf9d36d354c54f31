"""FiberTrunk: the Swin and RoBERTa towers run in lock-step, fused in their top blocks.

Schedule (fine_grained_spec.md a.4, coarse_grained_spec.md a.2), generalised from FIBER-B's
hard-coded constants: the last K Swin blocks (counted over all stages) are paired, in order,
with the last K RoBERTa layers. Everything before the first fused block is text-independent:
`encode_image_prefix` computes it once and `forward_fused` continues it with one or several
prompts per image. In each pair both sides read the other modality from before the pair.
"""

from dataclasses import dataclass

import torch
from detectron2.config import configurable
from torch import nn
from transformers import AutoConfig, BertConfig, PretrainedConfig, RobertaConfig

from fiber_det.checkpoint.unimodal import load_swin_weights, load_text_weights
from fiber_det.modeling.backbone.fusion import extended_attention_bias
from fiber_det.modeling.backbone.roberta import FusedBert, FusedRoberta
from fiber_det.modeling.backbone.swin import FusedSwin
from fiber_det.modeling.backbone.windows import eager_inference
from fiber_det.modeling.onednn_linear import onednn_linears_on_cpu


@dataclass
class TextFeatures:
    """Final text states: `hidden` (B, L, D), `mask` (B, L) 0/1, `embedded` = hidden * mask."""

    hidden: torch.Tensor
    mask: torch.Tensor
    embedded: torch.Tensor


@dataclass
class ImagePrefix:
    """The text-independent part of the image tower, stopped before the first fused block.

    `tokens` (B, H, W, C) is the input of block (`stage`, `block`); `features` holds the res
    features of the stages already finished, e.g. {"res2": (B, C, H, W), ...}. At inference
    the prefix also holds the first fused pair's text-independent work, done once per image
    however many prompts follow: `attended` (B, H, W, C), that Swin block's window attention,
    `i2t_query` (B, h, H * W, d), the queries its i2t attention makes of `attended`, and
    `text_context`, the t2i keys and values (B, h, N, d) its text layer reads from `tokens`.
    All None with autograd (training computes them in the fused pass).
    """

    tokens: torch.Tensor
    stage: int
    block: int
    features: dict[str, torch.Tensor]
    attended: torch.Tensor | None = None
    i2t_query: torch.Tensor | None = None
    text_context: tuple[torch.Tensor, torch.Tensor] | None = None

    def select(self, rows: torch.Tensor) -> "ImagePrefix":
        """The prefix of images `rows` (N,) (repeats allowed): tokens (N, H, W, C)."""
        features = {k: v[rows] for k, v in self.features.items()}
        attended, query = (None if t is None else t[rows] for t in (self.attended, self.i2t_query))
        context = self.text_context
        if context is not None:
            context = (context[0][rows], context[1][rows])
        return ImagePrefix(
            self.tokens[rows], self.stage, self.block, features, attended, query, context
        )

    def repeat(self, times: int) -> "ImagePrefix":
        """Each image repeated `times` times, image-major (image 0's copies first)."""
        if isinstance(times, int) and times == 1:  # a SymInt while exporting: no shortcut
            return self
        count = self.tokens.shape[0] * times
        return self.select(torch.arange(count, device=self.tokens.device) // times)


@dataclass
class TrunkOutput:
    """What the trunk returns.

    image: "res2".."res5" -> (B, C, H, W). With per-stage output norms (fine-grained) every
        level is normed as configured; with the single final norm (coarse-grained) res2..res4
        are raw and res5 is normed only on the unimodal (unfused) path.
    text: final text states, or None when no text was given.
    image_tokens: (B, N, C) raw last-stage tokens (last block output, before any norm); what
        the coarse heads read on the fused path.
    fused: whether cross-attention ran.
    """

    image: dict[str, torch.Tensor]
    text: TextFeatures | None
    image_tokens: torch.Tensor
    fused: bool


class FiberTrunk(nn.Module):
    """Fused Swin + RoBERTa trunk (FIBER). See the module docstring for the schedule.

    Args:
        image_backbone: the Swin tower. text_backbone: the RoBERTa tower; its number of fused
            layers must equal the number of fused Swin blocks.
        fusion_enabled: False makes every forward a dual-encoder forward.
        fused_text_last_norm: apply the last text layer's output LayerNorm on the fused path
            (fine-grained: True; coarse-grained `last_norm=False`: False).
        onednn_cpu_linear: CPU fp32 inference runs the linear layers through oneDNN (see
            onednn_linear.py); False keeps `F.linear`'s BLAS.
    """

    @configurable
    def __init__(
        self,
        *,
        image_backbone: FusedSwin,
        text_backbone: FusedRoberta,
        fusion_enabled: bool = True,
        fused_text_last_norm: bool = True,
        onednn_cpu_linear: bool = True,
    ):
        super().__init__()
        num_text_fused = len(text_backbone.layers) - text_backbone.first_fused
        if num_text_fused != len(image_backbone.fused_ids):
            raise ValueError(
                f"{len(image_backbone.fused_ids)} fused Swin blocks but {num_text_fused} fused "
                "text layers"
            )
        self.image_backbone = image_backbone
        self.text_backbone = text_backbone
        self.fusion_enabled = fusion_enabled
        self.fused_text_last_norm = fused_text_last_norm
        self.onednn_cpu_linear = onednn_cpu_linear

    @classmethod
    def from_config(cls, cfg) -> dict:
        fiber = cfg.MODEL.FIBER
        text_config = build_text_config(fiber.TEXT)
        num_fused = fiber.FUSION.NUM_LAYERS
        swin = FusedSwin(
            patch_size=fiber.SWIN.PATCH_SIZE,
            embed_dim=fiber.SWIN.EMBED_DIM,
            depths=tuple(fiber.SWIN.DEPTHS),
            num_heads=tuple(fiber.SWIN.NUM_HEADS),
            window_size=fiber.SWIN.WINDOW_SIZE,
            mlp_ratio=fiber.SWIN.MLP_RATIO,
            drop_path_rate=fiber.SWIN.DROP_PATH_RATE,
            text_dim=text_config.hidden_size,
            num_fused_blocks=num_fused,
            window_policy=fiber.SWIN.WINDOW_POLICY,
            output_norms=fiber.SWIN.OUTPUT_NORMS,
            query_norm=fiber.FUSION.QUERY_NORM,
            use_sdpa=fiber.USE_SDPA,
            use_checkpoint=fiber.USE_CHECKPOINT,
        )
        fused_dims = [
            swin.dims[stage] for stage, _ in swin.block_ids[swin.num_blocks - num_fused :]
        ]
        text_tower = TEXT_TOWERS[fiber.TEXT.ARCHITECTURE][1]
        roberta = text_tower(text_config, fused_dims, fiber.USE_SDPA, fiber.USE_CHECKPOINT)
        # a shape-only build on the meta device (conversion checks) has nowhere to put weights
        shapes_only = swin.patch_embed.proj.weight.is_meta
        if fiber.SWIN.WEIGHTS and not shapes_only:
            load_swin_weights(swin, fiber.SWIN.WEIGHTS)
        if fiber.TEXT.WEIGHTS and not shapes_only:
            load_text_weights(roberta, fiber.TEXT.WEIGHTS)
        swin.freeze(fiber.SWIN.FREEZE_AT)
        roberta.freeze(fiber.TEXT.FREEZE_AT)
        return {
            "image_backbone": swin,
            "text_backbone": roberta,
            "fusion_enabled": fiber.FUSION.ENABLED,
            "fused_text_last_norm": fiber.FUSION.TEXT_LAST_NORM,
            "onednn_cpu_linear": fiber.ONEDNN_CPU_LINEAR,
        }

    @property
    def text_pad_token_id(self) -> int:
        return self.text_backbone.pad_token_id

    @property
    def text_hidden_size(self) -> int:
        return self.text_backbone.hidden_size

    @property
    def text_vocab_size(self) -> int:
        return self.text_backbone.config.vocab_size

    @property
    def text_special_token_ids(self) -> dict[str, int]:
        """{"bos", "eos", "pad"} ids of the text tower's config."""
        config = self.text_backbone.config
        return {"bos": config.bos_token_id, "eos": config.eos_token_id, "pad": config.pad_token_id}

    @property
    def num_text_layers(self) -> int:
        return len(self.text_backbone.layers)

    @property
    def image_channels(self) -> dict[str, int]:
        return {f"res{i + 2}": dim for i, dim in enumerate(self.image_backbone.dims)}

    @property
    def image_strides(self) -> dict[str, int]:
        return {f"res{i + 2}": stride for i, stride in enumerate(self.image_backbone.strides)}

    @property
    def size_divisibility(self) -> int:
        return self.image_backbone.strides[-1]

    @onednn_linears_on_cpu
    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        fuse: bool = True,
    ) -> TrunkOutput:
        """images (B, 3, H, W) pixel-normalised, H and W multiples of 32; ids/mask (B', L).

        Without text, or with `fuse=False` / fusion disabled, the towers run independently.
        B' may be k * B (k prompts per image, image-major).
        """
        if input_ids is not None and fuse and self.fusion_enabled:
            return self.forward_fused(self.encode_image_prefix(images), input_ids, attention_mask)
        end = (self.image_backbone.num_stages, 0)
        tokens, image = self._run_unfused(self._embed_image(images), end)
        text = None
        if input_ids is not None:
            text = self.encode_text(input_ids, attention_mask)
        return TrunkOutput(image, text, tokens.flatten(1, 2), fused=False)

    @onednn_linears_on_cpu
    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> TextFeatures:
        """The text tower alone (dual-encoder mode), every layer with its output LayerNorm:
        (B, L) ids and 0/1 mask -> TextFeatures."""
        attention_mask = self._check_text(input_ids, attention_mask)
        hidden = self.text_backbone.encode(input_ids, attention_mask)
        return TextFeatures(hidden, attention_mask, hidden * attention_mask[..., None])

    def text_tower_state_dict(self) -> dict[str, torch.Tensor]:
        """The text tower's weights: all that `encode_text` depends on."""
        return self.text_backbone.state_dict()

    @onednn_linears_on_cpu
    def encode_image_prefix(self, images: torch.Tensor) -> ImagePrefix:
        """Patch embedding and every block before the first fused one: (B, 3, H, W) -> prefix;
        at inference also the first fused pair's text-independent work (see ImagePrefix)."""
        stop = self.image_backbone.first_fused_block
        tokens, features = self._run_unfused(self._embed_image(images), stop)
        prefix = ImagePrefix(tokens, *stop, features)
        if eager_inference() and stop[0] < self.image_backbone.num_stages:
            prefix.attended = self.image_backbone.block_attention(*stop, tokens)
            prefix.i2t_query = self.image_backbone.block_i2t_query(*stop, prefix.attended)
            first_text_layer = self.text_backbone.layers[self.text_backbone.first_fused]
            prefix.text_context = first_text_layer.image_keys_values(tokens.flatten(1, 2))
        return prefix

    @onednn_linears_on_cpu
    def forward_fused(
        self,
        prefix: ImagePrefix,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> TrunkOutput:
        """Continue `prefix` with text (B', L), B' = k * B: the fused blocks and text layers."""
        attention_mask = self._check_text(input_ids, attention_mask)
        num_images, num_texts = prefix.tokens.shape[0], input_ids.shape[0]
        if num_texts % num_images:
            raise ValueError(
                f"{num_texts} texts for {num_images} images: the text batch must be a "
                "multiple of the image batch (k prompts per image, image-major)"
            )
        prefix = prefix.repeat(num_texts // num_images)
        hidden = self.text_backbone.embed(input_ids)
        bias = extended_attention_bias(attention_mask, hidden.dtype)
        for index in range(self.text_backbone.first_fused):
            hidden = self.text_backbone.run_layer(index, hidden, bias)
        image, tokens, hidden = self._run_fused(prefix, hidden, bias)
        text = TextFeatures(hidden, attention_mask, hidden * attention_mask[..., None])
        return TrunkOutput(image, text, tokens, fused=True)

    def fused_layer_stages(self) -> dict[int, int]:
        """{text layer index: index of the Swin stage of its paired fused block}, in order."""
        swin, text = self.image_backbone, self.text_backbone
        num_fused = len(text.layers) - text.first_fused
        paired_blocks = swin.block_ids[swin.num_blocks - num_fused :]
        return {text.first_fused + i: stage for i, (stage, _) in enumerate(paired_blocks)}

    def text_image_keys_values(self, contexts: dict[int, torch.Tensor]) -> list:
        """Per text layer the t2i keys / values (B, h, N, d) of its image context, from
        `contexts` {layer index: (B, N, C) tokens}; None for layers without one. Computed once
        per image for `decode_text`."""
        return self.text_backbone.image_keys_values(contexts)

    def decode_text(
        self,
        input_ids: torch.Tensor,
        image_key_values: list,
        attention_mask: torch.Tensor | None = None,
        cache: list | None = None,
    ) -> tuple[torch.Tensor, list]:
        """The text tower as a causal decoder (captioning, coarse_grained_spec.md c.4): T new
        ids (B, T) after the cached ones -> final hidden (B, T, D) and the new key / value
        cache. See FusedRoberta.decode."""
        return self.text_backbone.decode(input_ids, image_key_values, attention_mask, cache)

    def parameters_off_the_fused_path(self) -> list[nn.Parameter]:
        """Trunk parameters a fused-pass-only task never reaches: the final Swin norm (applied
        on the unfused path only) and the last text layer's output LayerNorm when the fused
        path skips it (`fused_text_last_norm` False)."""
        modules = [getattr(self.image_backbone, "final_norm", None)]
        if not self.fused_text_last_norm:
            modules.append(self.text_backbone.layers[-1].output.LayerNorm)
        return [p for module in modules if module is not None for p in module.parameters()]

    def _run_fused(
        self, prefix: ImagePrefix, hidden: torch.Tensor, bias: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Paired fused blocks / text layers from the prefix on; both read pre-pair states."""
        features = dict(prefix.features)
        tokens, stage, block = prefix.tokens, prefix.stage, prefix.block
        last_layer = len(self.text_backbone.layers) - 1
        attended, query, text_context = prefix.attended, prefix.i2t_query, prefix.text_context
        for layer in range(self.text_backbone.first_fused, last_layer + 1):
            image_in = tokens.flatten(1, 2)
            tokens = self.image_backbone.run_block(
                stage, block, tokens, hidden, bias, attended, query
            )
            norm = layer != last_layer or self.fused_text_last_norm
            hidden = self.text_backbone.run_layer(
                layer, hidden, bias, image_in, output_norm=norm, image_key_value=text_context
            )
            attended, query, text_context = None, None, None  # only the first pair's are fixed
            tokens, features = self._after_block(stage, block, tokens, features, fused=True)
            stage, block = self._next_block(stage, block)
        return features, tokens.flatten(1, 2), hidden

    def _run_unfused(
        self, tokens: torch.Tensor, stop: tuple[int, int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Image-only blocks from the patch tokens up to (excluding) block `stop`."""
        features: dict[str, torch.Tensor] = {}
        stage, block = 0, 0
        while (stage, block) != stop:
            tokens = self.image_backbone.run_block(stage, block, tokens)
            tokens, features = self._after_block(stage, block, tokens, features, fused=False)
            stage, block = self._next_block(stage, block)
        return tokens, features

    def _after_block(
        self,
        stage: int,
        block: int,
        tokens: torch.Tensor,
        features: dict[str, torch.Tensor],
        fused: bool,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """At a stage's last block: record its res feature and merge patches (except last)."""
        if block == len(self.image_backbone.layers[stage].blocks) - 1:
            features = {
                **features,
                f"res{stage + 2}": self.image_backbone.stage_output(stage, tokens, fused),
            }
            if stage < self.image_backbone.num_stages - 1:
                tokens = self.image_backbone.downsample(stage, tokens)
        return tokens, features

    def _next_block(self, stage: int, block: int) -> tuple[int, int]:
        if block + 1 < len(self.image_backbone.layers[stage].blocks):
            return stage, block + 1
        return stage + 1, 0

    def _embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/4, W/4, C) after checking the input shape."""
        divisor = self.size_divisibility
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if images.shape[2] % divisor or images.shape[3] % divisor:
            raise ValueError(
                f"image size {tuple(images.shape[2:])} is not a multiple of {divisor}: pad "
                "the batch (detectron2 ImageList size_divisibility)"
            )
        return self.image_backbone.patch_embed(images)

    def _check_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Validate (B, L) ids and mask; a missing mask means every token is real."""
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"input_ids must be an integer (B, L) tensor, got {input_ids.dtype} "
                f"{tuple(input_ids.shape)}"
            )
        if attention_mask is None:
            return torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                f"{tuple(input_ids.shape)}"
            )
        return attention_mask


TEXT_TOWERS = {"roberta": (RobertaConfig, FusedRoberta), "bert": (BertConfig, FusedBert)}


def build_text_config(text_cfg) -> PretrainedConfig:
    """The text tower's transformers config from MODEL.FIBER.TEXT: a local directory's
    config.json (its model_type must be TEXT.ARCHITECTURE), else the sizes."""
    architecture = text_cfg.ARCHITECTURE
    if architecture not in TEXT_TOWERS:
        raise ValueError(
            f"MODEL.FIBER.TEXT.ARCHITECTURE {architecture!r}: expected one of {list(TEXT_TOWERS)}"
        )
    if text_cfg.WEIGHTS:
        config = AutoConfig.from_pretrained(text_cfg.WEIGHTS)
        if config.model_type != architecture:
            raise ValueError(
                f"MODEL.FIBER.TEXT.WEIGHTS {text_cfg.WEIGHTS} holds a '{config.model_type}' "
                f"model but MODEL.FIBER.TEXT.ARCHITECTURE is '{architecture}'"
            )
        return config
    config_class = TEXT_TOWERS[architecture][0]
    return config_class(
        vocab_size=text_cfg.VOCAB_SIZE,
        hidden_size=text_cfg.HIDDEN_SIZE,
        num_hidden_layers=text_cfg.NUM_LAYERS,
        num_attention_heads=text_cfg.NUM_HEADS,
        intermediate_size=text_cfg.INTERMEDIATE_SIZE,
        max_position_embeddings=text_cfg.MAX_POSITION_EMBEDDINGS,
        type_vocab_size=text_cfg.TYPE_VOCAB_SIZE,
        layer_norm_eps=text_cfg.LAYER_NORM_EPS,
        pad_token_id=text_cfg.PAD_TOKEN_ID,
        hidden_dropout_prob=text_cfg.DROPOUT,
        attention_probs_dropout_prob=text_cfg.DROPOUT,
    )
