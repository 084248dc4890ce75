"""Largest batch that fits a memory cap, found by probing real training steps.

A probe runs one step at batch `b` and reports whether it fit (no out-of-memory under the cap, or on
the CPU a measured peak within the budget) and its peak bytes. Peak memory is close to affine in the
batch (weights and optimizer state + per-sample activations), so after two fitting probes the search
predicts the answer from a line through the measured peaks, brackets it with a probe on each side and
finishes with bisection. The answer always comes from probes that ran; the line only saves probes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

GROW_UNDER, GROW_OVER = 0.9, 1.02


@dataclasses.dataclass
class Probe:
    batch: int
    fits: bool
    peak_bytes: int | None  # None when the step ran out of memory before finishing
    seconds: float
    error: str | None = None  # the out-of-memory message, shortened


@dataclasses.dataclass
class BatchSearchResult:
    max_batch: int  # largest batch that fit (0: not even `start` fit)
    first_failure: int | None  # smallest batch that did not fit; None when `limit` fit
    exact: bool  # True when first_failure == max_batch + 1 (or max_batch == limit)
    predicted: int | None  # the line's prediction, for the record
    bytes_per_sample: float | None  # slope of the line through the fitting probes' peaks
    probes: list[Probe]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _fit_line(probes: list[Probe]) -> tuple[float, float] | None:
    """(intercept, slope) of peak bytes against batch, through the two measured probes nearest the answer.

    Those are the largest fitting probe and the smallest failing one when its peak is known (the CPU
    measures a failing step's peak; a CUDA out-of-memory has none), else the two largest fitting probes.
    Small batches are a poor guide: fixed costs (weights, allocator rounding) hide the per-sample slope.
    """
    fit = sorted((p.batch, p.peak_bytes) for p in probes if p.fits and p.peak_bytes is not None)
    over = sorted((p.batch, p.peak_bytes) for p in probes if not p.fits and p.peak_bytes is not None)
    if fit and over:
        (b0, m0), (b1, m1) = fit[-1], over[0]
    elif len(fit) >= 2:
        (b0, m0), (b1, m1) = fit[-2], fit[-1]
    else:
        return None
    if b1 == b0:
        return None
    slope = (m1 - m0) / (b1 - b0)
    return m1 - slope * b1, slope


def find_max_batch(
    probe: Callable[[int], Probe],
    cap_bytes: int,
    *,
    start: int = 1,
    limit: int = 4096,
    max_probes: int = 14,
    deadline: float | None = None,
    must_try: tuple[int, ...] = (),
) -> BatchSearchResult:
    """Largest batch in [start, limit] for which `probe` fits; stops early at `max_probes` or at the
    `time.monotonic()` `deadline`, and then says so with `exact=False`.

    `must_try`: batches probed right after the first two, in ascending order, while still inside the
    bracket (the targets a report checks): a search cut short by its budget still says whether they fit.
    """
    if not 1 <= start <= limit:
        raise ValueError(f"need 1 <= start <= limit, got start={start} limit={limit}")
    probes: list[Probe] = []
    lo, hi = 0, None  # lo: largest batch known to fit; hi: smallest known not to fit
    predicted = None

    def run(b: int) -> bool:
        nonlocal lo, hi
        p = probe(b)
        probes.append(p)
        if p.fits:
            lo = max(lo, b)
        else:
            hi = b if hi is None else min(hi, b)
        return p.fits

    def out_of_budget() -> bool:
        return len(probes) >= max_probes or (deadline is not None and time.monotonic() > deadline)

    if run(start) and start < limit:
        run(min(limit, 2 * start))
    for b in sorted(set(must_try)):
        if lo == 0 or out_of_budget():
            break
        if lo < b <= limit and (hi is None or b < hi):
            run(b)
    # Inside the bracket: a guess from the line when it falls strictly inside, then (if that guess was the
    # line's) its neighbour across the bracket edge, which settles it when the line is right up to rounding;
    # every other probe bisects, so the worst case stays logarithmic even when memory is not affine.
    last = "bisect"
    while not out_of_budget():
        if (hi is not None and hi - lo <= 1) or (hi is None and lo == limit) or lo == 0:
            break
        line = _fit_line(probes)
        usable = line is not None and line[1] > 0
        if usable:
            predicted = int((cap_bytes - line[0]) / line[1])
        if hi is None:
            # Grow, at most 32x per probe. While the line is an extrapolation far from the measured batches
            # (through the first two only, or to more than twice the largest that fitted), aim 10% under its
            # prediction: fixed workspaces hide the per-sample slope at small batches, and a CUDA
            # out-of-memory probe measures no peak and costs the most time, so a probe that fits near the
            # cap is worth more. Close to a measured batch, aim a little past the line to bracket from above.
            if usable:
                far = lo <= 2 * start or predicted > 2 * lo
                target = predicted * (GROW_UNDER if far else GROW_OVER)
                guess = min(32 * lo, max(lo + 1, math.ceil(target)))
            else:
                guess = 2 * lo
        elif last == "line":
            guess, last = (lo + 1 if probes[-1].fits else hi - 1), "neighbour"
        elif last != "line" and usable and lo < predicted < hi and last != "neighbour":
            guess, last = predicted, "line"
        else:
            guess, last = (lo + hi) // 2, "bisect"
        run(min(limit, guess))
    line = _fit_line(probes)
    exact = (hi is not None and hi - lo <= 1) or (hi is None and lo == limit)
    return BatchSearchResult(
        max_batch=lo,
        first_failure=hi,
        exact=exact,
        predicted=predicted,
        bytes_per_sample=None if line is None else line[1],
        probes=probes,
    )
