"""Peak-memory measurement and the memory cap, on CUDA and on the CPU.

CUDA: the caching allocator's own counters (`torch.cuda.max_memory_allocated`), and the cap is the
allocator's per-process memory fraction, so a larger card stands in for a smaller one: an allocation that
would take the process past `cap` bytes raises `torch.OutOfMemoryError`, as on the smaller card.

CPU: there are no allocator statistics, so `LiveTensorBytes` counts the same quantity by hand. A
`TorchDispatchMode` sees every tensor each ATen op returns, in forward and in backward; it adds the bytes
of each new storage (views and in-place results share storage and are counted once) and subtracts them
when the storage is freed. The peak of that running sum is what `max_memory_allocated` would report,
minus what ops allocate internally and free before returning (workspaces) and minus allocator rounding.
On the CPU the cap is a byte budget checked against that peak after the step, not an allocation failure.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def is_oom(exc: BaseException) -> bool:
    """True for the device running out of memory (the cap included), on any torch version."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def apply_memory_cap(cap_bytes: int, device: torch.device) -> float | None:
    """Limit this process to `cap_bytes` on a CUDA `device`; returns the fraction set (None on the CPU).

    Raises ValueError when the card has less memory than the cap, since the cap could not be honored.
    """
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    if cap_bytes > total:
        raise ValueError(
            f"mem cap {cap_bytes / 2**30:.1f} GiB exceeds {device} memory {total / 2**30:.1f} GiB"
        )
    fraction = cap_bytes / total
    # The setter wants an index: a bare torch.device("cuda") raised ValueError on the H100 (torch 2.11).
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


@contextlib.contextmanager
def collect_only_new_objects() -> Iterator[None]:
    """Exempt the objects alive now (modules, the imported libraries' caches) from `gc.collect()` until exit.

    `release_memory` collects after every probe to free tensors that an out-of-memory traceback keeps in a
    reference cycle. A full collection walks every tracked object: with torch, transformers and dynamo
    imported that took 0.3 to 0.8 s, 52 of the 90 s of a small CPU Figure 5 run (65 probes). Frozen, the
    import-time objects are skipped, and the probes' objects, all made later, are still collected.
    """
    gc.collect()  # what is garbage now is freed, not frozen
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def release_memory(device: torch.device) -> None:
    """Return cached blocks after a failed or finished probe, so the next one starts from the same state."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


class LiveTensorBytes(TorchDispatchMode):
    """Running and peak bytes of live tensor storages created while the mode is active (CPU accounting).

    `resident` tensors (parameters, optimizer state) that already exist are counted from the start.
    """

    def __init__(self, resident: Iterable[torch.Tensor] = ()):
        super().__init__()
        self._sizes: dict[int, int] = {}  # storage data_ptr -> bytes, for storages alive now
        self.live = 0
        self.peak = 0
        for t in resident:
            self._track(t)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def _track(self, t: torch.Tensor) -> None:
        if t.device.type == "meta" or t.is_sparse:
            return
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        key = storage.data_ptr()
        if nbytes == 0 or key in self._sizes:
            return
        self._sizes[key] = nbytes
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        # Storages keep their Python object alive as long as the C++ storage lives, so the finalizer fires
        # exactly when the memory is released.
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


class PeakMemoryMeter:
    """Context manager: `.peak_bytes` after exit is the peak of allocated bytes inside the block.

    On CUDA this is the allocator's peak, which includes everything already allocated (weights, optimizer
    state); on the CPU the `resident` tensors stand in for that.
    """

    def __init__(self, device: torch.device, resident: Iterable[torch.Tensor] = ()):
        self.device = torch.device(device)
        self._resident = list(resident)
        self._mode: LiveTensorBytes | None = None
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._mode = LiveTensorBytes(self._resident)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            assert self._mode is not None
            self._mode.__exit__(*exc)
            self.peak_bytes = self._mode.peak
            self._mode = None
