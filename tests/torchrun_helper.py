"""Launch a test file as a two-process torchrun job on the CPU (a helper module; it holds no tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(script: str, args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node=2 script *args` from the repo root, one thread each;
    the workers import the package and the tests' helper modules."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # set by earlier in-process tests; torchrun sets its own
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
    ]
    return subprocess.run(
        [*cmd, script, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
