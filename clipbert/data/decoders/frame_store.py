"""CPU reader of the HDF5 frame store (torchvision JPEG decoding); keys are video ids."""

from __future__ import annotations

import numpy as np
import torch

from ..frame_store import FrameStore
from .base import VideoDecodeError, VideoInfo, check_indices


class FrameStoreDecoder:
    def __init__(self, path: str):
        self.store = FrameStore(path)

    def probe(self, key: str) -> VideoInfo:
        return self.store.info(key)

    def decode(self, key: str, indices: np.ndarray) -> np.ndarray:
        indices = check_indices(key, indices, self.probe(key).num_frames)
        frames = self.store.read_frames(key, indices.ravel())
        if len({tuple(f.shape) for f in frames}) != 1:
            raise VideoDecodeError(key, "stored frames differ in size")
        return torch.stack(frames).numpy().reshape(*indices.shape, *frames[0].shape)
