"""Synthetic video-text benchmark: real encoded videos, ground truth and ClipBERT-format annotations.

`generate(out_dir, num_videos, seed, codec="h264", size="default", workers=None)` writes it and returns
meta.json's dict; `python -m clipbert.data.synthetic --out DIR ...` is the command-line form.
"""

from .generate import DEFAULT_NUM_VIDEOS, generate, split_sizes
from .scene import PALETTE, SHAPES, color_at, fully_visible, object_by_id, positions

__all__ = [
    "DEFAULT_NUM_VIDEOS",
    "PALETTE",
    "SHAPES",
    "color_at",
    "fully_visible",
    "generate",
    "object_by_id",
    "positions",
    "split_sizes",
]
