"""The process group's environment (RANK, WORLD_SIZE, ...) when no torch-style launcher set it.

`deepspeed` and `torchrun` set RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT. A plain `python train.py`
is a world of one. Why the rest: under `srun python train.py` (SLURM) or `mpirun -np 8 python train.py`
(Open MPI) every process used to become rank 0 of a world of one: N copies of one run, each training on
all the data and all writing the same output dir. Those launchers' own variables give the ranks here.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping


def launch_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to `environ` for torch.distributed's env:// init (empty if a launcher set them).

    Raises ValueError naming what is missing when the ranks are known but not where rank 0 listens."""
    if "RANK" in environ:
        return {}
    slurm_tasks = int(environ.get("SLURM_NTASKS", "1") or "1")
    if slurm_tasks > 1 and "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:  # inside `srun`
        nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
        return _with_master(
            environ,
            rank=environ["SLURM_PROCID"],
            world=str(slurm_tasks),
            local_rank=environ.get("SLURM_LOCALID", "0"),
            local_world=_tasks_on_this_node(
                environ.get("SLURM_STEP_TASKS_PER_NODE", ""), environ.get("SLURM_NODEID", "0"), slurm_tasks
            ),
            master=first_host(nodes) if nodes else None,
            port=str(29500 + int(environ.get("SLURM_JOB_ID", "0") or "0") % 20000),  # one per job, all tasks
        )
    mpi_world = int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or "1")
    if mpi_world > 1:
        return _with_master(
            environ,
            rank=environ["OMPI_COMM_WORLD_RANK"],
            world=str(mpi_world),
            local_rank=environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            local_world=environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1"),
            master=None,  # Open MPI does not say where rank 0 runs: MASTER_ADDR must be given
            port="29500",
        )
    return {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": environ.get("MASTER_ADDR", "127.0.0.1"),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(_free_port()),
    }


def _with_master(environ, *, rank, world, local_rank, local_world, master, port) -> dict[str, str]:
    addr = environ.get("MASTER_ADDR") or master
    if not addr:
        # `deepspeed --launcher openmpi` is such a launch too: its mpirun exports no MASTER_ADDR
        raise ValueError(
            f"launched as rank {rank} of {world} without MASTER_ADDR: export MASTER_ADDR=<rank 0's host> "
            "(and MASTER_PORT) for every process (mpirun -x MASTER_ADDR=<host>; deepspeed --launcher openmpi "
            "--launcher_args '-x MASTER_ADDR=<host>'), or launch with torchrun or deepspeed's pdsh launcher"
        )
    return {
        "RANK": rank,
        "WORLD_SIZE": world,
        "LOCAL_RANK": local_rank,
        "LOCAL_WORLD_SIZE": local_world,
        "MASTER_ADDR": addr,
        "MASTER_PORT": environ.get("MASTER_PORT") or port,
    }


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: 'gpu[07-09,12],cpu1' -> 'gpu07', 'r[1-2]-n[3-4]' -> 'r1-n3'."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):  # the first entry ends at the first comma outside brackets
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    # each bracket group's first item, the start of its first range (zero padding kept)
    return re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", nodelist[:end])


def _tasks_on_this_node(tasks_per_node: str, node_id: str, total: int) -> str:
    """SLURM_STEP_TASKS_PER_NODE ('4(x2)', '2(x3),1') and SLURM_NODEID -> this node's task count.

    Why per node: with `srun -n 7` over 4 nodes ('2(x3),1') the last node holds one task, and reading the
    first node's count told it 2 (LOCAL_WORLD_SIZE sizes per-node work such as data workers and GPU choice).
    The first count where the node id is past the list (a step on a subset of the job's nodes)."""
    counts = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            return str(total) if not counts else str(counts[0])
        counts += [match.group(1)] * int(match.group(2) or 1)
    index = int(node_id) if node_id.isdigit() else 0
    return counts[index] if index < len(counts) else counts[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def apply(environ=os.environ) -> None:
    """Add launch_env's variables to the process environment."""
    environ.update(launch_env(environ))
