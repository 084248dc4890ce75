"""Visual input embeddings: 2D position, visual token type, LayerNorm, dropout, pixel random sampling."""

from __future__ import annotations

import torch
from torch import nn


class VisualEmbeddings(nn.Module):
    """Clip grid [B, H, h, w] -> visual tokens [B, Lv, H] (Lv = h*w, or the sampled count in training).

    Order follows the original VisualInputEmbedding: row + column position embeddings are added per grid
    cell, the grid is flattened row-major, pixel random sampling (train mode only, when configured) keeps a
    sorted random subset of tokens, then the visual token type embedding, LayerNorm and dropout.
    """

    def __init__(
        self,
        hidden_size: int,
        max_grid_row: int,
        max_grid_col: int,
        layer_norm_eps: float,
        dropout: float,
        pixel_random_sampling_size: int = 0,
    ):
        super().__init__()
        self.row_position_embeddings = nn.Embedding(max_grid_row, hidden_size)
        self.col_position_embeddings = nn.Embedding(max_grid_col, hidden_size)
        self.token_type_embeddings = nn.Embedding(1, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.pixel_random_sampling_size = pixel_random_sampling_size

    def forward(self, grid: torch.Tensor) -> torch.Tensor:  # [B, H, h, w] -> [B, Lv, H]
        bsz, hidden, height, width = grid.shape
        if (
            height > self.row_position_embeddings.num_embeddings
            or width > self.col_position_embeddings.num_embeddings
        ):
            raise ValueError(
                f"visual grid {height}x{width} exceeds the position tables (max_grid_row x max_grid_col = "
                f"{self.row_position_embeddings.num_embeddings}x{self.col_position_embeddings.num_embeddings}):"
                " give smaller frames or a model built with larger tables"
            )
        grid = grid.permute(0, 2, 3, 1)  # [B, h, w, H]
        # The tables are read through their modules' forward, not `.weight[:h]`: ZeRO-3 gathers a partitioned
        # parameter only in its own module's hooks, and a partitioned table reads as empty (after a ZeRO-3
        # resume, evaluation failed with "shape [1, 1, H] is invalid for input of size 0").
        positions = torch.arange(max(height, width), device=grid.device)
        rows = self.row_position_embeddings(positions[:height]).view(height, 1, hidden)
        cols = self.col_position_embeddings(positions[:width]).view(1, width, hidden)
        tokens = (grid + rows + cols).reshape(bsz, height * width, hidden)  # [B, h*w, H]
        tokens = self._sample(tokens)
        tokens = tokens + self.token_type_embeddings(positions[:1])  # [1, H]: the one visual token type
        return self.dropout(self.LayerNorm(tokens))

    def _sample(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pixel random sampling (paper Sec. 3, details): one sorted random subset shared by the batch."""
        keep = self.pixel_random_sampling_size
        if not self.training or keep <= 0 or keep >= tokens.shape[1]:
            return tokens
        index = torch.randperm(tokens.shape[1], device=tokens.device)[:keep].sort().values
        return tokens.index_select(1, index)
