"""What this process may use of the machine."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (Linux), else the machine's.

    Why not os.cpu_count(): it counts the whole machine. A SLURM job given 8 of a node's 128 cores (a cpuset),
    or `taskset`, still saw 128, and a default of one worker a core started 127 processes on its 8 cores."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13: the affinity mask, or the machine's count
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1
