"""Tables that say which convolution or GEMM, and which kernel, a profiled step spends its time in.

torch.profiler's default table cuts kernel names at 55 characters and merges every shape of an op, so the
H100 profile (fig5_h100_2026-11-26_profile.md) showed a 3.1 ms cuDNN kernel run once a step without saying
which convolution ran it. These tables keep the input shapes of the heavy ops and the kernels' full names.
"""

from __future__ import annotations

import torch

# The ops whose shapes say which layer ran: convolutions and matrix products, forward and backward.
HEAVY_OPS = (
    "aten::convolution",
    "aten::convolution_backward",
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_efficient_attention",
    # the frozen prefix's fused convolutions (clipbert/perf/frozen_fuse.py) and the cuDNN ops they call
    "clipbert_perf::conv_bias_relu",
    "aten::cudnn_convolution_relu",
    "aten::cudnn_convolution_add_relu",
)


def _time_us(evt, on_device: bool) -> float:
    return getattr(evt, "device_time_total", 0.0) if on_device else evt.cpu_time_total


def heavy_ops_by_shape(prof, on_device: bool, steps: int, limit: int = 20) -> list[dict]:
    """The HEAVY_OPS calls grouped by input shapes, slowest first: op, shapes, calls and ms per step."""
    rows = []
    for evt in prof.key_averages(group_by_input_shape=True):
        if evt.key not in HEAVY_OPS:
            continue
        shapes = [list(s) for s in evt.input_shapes if s]  # tensors only; scalars record as []
        total = _time_us(evt, on_device)
        rows.append(
            {
                "op": evt.key,
                "shapes": shapes[:3],
                "calls_per_step": evt.count / steps,
                "ms_per_step": total / 1e3 / steps,
                "us_per_call": total / max(evt.count, 1),
            }
        )
    rows.sort(key=lambda r: r["ms_per_step"], reverse=True)
    return rows[:limit]


def top_kernels(prof, steps: int, limit: int = 25) -> list[dict]:
    """Device kernels by total time, names uncut: what the card ran, whoever launched it."""
    rows = []
    for evt in prof.key_averages():
        if getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        total = getattr(evt, "device_time_total", 0.0)
        rows.append(
            {
                "kernel": evt.key,
                "calls_per_step": evt.count / steps,
                "ms_per_step": total / 1e3 / steps,
                "us_per_call": total / max(evt.count, 1),
            }
        )
    rows.sort(key=lambda r: r["ms_per_step"], reverse=True)
    return rows[:limit]


def markdown(ops: list[dict], kernels: list[dict], on_device: bool) -> str:
    """Both tables as markdown, for the profile file beside the profiler's own table."""
    where = "device" if on_device else "CPU"
    out = [f"## Convolutions, GEMMs and attention by input shape ({where} time, slowest first)", ""]
    out += ["| op | input shapes | calls/step | ms/step | us/call |", "|---|---|---|---|---|"]
    for r in ops:
        shapes = " ".join(str(s).replace(" ", "") for s in r["shapes"])
        cells = [
            r["op"],
            shapes,
            f"{r['calls_per_step']:g}",
            f"{r['ms_per_step']:.3f}",
            f"{r['us_per_call']:.1f}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    if kernels:
        out += ["", "## Device kernels (full names, slowest first)", ""]
        out += ["| kernel | calls/step | ms/step | us/call |", "|---|---|---|---|"]
        for r in kernels:
            name = r["kernel"].replace("|", "\\|")
            out.append(
                f"| `{name}` | {r['calls_per_step']:g} | {r['ms_per_step']:.3f} | {r['us_per_call']:.1f} |"
            )
    return "\n".join(out) + "\n"
