"""Grid encoder: res5 features -> hidden-size grid (the original's cnn.grid_encoder)."""

from __future__ import annotations

import torch
from torch import nn


class GridEncoder(nn.Sequential):
    """3x3 conv without bias (C5 -> H), 2x2 max-pool (stride 2), ReLU: [B, C5, h, w] -> [B, H, h/2, w/2].

    An nn.Sequential so that parameter names match the original's `grid_encoder.0.weight`.
    """

    def __init__(self, in_channels: int, hidden_size: int):
        super().__init__(
            nn.Conv2d(in_channels, hidden_size, kernel_size=3, padding=1, bias=False),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)
