"""Temporal mean-pooling of frame features within a clip (paper Sec. 3): public wrapper."""

from __future__ import annotations

import torch

from clipbert.ops import _backend
from clipbert.ops.lse import FLOAT_DTYPES, _ops
from clipbert.ops.reference import temporal_mean_reference


def temporal_mean(x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Mean over the frame axis with float32 accumulation.

    x: [B, T, ...] float32/float16/bfloat16/float64, any strides (strided B/T are read in place; strided
    inner dims are copied once). Returns [B, ...] in x's dtype. Backward: grad / T broadcast over T.
    The frames are summed before the division, in float32 for 16/32-bit x: features whose sum over T passes
    float32's max (about 3.4e38, e.g. bfloat16 near its max) come out inf, on every backend.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"temporal_mean: x must be a Tensor [B, T, ...], got {type(x).__name__}")
    if x.dim() < 2 or x.shape[1] == 0:
        raise ValueError(f"temporal_mean: x must be [B, T, ...] with T > 0, got {list(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"temporal_mean: x must be float32/float16/bfloat16/float64, got {x.dtype}")
    name = _backend.resolve(backend, x.device)
    if name == "reference":
        return temporal_mean_reference(x)
    return _ops(name).temporal_mean(x)
