"""DALI video decoding: encoded bytes + the sampler's frame indices in, normalized [B, N, T, 3, L, L] out.

The pipeline reads each sample's encoded file and frame indices through `fn.external_source`, decodes the
frames with `fn.decoders.video(frames=...)` (device "mixed" = NVDEC on the GPU; "cpu" reads VP8/VP9/MJPEG
only, not H.264), resizes the longer side to L, normalizes and zero-pads right/bottom to L x L with
`fn.crop_mirror_normalize`, and hands the batch to PyTorch with `nvidia.dali.plugin.pytorch.feed_ndarray`.

Throughput options (measured on the GPU by benchmarks/bench_data.py):
- `num_pipelines`: parallel pipelines, each with its own decoder instance, fed disjoint parts of a batch.
- `order="frames"`: a sample's frames are decoded in ascending order (the decoder never seeks backwards),
  then put back in the sampler's order.
- low-resolution decoding: see `clipbert.data.transcode` (short-GOP, downscaled copies of the videos).
- cut videos (`DataConfig.dali_trim`, trim.py): `fn.decoders.video` (its CPU decoder, as measured) decodes
  every sample from the start of its file, so the loader may pass only the packets the sampled frames need,
  with the frames' indices in them.
- packs (`DataConfig.dali_pack`, pack.py): the cut videos of several samples back to back in one DALI
  sample, so that the decoder's fixed cost per sample (about 9 ms on an H200) is paid once per pack.
"""

from __future__ import annotations

import numpy as np
import torch

from clipbert.data.preprocess import Normalization, resized_hw

from .common import build_pipeline, collect_samples, drain_outputs, start_pipelines
from .pack import Pack


def video_pipeline(
    max_batch_size: int,
    size: int,
    norm: Normalization,
    device: str = "gpu",
    num_threads: int = 4,
    device_id: int = 0,
    prefetch_queue_depth: int = 1,
    build_index: bool = True,
    affine: bool = False,
):
    """A DALI pipeline fed by `feed_input` with names "encoded", "frames", "resize_x", "resize_y".

    `build_index=False` skips the per-sample scan of the whole file that makes seeks exact and fast; with
    short videos and few clips the scan can cost more than it saves (measured by bench_data.py).
    `affine`: pin the GPU decoder's threads to cores (DataConfig.dali_affine says why it is off by default).
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    def graph():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        resize_x = fn.external_source(name="resize_x", dtype=types.FLOAT, ndim=0)
        resize_y = fn.external_source(name="resize_y", dtype=types.FLOAT, ndim=0)
        decoder_device = "mixed" if device == "gpu" else "cpu"
        # [F, H, W, 3] uint8 RGB
        video = fn.decoders.video(
            encoded, frames=frames, device=decoder_device, build_index=build_index, affine=affine
        )
        return resize_normalize_pad(fn, types, video, resize_x, resize_y, size, norm, sequence=True)

    return build_pipeline(graph, max_batch_size, num_threads, device, device_id, prefetch_queue_depth)


def resize_normalize_pad(fn, types, images, resize_x, resize_y, size, norm, sequence: bool):
    """uint8 [F, H, W, 3] (sequence) or [H, W, 3] -> float [F, 3, L, L] or [3, L, L], as preprocess.py."""
    # Resize to the target computed in Python (same rounding as clipbert.data.preprocess), round to uint8.
    images = fn.resize(
        images, resize_x=resize_x, resize_y=resize_y, interp_type=types.INTERP_LINEAR, antialias=True
    )
    # Channels stay RGB here; for a BGR model the statistics are given in RGB order and the channels are
    # flipped in PyTorch afterwards, which is the same as flipping first and normalizing in BGR order.
    mean, std = (norm.mean[::-1], norm.std[::-1]) if norm.channel_order == "BGR" else (norm.mean, norm.std)
    return fn.crop_mirror_normalize(
        images,
        crop_h=size,
        crop_w=size,
        crop_pos_x=0.0,
        crop_pos_y=0.0,
        out_of_bounds_policy="pad",  # pads right/bottom with 0 in the normalized output
        fill_values=0.0,
        mean=list(mean),
        std=list(std),
        dtype=types.FLOAT,
        output_layout="FCHW" if sequence else "CHW",
    )


class DaliVideoDecoder:
    """Decodes a batch of (file, indices [N, T]) on `num_pipelines` DALI pipelines."""

    def __init__(
        self,
        size: int,
        norm: Normalization,
        max_batch_size: int,
        device: str = "gpu",
        num_pipelines: int = 1,
        num_threads: int = 4,
        order: str = "frames",
        device_id: int = 0,
        build_index: bool = True,
        affine: bool = False,
    ):
        if device not in ("gpu", "cpu"):
            raise ValueError(f"device must be gpu or cpu, got {device!r}")
        if order not in ("none", "frames"):
            raise ValueError(f"order must be none or frames, got {order!r}")
        self.size, self.norm, self.device, self.order = size, norm, device, order
        self.torch_device = torch.device("cuda", device_id) if device == "gpu" else torch.device("cpu")
        per_pipe = -(-max_batch_size // num_pipelines)
        self._args = (per_pipe, size, norm, device, num_threads, device_id, 1, build_index, affine)
        self.num_pipelines = num_pipelines
        self.pipes = []
        self.rebuild()

    def rebuild(self) -> None:
        """New pipelines: a DALI pipeline is unusable after it raised (e.g. on an undecodable file)."""
        self.pipes = [video_pipeline(*self._args) for _ in range(self.num_pipelines)]

    def decode(
        self, encoded: list[np.ndarray], indices: np.ndarray, hw: list[tuple[int, int]]
    ) -> torch.Tensor:
        """encoded: B byte arrays; indices int [B, N, T]; hw: source (height, width) of each video.

        Returns float32 [B, N, T, 3, L, L] on the pipeline's device.
        """
        return self.collect(self.submit(encoded, indices, hw))

    def submit(self, encoded: list[np.ndarray], indices: np.ndarray, hw: list[tuple[int, int]]) -> dict:
        """Start decoding (returns at once); `collect` waits for the result."""
        packs = [Pack(data, [i], indices[i][None]) for i, data in enumerate(encoded)]
        return self.submit_packs(packs, hw)

    def submit_packs(self, packs: list[Pack], hw: list[tuple[int, int]]) -> dict:
        """Start decoding packs (pack.py): one DALI sample each, holding the frames of its rows; hw: the
        source (height, width) of each pack (one stream format, so one size). `collect` returns the rows'
        frames [sum of the packs' rows, N, T, 3, L, L], in the packs' row order."""
        shapes = {pack.indices.shape[1:] for pack in packs}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"every pack's indices must be [rows, N, T] with one N, T; got {sorted(shapes)}")
        (n, t) = shapes.pop()
        flat = [pack.indices.reshape(-1).astype(np.int32) for pack in packs]
        orders = [np.argsort(f, kind="stable") for f in flat] if self.order == "frames" else None
        wanted = [f[o] for f, o in zip(flat, orders, strict=True)] if orders is not None else flat
        targets = [resized_hw(h, w, self.size) for h, w in hw]
        inputs = {
            "encoded": [pack.data for pack in packs],
            "frames": wanted,
            "resize_x": [np.float32(w) for _, w in targets],
            "resize_y": [np.float32(h) for h, _ in targets],
        }
        started = start_pipelines(self.pipes, inputs)
        return {
            "started": started,
            "orders": orders,
            "rows": [len(pack.rows) for pack in packs],
            "nt": (n, t),
        }

    def drain(self, job: dict) -> None:
        """Wait for a job from `submit` and drop its output (a batch nobody will collect)."""
        drain_outputs(job["started"])

    def collect(self, job: dict) -> torch.Tensor:
        (n, t), orders = job["nt"], job["orders"]
        outs = collect_samples(job["started"], self.torch_device)  # per pack: [rows * N * T, 3, L, L]
        rows = sum(job["rows"])
        # Each pack's frames are copied once, straight into their rows (and back to the sampler's order).
        out = torch.empty(rows * n * t, *outs[0].shape[1:], dtype=outs[0].dtype, device=outs[0].device)
        at = 0
        for g, frames in enumerate(outs):
            dest = out[at : at + frames.shape[0]]
            if orders is not None:
                inverse = torch.from_numpy(np.argsort(orders[g])).to(frames.device)
                torch.index_select(frames, 0, inverse, out=dest)
            else:
                dest.copy_(frames)
            at += frames.shape[0]
        out = out.view(rows, n, t, 3, self.size, self.size)
        if self.norm.channel_order == "BGR":
            out = out.flip(3)
        return out
