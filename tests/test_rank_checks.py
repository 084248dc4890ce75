"""Every rank must see the checkpoints and data it reads (clipbert/train/rank_checks.py).

A run whose eval.checkpoint (or init_checkpoint, resume dir, annotation or video folder) was on one node's
local disk failed on the other nodes mid-run, inside a collective, while the ranks that could read it waited
there until the collective's timeout. One two-process launch (a rank-dependent path stands in for a second
node's disk) checks that both ranks now stop at the start, together, naming the key, the path and the ranks
that do not see it; the pure parts are checked here in-process. A second launch checks the same for a rank
whose config fails to load (a weights file missing on its node): it used to exit before the process group
formed, leaving the others at the rendezvous.
"""

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
from test_train_fakes import fake_factory, make_config
from torchrun_helper import run_two_processes

from clipbert.train.rank_checks import paths_every_rank_reads, unseen_paths


def test_paths_every_rank_reads_follow_the_run_kind(tmp_path):
    training = make_config(
        tmp_path,
        train={"init_checkpoint": "/w/init", "resume": "auto"},
        data={"ann_dir": "/d/ann", "video_dir": "/d/videos"},
    )
    assert paths_every_rank_reads(training) == [
        ("train.init_checkpoint", "/w/init"),  # resume=auto names no path: output_dir's own checkpoints
        ("data.ann_dir", "/d/ann"),
        ("data.video_dir", "/d/videos"),
    ]
    evaluating = make_config(
        tmp_path,
        eval={"only": True, "checkpoint": "/w/ckpt"},
        data={"backend": "frame_store", "frame_store": "/d/frames.h5"},
    )
    assert paths_every_rank_reads(evaluating) == [
        ("eval.checkpoint", "/w/ckpt"),
        ("data.frame_store", "/d/frames.h5"),
    ]


def test_unseen_paths_names_the_blind_ranks_and_leaves_paths_nobody_sees_to_their_reader():
    paths = [("eval.checkpoint", "/w/ckpt"), ("data.ann_dir", "/d/ann"), ("data.video_dir", "/typo")]
    seen = [
        ([True, True, False], "node-a"),
        ([False, True, False], "node-b"),
        ([False, True, False], "node-b"),
    ]
    assert unseen_paths(seen, paths) == [
        "eval.checkpoint='/w/ckpt': not found by rank 1 on node-b, rank 2 on node-b"
    ]
    assert unseen_paths([([True], "a"), ([True], "b")], paths[:1]) == []


CASES = {
    "eval_checkpoint": lambda out, rank: make_config(
        out / "eval",
        eval={"only": True, "checkpoint": str(out / ("ckpt" if rank == 0 else "ckpt_on_node0_only"))},
    ),
    "ann_dir": lambda out, rank: make_config(
        out / "train", data={"ann_dir": str(out / ("ann" if rank == 0 else "ann_on_node0_only"))}
    ),
    # another training run holds the folder (worker: rank 0's own lock): both ranks stop at the start
    "held_output_dir": lambda out, rank: make_config(out / "held"),
}


def main_worker(out: str) -> None:
    """train.py's main() on both ranks; rank 1's --set names a weights file that only "node 0" has."""
    from clipbert.train.run import main

    out, rank = Path(out), int(os.environ["RANK"])
    weights = out / ("resnet.pth" if rank == 0 else "resnet_on_node0_only.pth")
    argv = [
        "--config",
        "ds_synthetic.json",
        "--set",
        "train.device=cpu",
        "--set",
        f"train.output_dir={out}/run",
    ]
    code = main([*argv, "--set", f"model.init_cnn_from={weights}"])
    (out / f"rank{rank}.json").write_text(json.dumps({"exit": code}))


def worker(out: str) -> None:
    import torch

    from clipbert.train.config import ConfigError
    from clipbert.train.engine import init_distributed
    from clipbert.train.run import run

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    init_distributed(cpu)
    out, rank, results = Path(out), int(os.environ["RANK"]), {}
    held = contextlib.ExitStack()
    if rank == 0:  # as another run would: the lock alone, no collective
        held.enter_context(contextlib.closing(open_locked(out / "held")))
    for name, config in CASES.items():
        try:
            run(config(out, rank), cpu, fake_factory(train_size=4, eval_size=2))
            results[name] = "ran"
        except ConfigError as err:
            results[name] = f"ConfigError: {err}"
        except Exception as err:  # noqa: BLE001 - what the rank met instead, for the assertion's message
            results[name] = f"{type(err).__name__}: {err}"
    held.close()
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    # both done, then the group closed: a rank that exits while its peer's gloo pair is open aborted it
    # (exit -6) now and then on a loaded machine
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def open_locked(folder: Path):
    import fcntl

    folder.mkdir()
    lock = open(folder / ".run.lock", "w")  # noqa: SIM115 - held open for the worker's cases
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


@pytest.mark.slow
def test_a_path_only_rank_0_sees_stops_both_ranks_at_the_start(tmp_path):
    (tmp_path / "ckpt").mkdir()  # an (empty) checkpoint dir and an annotation dir that rank 1 does not see
    (tmp_path / "ann").mkdir()
    proc = run_two_processes(__file__, [str(tmp_path)], timeout=240)  # a wait in a collective: TimeoutExpired
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for results in ranks:  # both ranks, the same message
        assert results == ranks[0]
    for name, key, path in (
        ("eval_checkpoint", "eval.checkpoint", tmp_path / "ckpt"),
        ("ann_dir", "data.ann_dir", tmp_path / "ann"),
    ):
        said = ranks[0][name]
        assert said.startswith("ConfigError: "), said
        assert f"{key}={str(path)!r}: not found by rank 1 on " in said
        assert "rank 0" not in said.split("not found by")[1]
    said = ranks[0]["held_output_dir"]
    assert said.startswith("ConfigError: rank 0 on ") and "is in use by another training run" in said, said
    assert not (tmp_path / "eval").exists() and not (tmp_path / "train" / "steps.jsonl").exists()


@pytest.mark.slow
def test_a_rank_whose_config_fails_stops_the_others_at_the_start(tmp_path):
    """Rank 1 used to exit before the process group formed, and rank 0 waited at the rendezvous until its
    timeout (10 to 30 minutes; here the test's)."""
    (tmp_path / "resnet.pth").write_bytes(b"")  # exists: the config check looks for the file only
    proc = run_two_processes(__file__, [str(tmp_path), "main"], timeout=180)
    said = proc.stdout + proc.stderr
    exits = [
        json.loads((tmp_path / f"rank{r}.json").read_text())["exit"]
        for r in (0, 1)
        if (tmp_path / f"rank{r}.json").is_file()
    ]
    assert exits == [2, 2], said[-3000:]
    assert "not starting: rank 1 on " in said and "config error: model.init_cnn_from=" in said, said[-3000:]
    assert "resnet_on_node0_only.pth" in said.split("not starting:")[1]
    assert not (tmp_path / "run").exists()


if __name__ == "__main__":
    (main_worker if sys.argv[2:] == ["main"] else worker)(sys.argv[1])
