"""One square anchor per location and level, in maskrcnn_benchmark's geometry (GLIP, FIBER)."""

import torch


class GridAnchors:
    """Anchors of side `size` centred on each stride-`stride` cell, "+1" convention.

    The cell's base window is (0, 0, s - 1, s - 1), so the centre of location (i, j) is
    (j * s + (s - 1) / 2, i * s + (s - 1) / 2) and the anchor is centre +- (size - 1) / 2;
    e.g. stride 8, size 64 gives [-28, -28, 35, 35] at (0, 0). No parameters or buffers: the
    original's `cell_anchors` buffers are recomputed from the sizes and strides.
    """

    def __init__(self, sizes: list[float], strides: list[int]):
        if len(sizes) != len(strides):
            raise ValueError(
                f"MODEL.GROUNDING.ANCHOR_SIZES has {len(sizes)} entries but the backbone gives "
                f"{len(strides)} feature levels (strides {strides})"
            )
        self.sizes = [float(s) for s in sizes]
        self.strides = [int(s) for s in strides]

    def cell_anchor(self, level: int) -> torch.Tensor:
        """(4,) the anchor of location (0, 0) on `level`."""
        stride, size = self.strides[level], self.sizes[level]
        center = (stride - 1) / 2
        half = (size - 1) / 2
        return torch.tensor([center - half, center - half, center + half, center + half])

    def level_anchors(self, level: int, height: int, width: int, device=None) -> torch.Tensor:
        """(height * width, 4) anchors of one level, row-major over (h, w)."""
        stride = self.strides[level]
        shift_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
        shift_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
        grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).reshape(-1, 4)
        return shifts + self.cell_anchor(level).to(device)

    def __call__(self, level_sizes: list[tuple[int, int]], device=None) -> list[torch.Tensor]:
        """Anchors for every level: list of (H_l * W_l, 4), the same for every image."""
        return [self.level_anchors(lvl, h, w, device) for lvl, (h, w) in enumerate(level_sizes)]
