"""Ranks from srun and mpirun (clipbert/train/launch_env.py): each process used to become rank 0 of a world of
one, so N copies of the run trained on all the data into one output dir."""

import pytest

from clipbert.train.launch_env import first_host, launch_env

SRUN = {  # task 5 of `srun -N 2 --ntasks-per-node 4 python train.py`, as SLURM sets it
    "SLURM_NTASKS": "8",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_ID": "0",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    "SLURM_JOB_ID": "123456",
}


def test_a_torch_style_launcher_is_left_alone():
    assert launch_env({"RANK": "3", **SRUN}) == {}


def test_srun_tasks_get_their_rank_world_gpu_and_rank_0s_host():
    env = launch_env(SRUN)
    assert env == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(29500 + 123456 % 20000),  # the same in every task of the job
    }
    assert launch_env({**SRUN, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"})["MASTER_ADDR"] == "10.0.0.1"


def test_one_process_in_a_slurm_job_and_a_plain_run_are_a_world_of_one():
    # sbatch's batch step runs one task (no SLURM_STEP_ID with several): not srun's ranks
    for environ in (
        {},
        {**SRUN, "SLURM_NTASKS": "1"},
        {k: v for k, v in SRUN.items() if k != "SLURM_STEP_ID"},
    ):
        env = launch_env(environ)
        assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
        assert int(env["MASTER_PORT"]) > 0


def test_mpirun_ranks_need_rank_0s_address():
    mpi = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "2"}
    with pytest.raises(ValueError, match=r"rank 2 of 4 without MASTER_ADDR: export MASTER_ADDR"):
        launch_env(mpi)
    env = launch_env({**mpi, "MASTER_ADDR": "head"})
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("2", "4", "2", "head")


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("node1", "node1"),
        ("gpu[07-09,12],cpu1", "gpu07"),
        ("gpu[12,07-09]", "gpu12"),
        ("rack[1-2]-n[003-004]", "rack1-n003"),
        ("a1,b[1-3]", "a1"),
    ],
)
def test_first_host_of_a_slurm_host_list(nodelist, first):
    assert first_host(nodelist) == first


def test_train_py_under_srun_without_a_host_list_says_what_to_set(monkeypatch, capfd):
    from clipbert.train.run import main

    for key, value in {**SRUN, "SLURM_STEP_NODELIST": ""}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_JOB_NODELIST", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert main(["--config", "ds_synthetic.json"]) == 2
    assert "rank 5 of 8 without MASTER_ADDR" in capfd.readouterr().err


@pytest.mark.parametrize(
    "tasks_per_node, node_id, local_world",
    [
        ("2(x3),1", "3", "1"),  # `srun -n 7 -N 4`: the last node holds one task (it was told 2)
        ("2(x3),1", "1", "2"),
        ("3,1(x2)", "2", "1"),
        ("4(x2)", "1", "4"),
        (
            "2(x3),1",
            "9",
            "2",
        ),  # a node id past the step's list (a step on some of the job's nodes): the first
        ("", "0", "7"),  # no list: the whole world
    ],
)
def test_srun_local_world_is_this_nodes_task_count(tasks_per_node, node_id, local_world):
    environ = {
        **SRUN,
        "SLURM_NTASKS": "7",
        "SLURM_STEP_TASKS_PER_NODE": tasks_per_node,
        "SLURM_NODEID": node_id,
    }
    assert launch_env(environ)["LOCAL_WORLD_SIZE"] == local_world
