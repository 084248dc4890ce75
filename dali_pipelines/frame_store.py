"""DALI decoding of frame-store JPEGs: `fn.decoders.image(device="mixed")` (nvJPEG) on the GPU, "cpu" here.

Each pipeline sample is one JPEG frame; a batch of B videos x N clips x T frames is B*N*T samples. Resize,
normalization and padding are the same as for video (`video.resize_normalize_pad`).
"""

from __future__ import annotations

import numpy as np
import torch

from clipbert.data.preprocess import Normalization, resized_hw

from .common import build_pipeline, collect_outputs, drain_outputs, start_pipelines
from .video import resize_normalize_pad


def jpeg_pipeline(
    max_batch_size, size, norm, device="gpu", num_threads=4, device_id=0, prefetch_queue_depth=1
):
    """A DALI pipeline fed by `feed_input` with names "jpegs", "resize_x", "resize_y"."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    def graph():
        jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
        resize_x = fn.external_source(name="resize_x", dtype=types.FLOAT, ndim=0)
        resize_y = fn.external_source(name="resize_y", dtype=types.FLOAT, ndim=0)
        images = fn.decoders.image(jpegs, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)
        return resize_normalize_pad(fn, types, images, resize_x, resize_y, size, norm, sequence=False)

    return build_pipeline(graph, max_batch_size, num_threads, device, device_id, prefetch_queue_depth)


class DaliJpegDecoder:
    """Decodes B videos' frame-store JPEGs into float32 [B, N, T, 3, L, L]."""

    def __init__(
        self, size, norm: Normalization, max_frames, device="gpu", num_pipelines=1, num_threads=4, device_id=0
    ):
        self.size, self.norm, self.num_pipelines = size, norm, num_pipelines
        self.torch_device = torch.device("cuda", device_id) if device == "gpu" else torch.device("cpu")
        self._args = (-(-max_frames // num_pipelines), size, norm, device, num_threads, device_id)
        self.pipes = []
        self.rebuild()

    def rebuild(self) -> None:
        self.pipes = [jpeg_pipeline(*self._args) for _ in range(self.num_pipelines)]

    def decode(self, jpegs: list[list[np.ndarray]], shape: tuple[int, int, int], hw) -> torch.Tensor:
        """jpegs: B lists of N*T encoded frames; shape: (B, N, T); hw: (height, width) of each video.

        Returns float32 [B, N, T, 3, L, L] on the pipeline's device.
        """
        return self.collect(self.submit(jpegs, shape, hw))

    def submit(self, jpegs: list[list[np.ndarray]], shape: tuple[int, int, int], hw) -> dict:
        """Start decoding (returns at once); `collect` waits for the result."""
        b, n, t = shape
        targets = [resized_hw(h, w, self.size) for h, w in hw for _ in range(n * t)]
        inputs = {
            "jpegs": [frame for video in jpegs for frame in video],
            "resize_x": [np.float32(w) for _, w in targets],
            "resize_y": [np.float32(h) for h, _ in targets],
        }
        return {"started": start_pipelines(self.pipes, inputs), "shape": (b, n, t)}

    def drain(self, job: dict) -> None:
        """Wait for a job from `submit` and drop its output (a batch nobody will collect)."""
        drain_outputs(job["started"])

    def collect(self, job: dict) -> torch.Tensor:
        b, n, t = job["shape"]
        out = collect_outputs(job["started"], self.torch_device)  # [B*N*T, 3, L, L]
        if self.norm.channel_order == "BGR":
            out = out.flip(1)
        return out.view(b, n, t, 3, self.size, self.size)
