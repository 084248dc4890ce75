"""Measurements of one benchmark point: the largest batch under the cap, and the step time at a batch.

Both take a built TrainStep, so one model (and one torch.compile) serves every point of a path; the caller
drops it before building the next path, so one path's memory never shrinks another's budget.
"""

from __future__ import annotations

import dataclasses
import math
import time

from clipbert.perf.devices import DevicePeak, mfu
from clipbert.perf.flops_count import StepFlops, step_flops
from clipbert.perf.memory import PeakMemoryMeter, is_oom, release_memory
from clipbert.perf.paths import TrainStep, make_batch
from clipbert.perf.search import BatchSearchResult, Probe, find_max_batch
from clipbert.perf.timing import time_steps

GIB = 2**30


@dataclasses.dataclass
class Point:
    """One row of the results: a (path, Ntrain, T) point of one panel."""

    panel: str  # "a" | "b" | "c" | "d" | "ablation"
    path: str  # "eager" | "optimized" | an ablation step name
    n_train: int
    frames_per_clip: int
    batch: int  # the timed batch (b, d, ablation) or the largest batch found (a, c)
    max_batch_exact: bool | None = None
    first_failure: int | None = None
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    frames_per_s: float | None = None
    peak_gib: float | None = None
    bytes_per_sample_gib: float | None = None
    model_tflop_per_step: float | None = None
    mfu: float | None = None
    flops_source: str | None = None
    options: dict | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    probes: list[dict] | None = None
    # ablation rows: the eager row's frames/s of the same run, so that a ratio survives --merge of runs
    eager_frames_per_s: float | None = None
    # panel a/c: the search's --max-batch-limit fit, so `batch` is that limit, a lower bound of the answer
    max_batch_limit_reached: bool | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _probe_fn(step: TrainStep, cfg, n_clips: int, frames: int, cap_bytes: int):
    device = step.device

    def probe(b: int) -> Probe:
        began = time.monotonic()
        peak, error, batch = None, None, None
        try:
            with PeakMemoryMeter(device, resident=step.resident_tensors()) as meter:
                batch = make_batch(cfg, b, n_clips, frames, device, seed=b)
                step.train_step(batch)
            peak = meter.peak_bytes
        except Exception as exc:  # only out-of-memory is an answer; anything else is a bug to surface
            if not is_oom(exc):
                raise
            error = _short(exc)
        batch = None  # noqa: F841 - the batch must be unreferenced before the cache is emptied
        step.optimizer.zero_grad(set_to_none=True)
        release_memory(device)
        # On CUDA the allocator enforces the cap; on the CPU the measured peak is checked against it.
        fits = peak is not None and (device.type == "cuda" or peak <= cap_bytes)
        return Probe(b, fits, peak, time.monotonic() - began, error)

    return probe


def measure_max_batch(
    step: TrainStep,
    cfg,
    *,
    panel: str,
    n_clips: int,
    frames: int,
    cap_bytes: int,
    limit: int,
    deadline: float | None,
    max_probes: int = 14,
    must_try: tuple[int, ...] = (),
) -> Point:
    """Panel a/c point: the largest batch whose training step (forward, backward, AdamW) fits the cap."""
    options = step.options
    point = Point(panel, options.name, n_clips, frames, 0, options=options.to_dict(), notes=list(step.notes))
    seen: list[Probe] = []  # the probes run so far, kept when a later probe raises
    run_probe = _probe_fn(step, cfg, n_clips, frames, cap_bytes)

    def probe(b: int) -> Probe:
        seen.append(Probe(b, False, None, 0.0, "raised"))  # replaced below when the probe returns
        seen[-1] = run_probe(b)
        return seen[-1]

    try:
        result: BatchSearchResult = find_max_batch(
            probe,
            cap_bytes,
            limit=limit,
            deadline=deadline,
            max_probes=max_probes,
            must_try=must_try,
        )
        point.batch = result.max_batch
        point.max_batch_exact = result.exact
        point.first_failure = result.first_failure
        point.probes = [dataclasses.asdict(p) for p in result.probes]
        fitting = [p for p in result.probes if p.fits and p.batch == result.max_batch]
        if fitting:
            point.peak_gib = fitting[-1].peak_bytes / GIB
        if result.bytes_per_sample is not None:
            point.bytes_per_sample_gib = result.bytes_per_sample / GIB
        if not result.exact:
            point.notes.append("search stopped by its probe or time budget: max_batch is a lower bound")
        elif result.first_failure is None and result.max_batch:
            # The search is exact within [1, limit], but the answer is not: it was reported as the largest
            # batch (a ratio, a "NOT met" verdict below a target), when the limit only bounds it from below.
            point.max_batch_exact, point.max_batch_limit_reached = False, True
            point.notes.append(f"--max-batch-limit {limit} fit: the largest batch is at least {limit}")
        elif result.max_batch == 0:
            over = result.probes[0]
            why = over.error or (
                f"its step peaked at {over.peak_bytes / GIB:.3f} GiB" if over.peak_bytes else ""
            )
            point.notes.append(
                f"batch {over.batch} does not fit the {cap_bytes / GIB:g} GiB cap" + (why and f": {why}")
            )
    except Exception as exc:  # one failing point must not lose the rest of the run
        # ... nor the probes it ran (minutes each on the GPU): the batches that fit bound the answer below
        fit = max((p.batch for p in seen if p.fits), default=0)
        point.error = _short(exc)
        if seen and seen[-1].error == "raised":  # the exception came from this probe
            seen[-1].error = point.error
            point.error += f" (probing batch {seen[-1].batch}; largest that fit: {fit})"
        point.batch, point.max_batch_exact = fit, False
        point.probes = [dataclasses.asdict(p) for p in seen]
    finally:
        step.optimizer.zero_grad(set_to_none=True)
        release_memory(step.device)
    return point


_FLOPS_CACHE: dict[tuple, StepFlops] = {}


def _flops_per_sample(step: TrainStep, cfg, n_clips: int, frames: int) -> StepFlops:
    # repr, not id(): a freed config's id can be reused by another config, which would get its count
    key = (repr(cfg), n_clips, frames)
    if key not in _FLOPS_CACHE:
        one = make_batch(cfg, 1, n_clips, frames, step.device)
        _FLOPS_CACHE[key] = step_flops(step.model, cfg, one, n_clips, frames)
    return _FLOPS_CACHE[key]


def measure_time(
    step: TrainStep,
    cfg,
    peak: DevicePeak,
    *,
    panel: str,
    n_clips: int,
    frames: int,
    batch: int,
    warmup: int,
    steps: int,
    max_seconds: float | None = None,
) -> Point:
    """Panel b/d point: median forward+backward time at `batch`, its frames/s, peak memory and MFU."""
    options = step.options
    point = Point(
        panel, options.name, n_clips, frames, batch, options=options.to_dict(), notes=list(step.notes)
    )
    device = step.device
    data = None
    try:
        data = make_batch(cfg, batch, n_clips, frames, device)

        def run() -> None:
            step.model.zero_grad(set_to_none=True)
            step.forward_backward(data)

        run()  # the first call compiles, when the options compile; its memory is not the step's
        with PeakMemoryMeter(device, resident=step.resident_tensors()) as meter:
            run()
        point.peak_gib = meter.peak_bytes / GIB
        timing = time_steps(run, device, warmup=max(0, warmup - 2), steps=steps, max_seconds=max_seconds)
        if not 0 < timing.median_s < math.inf:  # also nan: frames/s and MFU would be nan, inf or 1/0
            raise RuntimeError(f"step timing gave a median of {timing.median_s} s ({timing.steps} steps)")
        point.median_ms, point.p10_ms, point.p90_ms = (
            1e3 * timing.median_s,
            1e3 * timing.p10_s,
            1e3 * timing.p90_s,
        )
        point.frames_per_s = data.num_frames / timing.median_s
        try:
            flops = _flops_per_sample(step, cfg, n_clips, frames)
        except Exception as exc:  # the time is measured: a FLOP count that fails costs only the MFU
            point.notes.append(f"FLOPs not counted, no MFU: {_short(exc)}")
        else:
            point.model_tflop_per_step = flops.step * batch / 1e12
            point.flops_source = flops.source
            point.mfu = mfu(flops.step * batch, timing.median_s, peak)
    except Exception as exc:
        point.error = ("out of memory at the timed batch: " if is_oom(exc) else "") + _short(exc)
    finally:
        data = None  # noqa: F841 - drop the batch before the next point allocates
        step.model.zero_grad(set_to_none=True)
        release_memory(device)
    return point
