"""Swin window geometry: padding / shift per window policy, the shifted-window mask, window
partition and merge, and the inference-time window attention.

At inference (no autograd, no export tracing) a Swin block attends in chunks of windows and,
for shifted blocks, without rolling the map (`attend_shifted`); the training path keeps the
original's roll / mask / roll back. Both give the same values (tests/modeling/backbone).
"""

from functools import lru_cache

import torch
from timm.models.swin_transformer import WindowAttention

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
