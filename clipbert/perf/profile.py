"""Where a training step's time goes: data, CNN, transformer, optimizer.

Two views, both written by the GPU run:
1. Isolated timings (medians, synchronized): each part run on its own with the others' outputs fixed.
   Backward is split by giving the CNN a gradient at its output tokens and giving the transformer detached
   tokens, so `cnn` and `transformer` are each forward+backward. `data` is what the model needs beyond
   decoding: copying decoded uint8 frames from pinned host memory and normalizing them on the device.
2. torch.profiler over full steps, with the named ranges of TrainStep (cnn_forward, transformer_forward,
   clip_aggregation_loss, backward, optimizer) plus `data`; its table goes to a text file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from clipbert.perf import profile_tables
from clipbert.perf.memory import release_memory
from clipbert.perf.paths import Batch, PathOptions, build_train_step, cudnn_benchmark, make_batch
from clipbert.perf.timing import time_steps


def host_frames(cfg, batch: int, n_clips: int, frames: int, pin: bool) -> torch.Tensor:
    """Decoded frames as a decoder hands them over: uint8 [B, N, T, L, L, 3] in host memory."""
    x = torch.randint(0, 256, (batch, n_clips, frames, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8)
    return x.pin_memory() if pin else x


def to_model_input(cfg, raw: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, N, T, L, L, 3] host -> normalized float [B, N, T, 3, L, L] on `device`."""
    x = raw.to(device, non_blocking=True).permute(0, 1, 2, 5, 3, 4).float()
    mean = torch.tensor(cfg.pixel_mean, device=device).view(3, 1, 1)
    std = torch.tensor(cfg.pixel_std, device=device).view(3, 1, 1)
    return (x - mean) / std


def _part_timings(step, cfg, data: Batch, raw: torch.Tensor, warmup: int, steps: int) -> dict[str, float]:
    device = step.device
    ms = {}

    def timed(fn) -> float:
        # The parts run with the step's cuDNN algorithm choice (TrainStep.forward_backward sets it for the
        # step): with cuDNN's heuristics the CNN part timed other convolution kernels than the step runs.
        with cudnn_benchmark(step.options.cudnn_benchmark):
            return 1e3 * time_steps(fn, device, warmup=warmup, steps=steps).median_s

    ms["data"] = timed(lambda: to_model_input(cfg, raw, device))
    # With the whole loss compiled (compile="full") the parts' own entry points would run eager: compile each
    # part on its own for its isolated timing (fusion across the parts aside), then restore the step.
    whole = step.options.compile == "full"
    kwargs = {} if step.options.compile_mode is None else {"mode": step.options.compile_mode}
    eager_encode, score = step._encode, step.model.score
    if whole:
        step._encode = torch.compile(step.model.encode_visual, **kwargs)
        score = torch.compile(step.model.score, **kwargs)

    def cnn() -> None:
        with step._autocast():
            tokens = step.encode(data.frames).tokens
        tokens.backward(torch.ones_like(tokens))

    ms["cnn"] = timed(cnn)
    with torch.no_grad(), step._autocast():
        fixed = step.encode(data.frames)
    step._encode = eager_encode
    mask = None if step.options.unpadded_text else data.attention_mask

    def transformer() -> None:
        visual = type(fixed)(fixed.tokens.detach().requires_grad_())
        with step._ops_backend(), step._autocast():
            scores = score(visual, data.input_ids, mask)
        scores.float().sum().backward()

    ms["transformer"] = timed(transformer)
    for p in step.model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p) * 1e-3
    ms["optimizer"] = timed(step.optimizer.step)

    def full() -> None:
        with record_function("data"):
            frames = to_model_input(cfg, raw, device)
        step.train_step(Batch(frames, data.input_ids, data.attention_mask, data.labels))

    ms["full_step"] = timed(full)
    ms["sum_of_parts"] = ms["data"] + ms["cnn"] + ms["transformer"] + ms["optimizer"]
    return ms, full


def profile_breakdown(
    cfg,
    options: PathOptions,
    device,
    *,
    n_clips: int,
    batch: int,
    out_dir: str,
    tag: str | None,
    warmup: int = 3,
    steps: int = 8,
) -> dict:
    """Isolated part timings and a torch.profiler table of full steps; returns the JSON-able record."""
    device = torch.device(device)
    step = build_train_step(cfg, options, device)
    try:
        data = make_batch(cfg, batch, n_clips, 1, device)
        raw = host_frames(cfg, batch, n_clips, 1, pin=device.type == "cuda")
        parts, full = _part_timings(step, cfg, data, raw, warmup, steps)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        # Shapes recorded so the heavy ops can be told apart by layer (profile_tables says why).
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(2):
                full()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        on_device = device.type == "cuda"
        sort = "cuda_time_total" if on_device else "cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=80)
        heavy = profile_tables.heavy_ops_by_shape(prof, on_device, steps=2)
        kernels = profile_tables.top_kernels(prof, steps=2)
        table_file = Path(out_dir) / f"{tag or 'fig5'}_profile.md"
        table_file.parent.mkdir(parents=True, exist_ok=True)
        title = f"# torch.profiler: 2 steps of {options.name}, Ntrain={n_clips}, batch {batch}, {device}"
        tables = profile_tables.markdown(heavy, kernels, on_device)
        table_file.write_text(f"{title}\n\n```\n{table}\n```\n\n{tables}")
        ranges = {}
        names = (
            "data",
            "cnn_forward",
            "transformer_forward",
            "clip_aggregation_loss",
            "backward",
            "optimizer",
        )
        for evt in prof.key_averages():
            if evt.key in names:
                ranges[evt.key] = {
                    "cpu_ms_per_step": evt.cpu_time_total / 1e3 / 2,
                    "device_ms_per_step": getattr(evt, "device_time_total", 0.0) / 1e3 / 2,
                }
        return {
            "options": options.to_dict(),
            "n_clips": n_clips,
            "batch": batch,
            "parts_ms": parts,
            "profiler_ranges": ranges,
            "heavy_ops_by_shape": heavy,
            "top_kernels": kernels,
            "table_file": str(table_file),
        }
    finally:
        del step
        release_memory(device)
