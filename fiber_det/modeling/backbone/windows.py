"""Swin window geometry: padding / shift per window policy, the shifted-window mask, window
partition and merge, and the inference-time window attention.

At CPU inference (no autograd, no export tracing) a Swin block attends in chunks of windows
and, for shifted blocks, without rolling the map (`attend_shifted`); on a grid that needs padding
it computes query / key / value and the output projection of the real tokens only
(`attend_unpadded`). The training path, and inference on a GPU (where these paths' many small
kernels cost more than they save), keeps the original's pad / roll / mask / roll back. All give
the same values (tests/modeling/backbone).
"""

from functools import lru_cache

import torch
from timm.models.swin_transformer import WindowAttention

from fiber_det.modeling.backbone.fusion import multi_head_attention

# The -100 of the original shifted-window mask (Swin, FS2:470-496).
SHIFT_MASK_LOGIT = -100.0
WINDOW_POLICIES = ("pad_and_shift", "clamp")
# CPU inference runs the per-token parts in pieces of about this many float intermediates
# (8 MB): small buffers stay in the allocator's heap and the caches instead of being mapped
# and page-faulted anew for every block at detection sizes.
CPU_CHUNK_ELEMENTS = 2**21


def eager_inference() -> bool:
    """No autograd and no export tracing: the in-place, chunked inference paths may run."""
    return not (torch.is_grad_enabled() or torch.compiler.is_exporting())


def rows_per_chunk(x: torch.Tensor, elements_per_row: int) -> int:
    """How many rows of `x` to process at once: all on a GPU, ~CPU_CHUNK_ELEMENTS on a CPU."""
    if x.device.type != "cpu":
        return max(x.shape[0], 1)
    return max(1, CPU_CHUNK_ELEMENTS // elements_per_row)


def window_and_shift(height: int, width: int, window: int, shifted: bool, policy: str):
    """The (window, shift) a block uses on an (height, width) grid under `policy`."""
    if policy == "clamp" and min(height, width) <= window:
        return min(height, width), 0
    return window, (window // 2 if shifted else 0)


def shift_regions(size: int, window: int, shift: int) -> torch.Tensor:
    """(size,) region index 0 / 1 / 2 of each row (or column) of a padded grid: before the last
    window, inside it before the last `shift`, in the last `shift`."""
    index = torch.arange(size)
    return (index >= size - window).long() + (index >= size - shift).long()


def build_shift_mask(padded_h: int, padded_w: int, window: int, shift: int) -> torch.Tensor:
    """(nW, w*w, w*w) additive float32 mask separating the regions the cyclic shift made
    adjacent (the nine-region labelling of the original Swin). Tensor ops only, so that
    torch.export traces it for any (symbolic) grid size."""
    region = 3 * shift_regions(padded_h, window, shift)[:, None]
    region = region + shift_regions(padded_w, window, shift)[None, :]
    windows = region.reshape(padded_h // window, window, padded_w // window, window)
    windows = windows.permute(0, 2, 1, 3).reshape(-1, window * window)
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, SHIFT_MASK_LOGIT)


@lru_cache(maxsize=64)
def shift_mask(
    padded_h: int, padded_w: int, window: int, shift: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """`build_shift_mask` cached per size, device and dtype (eager runs)."""
    return build_shift_mask(padded_h, padded_w, window, shift).to(device=device, dtype=dtype)


def edge_window_ids(rows: int, cols: int) -> list[int]:
    """Row-major ids of the windows where the cyclic shift joins regions: the last column
    (rows 0 .. rows-2), then the last row; the order `attend_shifted` runs them in."""
    last_column = [row * cols + cols - 1 for row in range(rows - 1)]
    return last_column + [(rows - 1) * cols + col for col in range(cols)]


@lru_cache(maxsize=64)
def edge_shift_mask(
    padded_h: int, padded_w: int, window: int, shift: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(rows + cols - 1, w*w, w*w): `shift_mask` of the edge windows only (every other
    window's mask is all zero)."""
    mask = shift_mask(padded_h, padded_w, window, shift, device, dtype)
    ids = edge_window_ids(padded_h // window, padded_w // window)
    return mask[torch.tensor(ids, device=device)]


def attend_in_chunks(
    attention: WindowAttention, windows: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """`attention` over (n, N, C) windows, a few windows at a time (inference).
    `mask` (n, N, N) holds one mask per window, or None. -> (n, N, C)."""
    count, tokens, _ = windows.shape
    step = rows_per_chunk(windows, tokens * attention.qkv.out_features)
    if step >= count:
        return attention(windows, mask=mask)
    out = torch.empty_like(windows)
    for start in range(0, count, step):
        part = None if mask is None else mask[start : start + step]
        out[start : start + step] = attention(windows[start : start + step], mask=part)
    return out


def attend_shifted(attention: WindowAttention, x: torch.Tensor, window: int, shift: int):
    """Shifted-window attention (inference) without rolling the map.

    The original rolls the map by -shift, attends in windows and rolls back. Away from the
    last window row and column the rolled windows are the map's own windows offset by
    `shift`, and there the shift mask is all zero: they are cut from the map as it is and
    attend with the relative-position bias alone. Only the last row and column of windows
    wrap around; those strips alone are rolled and masked. Same values as roll / attend with
    `shift_mask` / roll back. (B, Hp, Wp, C) padded map -> (B, Hp, Wp, C).
    """
    batch, height, width, channels = x.shape
    rows, cols, tokens, keep = height // window, width // window, window * window, window - shift
    end_h, end_w = height - keep, width - keep  # the interior windows span [shift, end)
    out = torch.empty_like(x)
    if rows > 1 and cols > 1:
        inner = attend_in_chunks(
            attention, partition_windows(x[:, shift:end_h, shift:end_w], window)
        )
        target = out[:, shift:end_h, shift:end_w]
        target = target.view(batch, rows - 1, window, cols - 1, window, channels)
        target.permute(0, 1, 3, 2, 4, 5).copy_(
            inner.view(batch, rows - 1, cols - 1, window, window, channels)
        )
    # the last window column (rolled rows 0 .. Hp - w) and the last window row, rolled
    column = torch.cat([x[:, shift:end_h, end_w:], x[:, shift:end_h, :shift]], dim=2)
    row = torch.cat([x[:, end_h:], x[:, :shift]], dim=1)
    row = torch.cat([row[:, :, shift:], row[:, :, :shift]], dim=2)
    row_windows = row.view(batch, window, cols, window, channels).transpose(1, 2)
    edges = torch.cat(
        [
            column.view(batch, rows - 1, tokens, channels),
            row_windows.reshape(batch, cols, tokens, channels),
        ],
        dim=1,
    )
    mask = edge_shift_mask(height, width, window, shift, x.device, x.dtype).repeat(batch, 1, 1)
    edges = attend_in_chunks(attention, edges.flatten(0, 1), mask).view(batch, -1, tokens, channels)
    column = edges[:, : rows - 1].reshape(batch, end_h - shift, window, channels)
    out[:, shift:end_h, end_w:] = column[:, :, :keep]
    out[:, shift:end_h, :shift] = column[:, :, keep:]
    row = edges[:, rows - 1 :].view(batch, cols, window, window, channels).transpose(1, 2)
    row = row.reshape(batch, window, width, channels)
    out[:, end_h:, shift:] = row[:, :keep, : width - shift]
    out[:, end_h:, :shift] = row[:, :keep, width - shift :]
    out[:, :shift, shift:] = row[:, keep:, : width - shift]
    out[:, :shift, :shift] = row[:, keep:, width - shift :]
    return out


def partition_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B * nW, window * window, C), windows image-major, row-major."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def merge_windows(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `partition_windows`: (B * nW, window * window, C) -> (B, Hp, Wp, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def real_runs(start: int, count: int, padded: int, real: int) -> list[tuple[int, int, int]]:
    """Runs (dst, src, length) covering the positions dst in [0, count) whose source
    (start + dst) % padded lies in the real part [0, real) of a padded axis, sources
    consecutive within a run: how one window row (or the rolled width) maps onto the map."""
    runs: list[tuple[int, int, int]] = []
    for dst in range(count):
        src = (start + dst) % padded
        if src >= real:
            continue
        if runs and runs[-1][0] + runs[-1][2] == dst and runs[-1][1] + runs[-1][2] == src:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((dst, src, 1))
    return runs


def relative_position_bias(attention: WindowAttention) -> torch.Tensor:
    """(1, heads, N, N) relative-position bias of a window of N tokens: the table entries its
    relative_position_index picks, as timm's WindowAttention adds them."""
    tokens = attention.relative_position_index.shape[0]
    table = attention.relative_position_bias_table[attention.relative_position_index.view(-1)]
    return table.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)


def attend_unpadded(
    attention: WindowAttention, x: torch.Tensor, window: int, shift: int
) -> torch.Tensor:
    """(Shifted-)window attention of a map that needs padding, computing no padded token
    (inference): (B, H, W, C) normed map -> (B, H, W, C).

    The original pads the normed map with zeros, so a padded token's query / key / value is
    the qkv bias; padded tokens still serve as keys and values, but their outputs are cut
    away. Here one window row at a time (rolled by `shift` when shifted) gets the qkv of its
    real rows and the bias elsewhere, attends with the relative-position bias (and the shift
    mask on the windows where the roll joins regions), and only the real tokens' outputs are
    kept and projected, in one product at the end.
    """
    batch, height, width, channels = x.shape
    padded_h = (height + window - 1) // window * window
    padded_w = (width + window - 1) // window * window
    rows, cols = padded_h // window, padded_w // window
    position_bias = relative_position_bias(attention)
    mask = shift_mask(padded_h, padded_w, window, shift, x.device, x.dtype) if shift else None
    qkv_bias = attention.qkv.bias  # SwinBlock builds WindowAttention with qkv_bias=True
    column_runs = real_runs(shift, padded_w, padded_w, width)
    context = None
    for row in range(rows):
        row_runs = real_runs(row * window + shift, window, padded_h, height)
        pieces = [attention.qkv(x[:, src : src + length]) for _, src, length in row_runs]
        strip = pieces[0].new_empty(batch, window, padded_w, pieces[0].shape[-1])
        strip.copy_(qkv_bias.to(strip.dtype).expand_as(strip))
        for (dst, _, length), piece in zip(row_runs, pieces):
            for col_dst, col_src, col_length in column_runs:
                target = strip[:, dst : dst + length, col_dst : col_dst + col_length]
                target.copy_(piece[:, :, col_src : col_src + col_length])
        windows = partition_windows(strip, window).unflatten(0, (batch, cols))
        windows = windows.unflatten(-1, (3, attention.num_heads, -1))
        query, key, value = windows.permute(3, 0, 1, 4, 2, 5)  # each (B, cols, heads, N, d)
        edge = None if mask is None else (0 if row == rows - 1 else cols - 1)
        out = attend_window_row(attention, query, key, value, position_bias, mask, row, edge)
        out = out.unflatten(3, (window, window)).permute(0, 3, 1, 4, 2, 5)
        out = out.reshape(batch, window, padded_w, -1)
        if context is None:
            context = out.new_empty(batch, height, width, out.shape[-1])
        for dst, src, length in row_runs:
            for col_dst, col_src, col_length in column_runs:
                target = context[:, src : src + length, col_src : col_src + col_length]
                target.copy_(out[:, dst : dst + length, col_dst : col_dst + col_length])
    return attention.proj(context)


def attend_window_row(
    attention: WindowAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    position_bias: torch.Tensor,
    mask: torch.Tensor | None,
    row: int,
    first_masked: int | None,
) -> torch.Tensor:
    """Attention of window row `row`: query / key / value (B, cols, heads, N, d) and the
    position bias (1, heads, N, N) -> (B, cols, heads, N, d). The windows from `first_masked`
    on also get their shift mask from `mask` (nW, N, N) (None: no window is masked); the
    others attend with the position bias alone (their mask is all zero)."""
    batch, cols = query.shape[:2]

    def attend(windows: slice, bias: torch.Tensor) -> torch.Tensor:
        # 4-D inputs: torch's CPU flash-attention kernel takes (B, heads, N, d) only
        q, k, v = (t[:, windows].flatten(0, 1) for t in (query, key, value))
        out = multi_head_attention(q, k, v, bias, attention.fused_attn)
        return out.unflatten(0, (batch, -1))

    if first_masked is None:
        return attend(slice(0, cols), position_bias)
    row_mask = mask[row * cols + first_masked : (row + 1) * cols]
    edge_bias = (position_bias + row_mask[:, None]).repeat(batch, 1, 1, 1)
    edge_out = attend(slice(first_masked, cols), edge_bias)
    if first_masked == 0:
        return edge_out
    out = torch.empty(query.shape, dtype=edge_out.dtype, device=query.device)
    out[:, first_masked:] = edge_out
    out[:, :first_masked] = attend(slice(0, first_masked), position_bias)
    return out
