"""Step timing: warm-up, then the median of repeated steps, each bracketed by device synchronization.

On CUDA each step is timed with a pair of CUDA events recorded on the current stream, read after a
final synchronize, so host-side launch latency between steps is not counted twice and queued work
is never missed. On the CPU steps are synchronous and the host clock is exact.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch


@dataclasses.dataclass
class TimingResult:
    median_s: float
    p10_s: float
    p90_s: float
    steps: int
    warmup: int
    all_s: list[float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def time_steps(
    step: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 3,
    steps: int = 10,
    max_seconds: float | None = None,
) -> TimingResult:
    """Median seconds per call of `step`; stops early (with at least 3 timed steps) past `max_seconds`."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps} warmup={warmup}")
    device = torch.device(device)
    for _ in range(warmup):
        step()
    times: list[float] = []
    began = time.monotonic()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        pairs = []
        for i in range(steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            pairs.append((start, end))
            if max_seconds is not None and i >= 2:
                # Wait for the previous step, not this one: the GPU runs this step meanwhile, so the next
                # one is queued behind it instead of starting on an idle GPU with the host's launch latency.
                pairs[-2][1].synchronize()
                if time.monotonic() - began > max_seconds:
                    break
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) / 1e3 for s, e in pairs]
    else:
        for i in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            if max_seconds is not None and i >= 2 and time.monotonic() - began > max_seconds:
                break
    return TimingResult(
        median_s=statistics.median(times),
        p10_s=_quantile(times, 0.1),
        p90_s=_quantile(times, 0.9),
        steps=len(times),
        warmup=warmup,
        all_s=times,
    )
