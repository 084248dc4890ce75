"""Temporal fusion of the T frame grids of one clip into one clip grid (paper Table 2).

Placement: after the grid encoder, on [.., H, h, w] hidden-size grids, exactly where the original release
mean-pools (VisualInputEmbedding: `grid.mean(1)` over frames before the 2D position embeddings). The conv
variants therefore convolve H channels on a small (h, w) grid, which is cheap even for T > 1.

- "mean": average over T (clipbert.ops.temporal_mean when available, a local fallback otherwise).
- "conv3d": Conv3d(H, H, kernel 3, stride 1, padding 1 in time and space), then the mean over T.
- "conv2plus1d": spatial Conv3d (1, 3, 3) -> ReLU -> temporal Conv3d (3, 1, 1), then the mean over T.
The conv kernels start as identity (Dirac, zero bias), so every variant starts equal to "mean" and a
checkpoint trained with mean fusion stays valid when switching variants.
"""

from __future__ import annotations

import torch
from torch import nn

try:  # fused kernels from the ops package; absent until that part lands
    from clipbert.ops import temporal_mean as _ops_temporal_mean
except ImportError:  # pragma: no cover - depends on the ops package being present
    _ops_temporal_mean = None


def temporal_mean_reference(x: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] -> [B, ...] mean over T, accumulated in float32, returned in x's dtype."""
    return x.float().mean(dim=1).to(x.dtype)


def temporal_mean(x: torch.Tensor, *, use_ops: bool = True) -> torch.Tensor:
    """[B, T, ...] -> [B, ...]: clipbert.ops.temporal_mean when present (and use_ops), else the reference."""
    if use_ops and _ops_temporal_mean is not None and x.device.type != "meta":
        return _ops_temporal_mean(x)
    return temporal_mean_reference(x)


def _dirac_conv3d(channels: int, kernel: tuple[int, int, int], padding: tuple[int, int, int]) -> nn.Conv3d:
    conv = nn.Conv3d(channels, channels, kernel, stride=1, padding=padding)
    nn.init.dirac_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class TemporalFusion(nn.Module):
    """[B, T, H, h, w] -> [B, H, h, w]."""

    def __init__(self, mode: str, hidden_size: int):
        super().__init__()
        self.mode = mode
        if mode == "mean":
            self.convs = nn.ModuleList()
        elif mode == "conv3d":
            self.convs = nn.ModuleList([_dirac_conv3d(hidden_size, (3, 3, 3), (1, 1, 1))])
        elif mode == "conv2plus1d":
            self.convs = nn.ModuleList(
                [
                    _dirac_conv3d(hidden_size, (1, 3, 3), (0, 1, 1)),  # spatial
                    _dirac_conv3d(hidden_size, (3, 1, 1), (1, 0, 0)),  # temporal
                ]
            )
        else:
            raise ValueError(f"temporal_fusion must be one of mean, conv3d, conv2plus1d; got {mode!r}")
        self.use_ops = True  # tests flip this to compare the fused op against the reference

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        if self.convs:
            x = grid.transpose(1, 2)  # [B, H, T, h, w]: Conv3d wants channels before time
            for i, conv in enumerate(self.convs):
                x = conv(x)
                if i + 1 < len(self.convs):
                    x = torch.relu(x)
            grid = x.transpose(1, 2)  # [B, T, H, h, w]
        return temporal_mean(grid, use_ops=self.use_ops)
