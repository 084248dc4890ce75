"""The interface every decoding backend follows, and its error type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int  # decodable frames (at the backend's frame rate)
    fps: float  # frames per second of those frames
    height: int = 0  # frame size in pixels as shown, after `rotation` (0 = unknown)
    width: int = 0
    codec: str = ""  # codec name as FFmpeg spells it (h264, vp9, mjpeg, ...); "" = not a video file
    # the stream's YUV->RGB matrix tag as FFmpeg names it ("bt709", "bt470bg", ...); "" = untagged. PyAV
    # converts by it; DALI always by BT.601, so its loader corrects the rows of other matrices (BT.709,
    # BT.2020 ...: dali_pipelines/color.py).
    colorspace: str = ""
    # display rotation in degrees counterclockwise (0, 90, 180, 270): PyAV turns frames upright by it; DALI
    # ignores it, so such videos go to PyAV (dali_pipelines/routing.py)
    rotation: int = 0


class VideoDecodeError(RuntimeError):
    """A video that cannot be read: missing, empty, truncated, undecodable or of an unreadable codec."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class Decoder(Protocol):
    def probe(self, key: str) -> VideoInfo:
        """Frame count and fps of a video; raises VideoDecodeError."""

    def decode(self, key: str, indices: np.ndarray) -> np.ndarray:
        """int64 [N, T] frame indices -> uint8 [N, T, H, W, 3] RGB frames; raises VideoDecodeError."""


def check_indices(key: str, indices: np.ndarray, num_frames: int) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 2:
        raise ValueError(f"{key}: frame indices must be [N, T], got shape {indices.shape}")
    if indices.size and (indices.min() < 0 or indices.max() >= num_frames):
        raise ValueError(f"{key}: frame indices {indices.min()}..{indices.max()} outside 0..{num_frames - 1}")
    return indices
