"""Swin Transformer tower with optional image->text fusion, built from timm's Swin parts.

timm's `WindowAttention` (relative position bias, optional SDPA), `PatchEmbed`, `PatchMerging`,
`Mlp` and `DropPath` are imported. The block itself is a thin composition because timm's block
shifts before padding and drops the shift when the map is not larger than the window, while
the original Swin used by FIBER (microsoft/Swin-Transformer detection code, FIBER
fusion_swin_transformer_v2.py) pads bottom/right to a window multiple first, then shifts the
padded map, always (fine_grained_spec.md a.1). Both window policies are available:

- "pad_and_shift" (fine-grained): fixed window, padding, shift on every odd block.
- "clamp" (coarse-grained): where a stage grid is not larger than the window, the window
  shrinks to the grid and the shift is dropped (coarse_grained_spec.md a.1).

The stage layout follows the original checkpoints: `layers.i.downsample` merges patches at the
END of stage i, so the released keys map one-to-one. Without autograd a block takes the
inference path of windows.py and adds its residuals in place; the values are the same.
"""

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models.swin_transformer import PatchEmbed, PatchMerging, WindowAttention
from torch import nn
from torch.utils.checkpoint import checkpoint

from fiber_det.modeling.backbone.fusion import GatedCrossAttention
from fiber_det.modeling.backbone.windows import (
    WINDOW_POLICIES,
    attend_in_chunks,
    attend_shifted,
    attend_unpadded,
    build_shift_mask,
    eager_inference,
    merge_windows,
    partition_windows,
    rows_per_chunk,
    shift_mask,
    window_and_shift,
)


class SwinBlock(nn.Module):
    """Pre-norm Swin block; `i2t` (image queries attend to text) sits inside the attention branch.

    `x = x + DropPath(WA(LN1(x)) + gate * CrossAttn(WA(LN1(x)), text))`, then the MLP residual
    (fine_grained_spec.md a.3). The cross-attention is per token, so it runs on the merged
    (un-windowed) map: identical to the original's per-window computation, without a loop.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shifted: bool,
        mlp_ratio: float,
        drop_path: float,
        text_dim: int | None,
        window_policy: str,
        query_norm: bool,
        use_sdpa: bool,
    ):
        super().__init__()
        self.window_size = window_size
        self.shifted = shifted
        self.window_policy = window_policy
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size=window_size, qkv_bias=True)
        self.attn.fused_attn = use_sdpa
        self.i2t = None
        if text_dim is not None:
            self.i2t = GatedCrossAttention(
                dim, text_dim, dim, num_heads, "fused", query_norm=query_norm, use_sdpa=use_sdpa
            )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(Shifted-)window self-attention on (B, H, W, C) with bottom/right padding."""
        _, height, width, _ = x.shape
        window, shift = window_and_shift(
            height, width, self.window_size, self.shifted, self.window_policy
        )
        if window != self.window_size:
            raise ValueError(
                f"the 'clamp' window policy needs a {window}x{window} window on a "
                f"{height}x{width} grid but this block was built for {self.window_size}: set "
                "MODEL.FIBER.SWIN.WINDOW_SIZE to image_size / 32"
            )
        # ceil division keeps an exported graph's symbolic sizes simple (a modulo does not)
        padded_h = (height + window - 1) // window * window
        padded_w = (width + window - 1) // window * window
        needs_padding = padded_h != height or padded_w != width
        # the CPU inference paths work a window row / a few windows at a time, for the caches;
        # on a GPU their many small launches cost more than one pass over every window
        cpu_inference = eager_inference() and x.device.type == "cpu"
        if cpu_inference and needs_padding:
            return attend_unpadded(self.attn, x, window, shift)
        if torch.compiler.is_exporting() or needs_padding:
            x = F.pad(x, (0, 0, 0, padded_w - width, 0, padded_h - height))
        if cpu_inference:
            if shift:
                return attend_shifted(self.attn, x, window, shift)
            out = attend_in_chunks(self.attn, partition_windows(x, window))
            return merge_windows(out, window, padded_h, padded_w)
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            if torch.compiler.is_exporting():
                mask = build_shift_mask(padded_h, padded_w, window, shift).to(x)
            else:
                mask = shift_mask(padded_h, padded_w, window, shift, x.device, x.dtype)
        out = self.attn(partition_windows(x, window), mask=mask)
        out = merge_windows(out, window, padded_h, padded_w)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        if torch.compiler.is_exporting():
            # whether a slice is a contiguous view depends on whether padding happened, which
            # torch.export would fix to the traced size; index_select copies for any size
            rows = torch.arange(height, device=out.device)
            return out.index_select(1, rows).index_select(2, torch.arange(width, device=out.device))
        return out[:, :height, :width]

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor | None = None,
        text_bias: torch.Tensor | None = None,
        attended: torch.Tensor | None = None,
        i2t_query: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C); `text` (B, L, Dt) with its (B, 1, 1, L) bias fuses.
        `attended`: this block's `attention_branch(x)` computed beforehand (read, not written);
        `i2t_query`: the i2t queries (B, h, H * W, d) of `attended`, computed beforehand."""
        if attended is None:
            attended = self.attention_branch(x)
        elif text is None or self.i2t is None:
            attended = attended.clone()  # the in-place residual below must not write into it
        if text is not None and self.i2t is not None:
            tokens = attended.flatten(1, 2)
            update = self.i2t(tokens, text, text_bias, i2t_query)
            attended = (tokens + update).view_as(attended)
        if self.training or not eager_inference():
            x = x + self.drop_path(attended)
            return x + self.drop_path(self.mlp(self.norm2(x)))
        return self.residuals_in_place(x, attended)

    def attention_branch(self, x: torch.Tensor) -> torch.Tensor:
        """The text-independent part of the attention branch: window attention of norm1(x),
        (B, H, W, C) -> (B, H, W, C)."""
        return self.window_attention(self.norm1(x))

    def residuals_in_place(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Inference: the residual adds in place in the attention branch's fresh buffer, the
        MLP a few thousand tokens at a time with its GELU in place; same values as the
        training path (addition commutes). (B, H, W, C) input and attention branch -> output."""
        in_place = attended.is_contiguous() and attended.dtype == x.dtype  # autocast: bf16
        x = attended.add_(x) if in_place else x + attended
        tokens = x.view(-1, x.shape[-1])
        step = rows_per_chunk(tokens, self.mlp.fc1.out_features)
        for start in range(0, tokens.shape[0], step):
            piece = tokens[start : start + step]
            hidden = self.mlp.fc1(self.norm2(piece))
            torch.ops.aten.gelu_(hidden)  # the nn.GELU() of timm's Mlp
            piece.add_(self.mlp.fc2(hidden))
        return x


class SwinStage(nn.Module):
    """`blocks` then the optional `downsample` (PatchMerging at the end, as the original)."""

    def __init__(self, blocks: list[SwinBlock], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class FusedSwin(nn.Module):
    """Swin image tower: patch embedding, stages, output norms; fusion in the last K blocks.

    Args:
        patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio, drop_path_rate:
            the Swin sizes (FIBER-B: 4, 128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 4.0, 0.4).
        text_dim: width of the text hidden states the fused blocks attend to.
        num_fused_blocks: the last K blocks (counted over all stages) carry i2t attention.
        window_policy: "pad_and_shift" (fine) or "clamp" (coarse), see the module docstring.
        output_norms: "per_stage" (LayerNorm on stages 1..n-1, Identity on stage 0) or
            "final" (one LayerNorm `final_norm` on the last stage only).
        query_norm: LayerNorm on the i2t query (`norm_i2t_i`, FIBER v3 / coarse).
        use_sdpa, use_checkpoint: SDPA attention; activation checkpointing per block.
    """

    def __init__(
        self,
        patch_size: int = 4,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        num_heads: tuple[int, ...] = (4, 8, 16, 32),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.4,
        text_dim: int = 768,
        num_fused_blocks: int = 6,
        window_policy: str = "pad_and_shift",
        output_norms: str = "per_stage",
        query_norm: bool = False,
        use_sdpa: bool = True,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if window_policy not in WINDOW_POLICIES:
            raise ValueError(f"window_policy must be one of {WINDOW_POLICIES}, got {window_policy}")
        if output_norms not in ("per_stage", "final"):
            raise ValueError(f"output_norms must be 'per_stage' or 'final', got {output_norms}")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} differ in length")
        if not 0 <= num_fused_blocks <= sum(depths):
            raise ValueError(f"num_fused_blocks {num_fused_blocks} not in [0, {sum(depths)}]")
        self.use_checkpoint = use_checkpoint
        self.output_norms = output_norms
        self.window_size = window_size
        self.dims = [embed_dim * 2**i for i in range(len(depths))]
        self.strides = [patch_size * 2**i for i in range(len(depths))]
        self.patch_embed = PatchEmbed(
            img_size=None,
            patch_size=patch_size,
            embed_dim=embed_dim,
            norm_layer=nn.LayerNorm,
            output_fmt="NHWC",
            strict_img_size=False,
        )
        self.block_ids = [(s, b) for s, depth in enumerate(depths) for b in range(depth)]
        self.fused_ids = set(self.block_ids[len(self.block_ids) - num_fused_blocks :])
        steps = max(len(self.block_ids) - 1, 1)  # linear 0 -> drop_path_rate, as torch.linspace
        rates = iter([drop_path_rate * i / steps for i in range(len(self.block_ids))])
        self.layers = nn.ModuleList()
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = self.dims[stage]
            blocks = [
                SwinBlock(
                    dim, heads, window_size, shifted=b % 2 == 1, mlp_ratio=mlp_ratio,
                    drop_path=next(rates), window_policy=window_policy, query_norm=query_norm,
                    text_dim=text_dim if (stage, b) in self.fused_ids else None,
                    use_sdpa=use_sdpa,
                )
                for b in range(depth)
            ]  # fmt: skip
            last = stage == len(depths) - 1
            downsample = None if last else PatchMerging(dim, out_dim=2 * dim)
            self.layers.append(SwinStage(blocks, downsample))
        if output_norms == "per_stage":
            self.stage_norms = nn.ModuleList(
                [nn.Identity()] + [nn.LayerNorm(d) for d in self.dims[1:]]
            )
        else:
            self.final_norm = nn.LayerNorm(self.dims[-1])

    @property
    def num_stages(self) -> int:
        return len(self.layers)

    @property
    def num_blocks(self) -> int:
        return len(self.block_ids)

    @property
    def first_fused_block(self) -> tuple[int, int]:
        """(stage, block) of the first fused block; (num_stages, 0) when nothing is fused."""
        fused = self.block_ids[self.num_blocks - len(self.fused_ids) :]
        return fused[0] if fused else (self.num_stages, 0)

    def stage_output(self, stage: int, x: torch.Tensor, fused: bool) -> torch.Tensor:
        """The res feature (B, C, H, W) of `stage` from its last block's output (B, H, W, C)."""
        if self.output_norms == "per_stage":
            x = self.stage_norms[stage](x)
        elif stage == self.num_stages - 1 and not fused:
            x = self.final_norm(x)
        return x.permute(0, 3, 1, 2).contiguous()

    def run_block(
        self,
        stage: int,
        block: int,
        x: torch.Tensor,
        text: torch.Tensor | None = None,
        text_bias: torch.Tensor | None = None,
        attended: torch.Tensor | None = None,
        i2t_query: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run block (stage, block) on (B, H, W, C), with activation checkpointing if enabled;
        `attended` / `i2t_query`: parts computed beforehand (see SwinBlock.forward)."""
        module = self.layers[stage].blocks[block]
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(module, x, text, text_bias, attended, i2t_query, use_reentrant=False)
        return module(x, text, text_bias, attended, i2t_query)

    def block_attention(self, stage: int, block: int, x: torch.Tensor) -> torch.Tensor:
        """The text-independent attention branch of block (stage, block) on (B, H, W, C)."""
        return self.layers[stage].blocks[block].attention_branch(x)

    def block_i2t_query(self, stage: int, block: int, attended: torch.Tensor) -> torch.Tensor:
        """The i2t queries (B, h, H * W, d) of fused block (stage, block) from its attention
        branch `attended` (B, H, W, C); text-independent."""
        return self.layers[stage].blocks[block].i2t.queries(attended.flatten(1, 2))

    def downsample(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """PatchMerging at the end of `stage`: (B, H, W, C) -> (B, H/2, W/2, 2C)."""
        _, height, width, _ = x.shape
        if height % 2 or width % 2:
            raise ValueError(
                f"stage {stage} map is {height}x{width}; Swin needs even sizes: pad images to a "
                "multiple of 32"
            )
        return self.layers[stage].downsample(x)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the patch embedding (freeze_at >= 1) and stages 1..freeze_at-1 (detectron2)."""
        modules = [self.patch_embed] if freeze_at >= 1 else []
        modules += list(self.layers[: max(freeze_at - 1, 0)])
        for module in modules:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
