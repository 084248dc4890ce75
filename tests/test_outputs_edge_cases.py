"""What a run writes for its user to read, on unusual but real input: the training curves of a log with a
line cut short by a crash, of a run of one step, of an earlier checkpoint evaluated later; the logs' rewind
killed midway, a record appended after a cut line; the synthetic benchmark's chance level of an empty
split; the end of a run: a diverged run's curves, a requeued run's perf.json, a plot that fails."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from clipbert.train.logging import RunLog
from clipbert.train.plot import _plot_loss, _plot_lr, eval_series, plot_curves


def _write_lines(path: Path, rows: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


# ---------------------------------------------------------------- training_curves.png


def test_curves_are_drawn_from_logs_with_a_cut_line_and_say_what_was_skipped(tmp_path, train_log):
    # a crash mid-write leaves a cut last line; a lost write on some file systems leaves a line of zeros.
    # The plot is drawn at the end of a run: one such line raised a JSONDecodeError there.
    steps = [{"step": i, "loss": 2.0 / i, "lr": 1e-4} for i in range(1, 6)]
    _write_lines(tmp_path / "steps.jsonl", steps, tail="\x00\x00\x00\n" + '{"step": 6, "lo')
    _write_lines(
        tmp_path / "metrics.jsonl", [{"step": 5, "split": "val", "acc": 40.0}], tail='{"step": 6, "sp'
    )
    assert plot_curves(tmp_path) == tmp_path / "training_curves.png"
    warned = [r.getMessage() for r in train_log.records if r.levelno == logging.WARNING]
    assert any("steps.jsonl" in m and "skipped 2 line(s)" in m and "line 6, 7" in m for m in warned), warned
    assert any("metrics.jsonl" in m and "skipped 1 line(s)" in m for m in warned), warned


def test_a_run_of_one_step_draws_its_loss_and_learning_rate():
    # a curve of one point drew nothing: a one-step run showed empty loss and learning-rate axes
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [{"step": 1, "loss": 0.7, "mlm_loss": 0.4, "itm_loss": 0.3, "lr": 1e-4, "cnn_lr": 1e-5}]
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2)
    try:
        _plot_loss(loss_ax, steps)
        _plot_lr(lr_ax, steps, ["cnn_lr", "lr"])
        curves = {
            line.get_label(): line.get_marker()
            for ax in (loss_ax, lr_ax)
            for line in ax.lines
            if not line.get_label().startswith("_")
        }
    finally:
        plt.close(fig)
    assert set(curves) == {"loss", "mlm_loss", "itm_loss", "lr", "cnn_lr"}
    assert all(marker not in (None, "", "None", " ") for marker in curves.values()), curves


def test_an_evaluation_of_an_earlier_checkpoint_takes_its_place_on_the_curve():
    # eval.only of checkpoint step 4 into the run's output_dir, then the run resumed for more epochs: the
    # test split's line went 10 -> 4 -> 20
    rows = [
        {"step": 10, "split": "test", "acc": 30.0},
        {"step": 4, "split": "test", "acc": 20.0},
        {"step": 20, "split": "test", "acc": 40.0},
        {"step": None, "split": "test", "acc": 99.0},  # an exported model's: no step, left out
    ]
    assert eval_series(rows)["percent"]["acc"] == {"test": ([4, 10, 20], [20.0, 30.0, 40.0])}


# ---------------------------------------------------------------- the logs


def test_a_rewind_killed_midway_keeps_the_log(tmp_path, monkeypatch):
    # a resume rewrites steps.jsonl without the steps after its checkpoint; written in place, a run killed
    # (preempted) during that write lost every step logged before
    steps = [{"step": i, "loss": 1.0 / i} for i in range(1, 9)]
    _write_lines(tmp_path / "steps.jsonl", steps)
    before = (tmp_path / "steps.jsonl").read_bytes()
    real_write_text = Path.write_text

    def killed_midway(path, text, *args, **kwargs):
        real_write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    log = RunLog(tmp_path, tensorboard=False)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(Path, "write_text", killed_midway)
        log.rewind(4)
    assert (tmp_path / "steps.jsonl").read_bytes() == before
    log.rewind(4)  # the resume run again
    assert [json.loads(line)["step"] for line in (tmp_path / "steps.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
    ]


def test_an_evaluation_appended_after_a_cut_line_is_a_line_of_its_own(tmp_path):
    # e.g. a training run crashed mid-write, then eval.only of its last checkpoint into the same output_dir:
    # the record was glued to the cut line, so it was no JSON: lost from the plot, dropped by a resume
    path = tmp_path / "metrics.jsonl"
    _write_lines(path, [{"step": 2, "split": "val", "acc": 10.0}], tail='{"step": 4, "split": "va')
    log = RunLog(tmp_path, tensorboard=False)
    log.evaluation(4, "test", {"acc": 30.0})
    log.evaluation(4, "val", {"acc": 20.0})
    lines = path.read_text().splitlines()
    assert lines[1] == '{"step": 4, "split": "va'
    assert [json.loads(line) for line in lines[2:]] == [
        {"step": 4, "split": "test", "acc": 30.0},
        {"step": 4, "split": "val", "acc": 20.0},
    ]
    log.rewind(4)  # a resume from step 4 keeps both and drops the cut line
    assert [(r["split"], r["acc"]) for r in map(json.loads, path.read_text().splitlines())] == [
        ("val", 10.0),
        ("test", 30.0),
        ("val", 20.0),
    ]


def test_an_evaluation_into_a_new_or_empty_log_adds_no_blank_line(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    (tmp_path / "metrics.jsonl").write_text("")
    log.evaluation(1, "val", {"acc": 1.0})
    log.evaluation(2, "val", {"acc": 2.0})
    assert [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().split("\n")[:-1]
    ] == [
        1,
        2,
    ]


def test_a_resume_gives_a_last_line_cut_before_its_line_break_one_back(tmp_path):
    # the crash came between a step's record and its "\n": the record is whole and kept, and the resumed
    # run's first step, appended to it, made one line that is no JSON (both lost, and dropped at the next
    # resume)
    path = tmp_path / "steps.jsonl"
    _write_lines(path, [{"step": 1, "loss": 0.9}], tail=json.dumps({"step": 2, "loss": 0.8}))
    RunLog(tmp_path, tensorboard=False).rewind(2)
    with open(path, "a") as f:  # as the trainer appends its next step
        f.write(json.dumps({"step": 3, "loss": 0.7}) + "\n")
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


# ---------------------------------------------------------------- the synthetic benchmark


def test_chance_levels_of_a_split_with_no_item_are_none(tmp_path):
    # 3 videos, seed 1: the one test video has no event, so tgif_transition's test split has no item, and
    # meta.json gave it a chance of 20% as if measured
    pytest.importorskip("av", reason="PyAV is not installed")
    from clipbert.data.synthetic import generate

    meta = generate(tmp_path, num_videos=3, seed=1, size="tiny", workers=1)
    counts, chance = meta["counts"], meta["chance"]
    assert counts["tgif_transition"]["test"] == 0
    for task in ("tgif_action", "tgif_transition", "msrvtt_mc", "msrvtt_qa", "tgif_frameqa"):
        rows = (tmp_path / "annotations" / f"{task}_test.jsonl").read_text().splitlines()
        assert counts[task]["test"] == len(rows), task
        if rows:
            assert chance[task]["test"] is not None, task
        else:
            assert chance[task]["test"] is None, task
    assert chance["tgif_action"]["test"] == pytest.approx(0.2)
    assert json.loads((tmp_path / "meta.json").read_text())["chance"] == chance


# ---------------------------------------------------------------- the end of a run (run.py)


@pytest.mark.usefixtures("cpu_world")
def test_a_diverged_run_draws_its_curves(tmp_path):
    # the run whose curves its user needs most ended in TrainingDiverged before the plot was drawn
    from test_train_fakes import fake_factory, make_config

    from clipbert.train.loop import TrainingDiverged
    from clipbert.train.run import run

    train = {"epochs": 3, "max_bad_steps": 2, "save_every": 0, "eval_every": -1, "plot": True}
    with pytest.raises(TrainingDiverged):
        run(make_config(tmp_path, train=train), torch.device("cpu"), fake_factory(nan_epoch=1))
    assert (tmp_path / "training_curves.png").is_file()


@pytest.mark.usefixtures("cpu_world")
def test_a_requeued_run_that_takes_no_step_keeps_its_perf_record(tmp_path):
    # the same command again after stop_after_steps trains nothing: its perf.json (the training's figures)
    # was replaced by the record of a run of no steps, 0 frames/s
    from test_train_fakes import fake_factory, make_config

    from clipbert.train.run import run

    train = {"epochs": 2, "eval_every": -1, "stop_after_steps": 2}
    run(make_config(tmp_path, train=train), torch.device("cpu"), fake_factory(train_size=6))
    perf = json.loads((tmp_path / "perf.json").read_text())
    assert perf["frames_per_s"] > 0
    again = make_config(tmp_path, train={**train, "resume": "auto"})
    assert run(again, torch.device("cpu"), fake_factory(train_size=6))["step"] == 2
    assert json.loads((tmp_path / "perf.json").read_text()) == perf


@pytest.mark.usefixtures("cpu_world")
def test_a_plot_that_fails_is_a_warning_and_a_cut_perf_record_is_written_again(
    tmp_path, monkeypatch, train_log
):
    # a full disk while saving the PNG ended a finished run in a traceback; a perf.json cut by a kill
    # (it was written in place) crashed the next resume of the finished run
    from test_train_fakes import fake_factory, make_config

    import clipbert.train.plot as plot
    from clipbert.train.run import run

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plot, "plot_curves", full_disk)
    train = {"epochs": 1, "eval_every": -1, "plot": True}
    assert run(make_config(tmp_path, train=train), torch.device("cpu"), fake_factory())["reason"] == "done"
    warned = [r.getMessage() for r in train_log.records if r.levelno == logging.WARNING]
    assert any("training_curves.png not drawn: OSError" in m for m in warned), warned
    (tmp_path / "perf.json").write_text('{"date_utc": "2026-')
    again = make_config(tmp_path, train={**train, "resume": "auto"})
    assert run(again, torch.device("cpu"), fake_factory())["reason"] == "done"
    assert "steps" in json.loads((tmp_path / "perf.json").read_text())
    assert not (tmp_path / "perf.json.partial").exists()
