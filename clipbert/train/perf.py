"""Throughput and utilization of the training loop: frames/s, model FLOP/s, MFU, peak memory.

MFU counts the analytic forward FLOPs of clipbert.models.flops times 3 (forward + backward), the usual
convention, against the device's dense bf16 peak (clipbert.perf.devices). On a CPU the table has no
peak, so MFU is reported as null unless train.peak_tflops gives one.
"""

from __future__ import annotations

import resource
import time

import torch

from clipbert.perf.devices import device_peak, mfu

TRAIN_FLOPS_FACTOR = 3  # backward ~ 2x forward


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def batch_shape(batch: dict) -> tuple[int, int, int, int, int]:
    """(B, N, T, M, Lt) of a micro batch."""
    b, n, t = batch["frames"].shape[:3]
    _, m, lt = batch["input_ids"].shape
    return b, n, t, m, lt


class Throughput:
    """Counts frames and FLOPs over a window of steps; `reset()` after evaluation or checkpointing."""

    def __init__(self, model_cfg, device: torch.device, world_size: int, peak_tflops: float | None):
        from clipbert.models.flops import forward_flops, visual_flops

        self._forward_flops, self._visual_flops = forward_flops, visual_flops
        self.model_cfg, self.device, self.world = model_cfg, device, world_size
        self.peak = device_peak(device, peak_tflops)
        self.reset()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.start = time.perf_counter()
        self.frames = 0
        self.flops = 0.0

    def add(self, batch: dict, cnn_only: bool = False) -> None:
        """Account one micro batch of this rank (every rank processes the same shapes on average).

        cnn_only: a visual-word warm-up step, which runs no transformer (train.visual_word_steps).
        """
        b, n, t, m, lt = batch_shape(batch)
        self.frames += b * n * t
        if cnn_only:
            image_size = batch["frames"].shape[-1]
            forward = n * self._visual_flops(self.model_cfg, t, image_size)[0]
        else:
            forward = self._forward_flops(self.model_cfg, n, t, lt, m)
        self.flops += TRAIN_FLOPS_FACTOR * b * forward

    def snapshot(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = max(time.perf_counter() - self.start, 1e-9)
        per_device_flops = self.flops / seconds
        return {
            "frames_per_s": self.frames * self.world / seconds,  # all ranks
            "tflops_per_device": per_device_flops / 1e12,
            "mfu": mfu(self.flops, seconds, self.peak) if self.flops else None,
            "peak_mem_gb": peak_memory_gb(self.device),
        }

    def describe(self) -> dict:
        return {
            "device": self.peak.name,
            "peak_tflops": _tflops(self.peak.bf16_flops),
            "peak_source": self.peak.source,
        }


def _tflops(flops: float | None) -> float | None:
    return None if flops is None else flops / 1e12
