"""Swin relative position tables of another window size, resampled as the original loaders do."""

import torch


def interpolate_relative_position_bias(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """((2w-1)^2, heads) table -> ((2w'-1)^2, heads) by bicubic resampling of the (2w-1)^2
    grid, as the original FIBER / Swin loaders do (align_corners=False)."""
    old_side = round(table.shape[0] ** 0.5)
    if old_side**2 != table.shape[0]:
        raise ValueError(f"relative position table of {table.shape[0]} rows is not square")
    new_side = 2 * window_size - 1
    if new_side == old_side:
        return table
    heads = table.shape[1]
    grid = table.T.reshape(1, heads, old_side, old_side).float()
    grid = torch.nn.functional.interpolate(grid, size=(new_side, new_side), mode="bicubic")
    return grid[0].permute(1, 2, 0).reshape(new_side * new_side, heads).to(table.dtype)


def resample_tables_to_window(state_dict: dict[str, torch.Tensor], window_size: int) -> None:
    """Resample, in place, every `relative_position_bias_table` of `state_dict` to `window_size`."""
    for key, tensor in state_dict.items():
        if key.endswith("relative_position_bias_table"):
            state_dict[key] = interpolate_relative_position_bias(tensor, window_size)


def resample_position_tables(
    state_dict: dict, model_state: dict[str, torch.Tensor]
) -> dict[str, tuple[int, int]]:
    """Resample, in place, every Swin `relative_position_bias_table` of `state_dict` whose row
    count differs from the model's (another image size, hence window: a 384 pre-training
    checkpoint in a 576 VQA model), as the original loader does (coarse_grained_spec.md a.1).
    The model keeps its own position index and shift masks. Returns {key: (rows, new rows)}."""
    resized = {}
    for key, table in state_dict.items():
        target = model_state.get(key) if key.endswith("relative_position_bias_table") else None
        if target is None or not isinstance(table, torch.Tensor) or table.shape == target.shape:
            continue
        if table.dim() != 2 or table.shape[1] != target.shape[1]:
            continue  # another head count: left for the loader to report as a shape mismatch
        window = (round(target.shape[0] ** 0.5) + 1) // 2
        state_dict[key] = interpolate_relative_position_bias(table, window)
        resized[key] = (table.shape[0], target.shape[0])
    return resized
