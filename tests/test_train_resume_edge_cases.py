"""Resume edge cases: damaged or half-written checkpoints, and resumes under a config that changes the run."""

import json
import shutil

import pytest
import torch
from test_train_fakes import fake_factory, make_config

from clipbert.train import checkpoint as ckpt
from clipbert.train.config import ConfigError
from clipbert.train.run import run

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("cpu_world")

# 8 examples, batch 2, accumulation 2 -> 2 optimizer steps an epoch; 2 epochs -> 4 steps, a checkpoint each
TRAIN = {"epochs": 2, "grad_accum": 2, "save_every": 1, "keep_checkpoints": 3, "eval_every": -1}
NO_FINAL_EVAL = {"final_eval": False}


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "steps.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run, and one stopped after step 3 (checkpoints at steps 1, 2 and 3)."""
    base = tmp_path_factory.mktemp("resume_edge")
    full, stopped = base / "full", base / "stopped"
    assert run(make_config(full, train=TRAIN, eval=NO_FINAL_EVAL), CPU, fake_factory())["step"] == 4
    first = make_config(stopped, train={**TRAIN, "stop_after_steps": 3}, eval=NO_FINAL_EVAL)
    assert run(first, CPU, fake_factory())["step"] == 3
    return full, stopped


def _copy(stopped, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    return out, ckpt.checkpoint_root(out)


def _resume(out, resume="auto", **overrides):
    train = {**TRAIN, "resume": resume, **overrides.pop("train", {})}
    return run(make_config(out, train=train, eval=NO_FINAL_EVAL, **overrides), CPU, fake_factory())


def _cut_short(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


STEP3 = ckpt.tag_for(3)
DAMAGES = {
    # the newest checkpoint lost or cut short a file after `latest` moved to it (a full disk, a lost node)
    "model states cut short": (
        lambda root: _cut_short(root / STEP3 / "mp_rank_00_model_states.pt"),
        "mp_rank_00_model_states.pt is cut short",
    ),
    "model states missing": (
        lambda root: (root / STEP3 / "mp_rank_00_model_states.pt").unlink(),
        "no DeepSpeed model states",
    ),
    "rng states missing": (lambda root: (root / STEP3 / "rng_rank0.pt").unlink(), "missing rng_rank0.pt"),
    "rng states cut short": (lambda root: _cut_short(root / STEP3 / "rng_rank0.pt"), "rng_rank0.pt is cut"),
    "trainer state cut short": (
        lambda root: _cut_short(root / STEP3 / ckpt.STATE_FILE),
        f"{ckpt.STATE_FILE} is cut short",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_resume_auto_passes_over_a_damaged_newest_checkpoint_and_says_why(runs, tmp_path, train_log, damage):
    # It failed with DeepSpeed's bare AssertionError, a "does not fit this model" for a cut-short file or an
    # OSError, or went on without the RNG states (another run than the interrupted one, a warning at most).
    full, stopped = runs
    out, root = _copy(stopped, tmp_path)
    spoil, why = DAMAGES[damage]
    spoil(root)
    assert _resume(out)["step"] == 4
    assert (
        f"resuming from {ckpt.tag_for(2)}, the newest complete checkpoint ({STEP3}: {why}" in train_log.text
    )
    assert _losses(out) == _losses(full)  # steps 3 and 4 again from the step-2 checkpoint, exactly
    # the damaged checkpoint is set aside, not deleted
    assert (root / f"abandoned_after_{ckpt.tag_for(2)}" / STEP3).is_dir()


@pytest.mark.parametrize("pointer", ["missing tag", "empty"])
def test_resume_auto_when_latest_names_no_checkpoint(runs, tmp_path, train_log, pointer):
    full, stopped = runs
    out, root = _copy(stopped, tmp_path)
    (root / ckpt.LATEST).write_text(ckpt.tag_for(9) if pointer == "missing tag" else "")
    assert _resume(out)["step"] == 4
    named = ckpt.tag_for(9) if pointer == "missing tag" else "(empty)"
    assert f"resuming from {STEP3}, the newest complete checkpoint ({named} named by latest" in train_log.text
    assert _losses(out) == _losses(full)


def test_resume_auto_without_latest_resumes_rather_than_starting_over(runs, tmp_path, train_log):
    # It started over from step 0 with an info line: the logs were dropped and the checkpoints overwritten.
    full, stopped = runs
    out, root = _copy(stopped, tmp_path)
    (root / ckpt.LATEST).unlink()
    assert _resume(out)["step"] == 4
    assert f"resuming from {STEP3}, the newest complete checkpoint (no latest file)" in train_log.text
    assert f"resumed from {root / STEP3}" in train_log.text
    assert _losses(out) == _losses(full)


def test_a_checkpoint_newer_than_latest_is_an_unfinished_save(runs, tmp_path, train_log):
    # The fallback above must not take a tag `latest` never confirmed (its save was stopped before `latest`
    # moved), even one whose files look whole: it is passed over, named, and set aside.
    full, stopped = runs
    out, root = _copy(stopped, tmp_path)
    ckpt.write_latest(root, ckpt.tag_for(2))  # as if the save of step 3 was stopped before it moved `latest`
    assert _resume(out)["step"] == 4
    assert f"{STEP3}: newer than latest ({ckpt.tag_for(2)}), a save that did not finish" in train_log.text
    assert _losses(out) == _losses(full)
    assert (root / f"abandoned_after_{ckpt.tag_for(2)}" / STEP3).is_dir()


def test_resume_auto_with_nothing_complete_left_is_an_error_not_a_fresh_start(runs, tmp_path):
    _, stopped = runs
    out, root = _copy(stopped, tmp_path)
    for tag in (ckpt.tag_for(1), ckpt.tag_for(2), STEP3):
        (root / tag / "rng_rank0.pt").unlink()
    with pytest.raises(FileNotFoundError, match=f"no complete checkpoint in .*{STEP3}: missing rng_rank0.pt"):
        _resume(out)


def test_an_explicit_resume_of_a_damaged_checkpoint_names_the_damage(runs, tmp_path):
    # It said the checkpoint "does not fit this model" (the miniz error of a cut-short file).
    _, stopped = runs
    out, root = _copy(stopped, tmp_path)
    _cut_short(root / STEP3 / "mp_rank_00_model_states.pt")
    with pytest.raises(FileNotFoundError, match="is incomplete: mp_rank_00_model_states.pt is cut short"):
        _resume(out, resume=str(root / STEP3))


def test_a_resume_that_changes_the_training_batches_says_so(runs, tmp_path, train_log):
    # data.num_clips (like the frames, the negatives, the sampling) changes what every step trains on: the
    # resume went on without a word
    _, stopped = runs
    out, _ = _copy(stopped, tmp_path)
    assert _resume(out, data={"num_clips": 1})["step"] == 4
    assert "the run's plan changed since the checkpoint (data.num_clips 2 -> 1)" in train_log.text


def test_a_resume_with_another_seed_says_the_seed_is_not_applied(runs, tmp_path, train_log):
    # the restored RNG states make train.seed moot on a resume: it was ignored without a word
    full, stopped = runs
    out, _ = _copy(stopped, tmp_path)
    assert _resume(out, train={"seed": 7})["step"] == 4
    assert "train.seed 42 -> 7 is not applied" in train_log.text and "plan changed" not in train_log.text
    assert _losses(out) == _losses(full)  # the interrupted run's random streams, as the warning says


def test_a_resume_for_another_task_is_refused(runs, tmp_path):
    # didemo_ret trained on from msrvtt_ret's checkpoint, position and schedule without a word
    _, stopped = runs
    out, _ = _copy(stopped, tmp_path)
    with pytest.raises(
        ConfigError, match="trained for task.name=msrvtt_ret, the config says task.name=didemo"
    ):
        _resume(out, task="didemo_ret")
    # the refused resume left the interrupted run's config.json as it was
    assert json.loads((out / "config.json").read_text())["task"]["name"] == "msrvtt_ret"


def test_bad_files_met_before_a_stop_join_the_resumed_epochs_summary(tmp_path):
    # the epoch's count lived only in memory: a run stopped mid-epoch and resumed reported only the files
    # the resumed part met (on several ranks, files only other ranks had met were never reported)
    train = {"epochs": 1, "eval_every": -1, "save_every": 1}
    bad = fake_factory(train_size=8, bad_indices=range(8))  # every example's video is bad: met once each
    run(make_config(tmp_path, train={**train, "stop_after_steps": 2}), CPU, bad)
    assert not (tmp_path / "bad_inputs.jsonl").exists()  # the epoch has not ended
    run(make_config(tmp_path, train={**train, "resume": "auto"}), CPU, bad)
    (record,) = [json.loads(line) for line in (tmp_path / "bad_inputs.jsonl").read_text().splitlines()]
    assert (record["epoch"], record["bad_files"], record["hits"]) == (0, 8, 8)
    assert record["files"] == {f"bad{i}.mp4": 1 for i in range(8)}


def test_a_resumed_runs_perf_json_chains_the_earlier_session(runs, tmp_path):
    # it covered the resumed session only: a run stopped at step 3 of 4 said it trained in one step's time
    out, _ = _copy(runs[1], tmp_path)
    first = json.loads((out / "perf.json").read_text())
    assert (first["start_step"], first["steps"], first["total_wall_s"]) == (0, 3, first["wall_s"])
    assert "earlier_sessions" not in first  # a first session
    summary = _resume(out)
    perf = json.loads((out / "perf.json").read_text())
    assert summary["perf"] == perf and (perf["start_step"], perf["steps"]) == (3, 4)
    assert perf["earlier_sessions"] == [{k: v for k, v in first.items() if k != "total_wall_s"}]
    assert perf["total_wall_s"] == pytest.approx(perf["wall_s"] + first["wall_s"])
    # a third session chains both
    assert _resume(out, train={"epochs": 3})["step"] == 6
    third = json.loads((out / "perf.json").read_text())
    assert [r["start_step"] for r in third["earlier_sessions"]] == [0, 3]
    assert third["total_wall_s"] == pytest.approx(third["wall_s"] + first["wall_s"] + perf["wall_s"])
