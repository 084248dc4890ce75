"""Two simulated nodes of one process each (two `torchrun --nnodes 2 --node_rank {0,1}` launches on localhost,
gloo): LOCAL_RANK is 0 on both, GROUP_RANK differs. Compared with one node of two processes.

Checked: with a shared output_dir the run matches the one-node run of world 2 step for step and metric for
metric (seeds and shards follow the global rank), each shared file is written once (by global rank 0), a
SIGTERM to both nodes' processes takes one checkpoint and the resume repeats the uninterrupted run exactly;
with a node-local output_dir per node (no shared filesystem, which docs/TRAINING.md rules out) the run is
refused at its start, naming the ranks that do not see rank 0's files (it used to train and save checkpoints
that no resume could load, and died at its end on node 1 without rank 0's best_model/).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SIZE = 16  # training examples: 4 micro batches of 2 per rank on 2 ranks, grad_accum 2 -> 2 steps/epoch
TRAIN = {"epochs": 2, "grad_accum": 2, "save_every": 0, "eval_every": 2, "tensorboard": True, "plot": True}
ZERO2 = {"zero_optimization": {"stage": 2}}


def _factory(**fault):
    from test_train_fakes import fake_factory

    return fake_factory(train_size=SIZE, eval_size=5, **fault)


def _config(out: Path, **train):
    from test_train_fakes import make_config

    return make_config(out, train={**TRAIN, **train}, deepspeed=ZERO2)


def _sigterm_at(micro: int) -> tuple[int, int]:
    """(epoch 0, the first example of this rank's micro batch `micro`): each rank's process gets a SIGTERM
    there, as a scheduler's to every process of the job."""
    import torch.distributed as dist

    from clipbert.data.loader import ShardedSampler

    shard = ShardedSampler(SIZE, 2, True, 0, rank=dist.get_rank(), world_size=dist.get_world_size()).shard()
    return 0, shard[micro * 2]


def worker(out: str, mode: str) -> None:
    """Runs in each process. mode: `one_node` (the reference run) or `two_nodes` (every check)."""
    import torch
    import torch.distributed as dist

    from clipbert.train.config import ConfigError
    from clipbert.train.engine import init_distributed
    from clipbert.train.logging import is_rank0
    from clipbert.train.run import run

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    init_distributed(cpu)
    out, results = Path(out), {"env": {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "GROUP_RANK")}}
    results["full"] = run(_config(out / mode / "full"), cpu, _factory())
    if mode == "two_nodes":
        shared = out / mode / "sig"
        results["sig_first"] = run(_config(shared), cpu, _factory(sigterm_at=_sigterm_at(2)))
        results["sig_tags"] = sorted(p.name for p in (shared / "checkpoints").glob("step_*"))
        results["sig_latest"] = (shared / "checkpoints" / "latest").read_text()
        results["sig_second"] = run(_config(shared, resume="auto"), cpu, _factory())
        # no shared filesystem: each node its own output_dir
        local = out / mode / f"local_node{os.environ['GROUP_RANK']}"
        try:
            results["local"] = run(_config(local, stop_after_steps=3), cpu, _factory())
        except ConfigError as err:
            results["local"] = f"ConfigError: {err}"
    all_results = [None] * dist.get_world_size()
    dist.all_gather_object(all_results, results)
    if is_rank0():
        (out / f"{mode}.json").write_text(json.dumps(all_results, default=str))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, mode: str, timeout: int) -> None:
    """One node of two processes, or two nodes of one (two torchrun agents meeting at one port)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    port = _free_port()
    base = [sys.executable, "-m", "torch.distributed.run", "--master_addr=127.0.0.1", f"--master_port={port}"]
    if mode == "one_node":
        commands = [[*base, "--nproc_per_node=2"]]
    else:
        commands = [[*base, "--nnodes=2", "--nproc_per_node=1", f"--node_rank={n}"] for n in (0, 1)]
    procs = [
        subprocess.Popen(
            [*cmd, __file__, str(out), mode],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for cmd in commands
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=timeout)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-4000:]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("multinode")
    _launch(out, "one_node", timeout=300)
    _launch(out, "two_nodes", timeout=400)
    return (
        out,
        json.loads((out / "one_node.json").read_text()),
        json.loads((out / "two_nodes.json").read_text()),
    )


def _losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def _rows(path: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "eval_seconds"}
        for line in path.read_text().splitlines()
    ]


@pytest.mark.slow
def test_two_nodes_are_ranks_0_and_1_with_local_rank_0_on_both(launched):
    _, _, two = launched
    assert [r["env"] for r in two] == [
        {"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"},
        {"RANK": "1", "LOCAL_RANK": "0", "GROUP_RANK": "1"},
    ]


@pytest.mark.slow
def test_two_nodes_match_one_node_of_two_processes(launched):
    out, one, two = launched
    a, b = out / "one_node" / "full", out / "two_nodes" / "full"
    assert _losses(a / "steps.jsonl") == _losses(b / "steps.jsonl") and len(_losses(b / "steps.jsonl")) == 4
    assert _rows(a / "metrics.jsonl") == _rows(b / "metrics.jsonl")
    test = two[0]["full"]["metrics"]
    assert test["num_videos"] == 5 and test["num_texts"] == 10  # each eval example once, over both nodes
    # every shared file once, by global rank 0: whole, and the same as one node's
    for name in (
        "config.json",
        "perf.json",
        "model/clipbert_config.json",
        "model/predict.json",
        "best_model/best.json",
    ):
        json.loads((b / name).read_text())
    assert not list(b.glob(".shared_check_*"))  # the probe of check_shared_output_dir is gone
    assert (b / "training_curves.png").is_file() and len(list((b / "tensorboard").iterdir())) == 1
    assert (b / "checkpoints" / "latest").read_text() == "step_00000004"
    saved = {p.name for p in (b / "checkpoints" / "step_00000004").iterdir()}
    assert {"rng_rank0.pt", "rng_rank1.pt", "trainer_state.json"} <= saved


@pytest.mark.slow
def test_a_sigterm_to_both_nodes_checkpoints_once_and_resumes_exactly(launched):
    out, _, two = launched
    assert [r["sig_first"]["reason"] for r in two] == ["signal", "signal"]
    stopped = two[0]["sig_first"]["step"]
    assert 0 < stopped < 4
    sig = out / "two_nodes" / "sig"
    for r in two:  # one checkpoint at the stop, seen alike from both nodes
        assert r["sig_tags"] == [f"step_{stopped:08d}"] and r["sig_latest"] == f"step_{stopped:08d}"
    assert _losses(sig / "steps.jsonl") == _losses(out / "two_nodes" / "full" / "steps.jsonl")
    full, second = two[0]["full"]["metrics"], two[0]["sig_second"]["metrics"]
    assert {k: v for k, v in second.items() if k != "eval_seconds"} == {
        k: v for k, v in full.items() if k != "eval_seconds"
    }


@pytest.mark.slow
def test_node_local_output_dirs_are_refused_at_the_start(launched):
    out, _, two = launched
    # before: both trained, and no checkpoint of rank 0's dir was complete (rank 1's files were on the other
    # node), so the resume failed and the run's end died on node 1 without rank 0's best_model/
    for r in two:
        assert isinstance(r["local"], str), r["local"]
        assert "rank 1 on " in r["local"] and "shared by all nodes" in r["local"], r["local"]
    assert not list((out / "two_nodes").glob("local_node*/checkpoints"))
    assert not list((out / "two_nodes").glob("local_node*/.shared_check_*"))


def test_ranks_from_mpirun_without_master_addr_say_how_deepspeeds_openmpi_launcher_sets_it():
    from clipbert.train.launch_env import launch_env

    # `deepspeed --launcher openmpi` on 2 nodes: mpirun's variables, no MASTER_ADDR. The advice was "launch
    # with deepspeed", which the user had done.
    mpi = {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
    with pytest.raises(
        ValueError, match=r"deepspeed --launcher openmpi --launcher_args '-x MASTER_ADDR=<host>'"
    ):
        launch_env(mpi)


if __name__ == "__main__":  # the torchrun worker
    worker(sys.argv[1], sys.argv[2])
