"""Throughput and utilization of the training loop: frames/s, model FLOP/s, MFU, peak memory, data wait.

MFU counts the model FLOPs of a training step as Figure 5's benchmark does
(clipbert.models.flops.training_flops): 3x the forward FLOPs (forward + input and weight gradients), except
the frozen CNN prefix (stem..res{freeze_at}), which runs forward only. Against the device's dense bf16 peak
(clipbert.perf.devices). On a CPU the table has no peak, so MFU is reported as null unless train.peak_tflops
gives one. Runs before 2026-11-27 counted the frozen prefix 3x, which overstates MFU by 9% at
ds_msrvtt.json's shape (8 clips x 2 frames, 2 texts).

`data_wait_frac` is the share of the window's wall time the loop spent waiting for the next batch from the
loader. It is host time: the backward and optimizer kernels run asynchronously, so part of a wait may overlap
them, and the share is an upper bound on the time the GPU starved. Near zero, data is not the bottleneck.
"""

from __future__ import annotations

import resource
import time

import torch

from clipbert.models.flops import backbone_stage_flops, training_flops, visual_flops
from clipbert.perf.devices import device_peak, mfu

TRAIN_FLOPS_FACTOR = 3  # forward + input gradient + weight gradient, for the trainable parts


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
        self.model_cfg, self.device, self.world = model_cfg, device, world_size
        self.peak = device_peak(device, peak_tflops)
        self.reset()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.start = time.perf_counter()
        self.frames = 0
        self.flops = 0.0
        self.data_wait_s = 0.0

    def waited(self, seconds: float) -> None:
        """Account time the loop spent blocked on the data loader."""
        self.data_wait_s += seconds

    def add(self, batch: dict, cnn_only: bool = False) -> None:
        """Account one micro batch of this rank (every rank processes the same shapes on average).

        cnn_only: a visual-word warm-up step, which runs no transformer (train.visual_word_steps).
        """
        b, n, t, m, lt = batch_shape(batch)
        self.frames += b * n * t
        size, pretrain = batch["frames"].shape[-1], "mlm_labels" in batch  # pre-training: MLM + ITM heads
        self.flops += b * step_flops(self.model_cfg, n, t, lt, m, size, cnn_only, pretrain)

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
            "data_wait_frac": min(1.0, self.data_wait_s / seconds),
        }

    def describe(self) -> dict:
        return {
            "device": self.peak.name,
            "peak_tflops": _tflops(self.peak.bf16_flops),
            "peak_source": self.peak.source,
        }


def step_flops(
    model_cfg,
    n: int,
    t: int,
    lt: int,
    m: int,
    image_size: int,
    cnn_only: bool = False,
    pretrain: bool = False,
) -> float:
    """Model FLOPs of one training step on one video: N clips of T frames, M texts of Lt tokens."""
    if not cnn_only:
        return float(training_flops(model_cfg, n, t, lt, m, image_size=image_size, pretrain=pretrain))
    stages, _ = backbone_stage_flops(model_cfg, image_size)
    frozen = n * t * sum(stages[: model_cfg.freeze_at])
    return float(TRAIN_FLOPS_FACTOR * n * visual_flops(model_cfg, t, image_size)[0] - 2 * frozen)


def _tflops(flops: float | None) -> float | None:
    return None if flops is None else flops / 1e12
