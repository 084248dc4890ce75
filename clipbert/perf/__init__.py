"""Performance tooling for the training path: peak-FLOPs table and MFU, peak-memory meters that work on CPU
and CUDA, the out-of-memory-recovering largest-batch search, step timing, the eager and optimized
training-step builders used by `benchmarks/memory_vs_ntrain.py`, and the profile breakdown.

Nothing here changes the model's function: the optimized path only changes memory layout, precision of
frozen weights, where activations are kept, and how the work is scheduled.
"""

from clipbert.perf.devices import DevicePeak, device_peak, mfu
from clipbert.perf.memory import PeakMemoryMeter, apply_memory_cap, is_oom
from clipbert.perf.search import BatchSearchResult, find_max_batch
from clipbert.perf.timing import TimingResult, time_steps

__all__ = [
    "BatchSearchResult",
    "DevicePeak",
    "PeakMemoryMeter",
    "TimingResult",
    "apply_memory_cap",
    "device_peak",
    "find_max_batch",
    "is_oom",
    "mfu",
    "time_steps",
]
