"""Two CPU processes (gloo): a run stopped mid-epoch and resumed matches the uninterrupted one, ZeRO-2 and 3.

With two ranks the resume must restore each rank's shard position and RNG state, and ZeRO's partitioned
optimizer state. Losses must match step for step and the final evaluation metric for metric. Also: a ZeRO-3
evaluation of a set smaller than the world finishes.
"""

import json
import sys
from pathlib import Path

import pytest
from torchrun_helper import run_two_processes

STAGES = (2, 3)
# 16 examples over 2 ranks, batch 2, accumulation 2 -> 2 optimizer steps per epoch; 2 epochs -> 4 steps.
TRAIN = {"epochs": 2, "grad_accum": 2, "save_every": 0, "eval_every": -1}


def worker(out: str) -> None:
    """Runs in each of the two processes."""
    import torch
    from test_train_fakes import fake_factory, make_config

    from clipbert.train.engine import init_distributed
    from clipbert.train.logging import is_rank0
    from clipbert.train.run import run

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    init_distributed(cpu)
    results = {}
    for stage in STAGES:
        zero = {"zero_optimization": {"stage": stage}}
        root = Path(out) / f"zero{stage}"
        full = run(make_config(root / "full", train=TRAIN, deepspeed=zero), cpu, fake_factory(train_size=16))
        split = make_config(root / "split", train={**TRAIN, "stop_after_steps": 3}, deepspeed=zero)
        first = run(split, cpu, fake_factory(train_size=16))
        resumed = make_config(root / "split", train={**TRAIN, "resume": "auto"}, deepspeed=zero)
        second = run(resumed, cpu, fake_factory(train_size=16))
        results[stage] = {"full": full, "first": first, "second": second}
    # An evaluation set smaller than the world: rank 1's shard is empty. Under ZeRO-3 every forward is a
    # collective, so that rank must still run its share (a repeat of example 0, deduplicated) or rank 0 hangs.
    tiny = make_config(Path(out) / "tiny_eval", train={"epochs": 1, "eval_every": 0}, deepspeed=zero)
    results["tiny_eval"] = run(tiny, cpu, fake_factory(train_size=4, eval_size=1))
    if is_rank0():
        (Path(out) / "results.json").write_text(json.dumps(results, default=str))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_process_resume_matches_the_uninterrupted_run(tmp_path):
    proc = run_two_processes(__file__, [str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for stage in STAGES:
        r = results[str(stage)]
        assert r["full"]["perf"]["world_size"] == 2 and r["full"]["perf"]["zero_stage"] == stage
        assert r["first"]["reason"] == "stop_after_steps" and r["first"]["step"] == 3
        assert r["full"]["step"] == r["second"]["step"] == 4
        root = tmp_path / f"zero{stage}"
        full, split = _losses(root / "full" / "steps.jsonl"), _losses(root / "split" / "steps.jsonl")
        assert len(full) == 4 and split == full, stage  # exactly, step for step
        metrics = [
            {k: v for k, v in r[run]["metrics"].items() if k != "eval_seconds"} for run in ("full", "second")
        ]
        assert metrics[0] == metrics[1], stage
    tiny = results["tiny_eval"]["metrics"]
    assert tiny["num_videos"] == 1 and tiny["num_texts"] == 2 and tiny["t2v_r1"] == 100.0


if __name__ == "__main__":  # the torchrun worker
    worker(sys.argv[1])
