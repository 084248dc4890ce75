"""Synthetic video-text benchmark: real encoded videos, ground truth and ClipBERT-format annotations.

`generate(out_dir, num_videos, seed, codec="h264", size="default", workers=None)` writes it and returns
meta.json's dict; `python -m clipbert.data.synthetic --out DIR ...` is the command-line form.
`not_ready_reason(out_dir, num_videos, seed, codec, size)` says why a directory holds no finished benchmark
of these arguments and of this VERSION (None when it does).
"""

from .generate import DEFAULT_NUM_VIDEOS, VERSION, generate, not_ready_reason, split_sizes
from .scene import PALETTE, SHAPES, color_at, fully_visible, object_by_id, positions

__all__ = [
    "DEFAULT_NUM_VIDEOS",
    "PALETTE",
    "SHAPES",
    "VERSION",
    "color_at",
    "fully_visible",
    "generate",
    "not_ready_reason",
    "object_by_id",
    "positions",
    "split_sizes",
]
