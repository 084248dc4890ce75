"""Review of the changes since 2026-11-29 20:00 UTC: regressions where a change met a caller, an input or a
configuration its own tests did not try."""

import json

import pytest
from test_train_fakes import make_config

from clipbert.data.annotations import DataError
from clipbert.train.config import ConfigError
from clipbert.train.rank_checks import paths_every_rank_reads
from clipbert.train.run import refuse_previous_run


def _keys(cfg) -> list[str]:
    return [key for key, _ in paths_every_rank_reads(cfg)]


def test_rank_check_skips_the_video_dir_a_frame_store_run_never_reads(tmp_path):
    # A store built on one node from its local videos, then copied to the shared filesystem: the config's
    # video_dir (kept from the task's config) is on that node only, and no rank reads it.
    cfg = make_config(
        tmp_path,
        data={"video_dir": "/node0/videos", "backend": "frame_store", "frame_store": "/shared/frames.h5"},
    )
    assert _keys(cfg) == ["data.frame_store"]


def test_rank_check_skips_a_frame_store_the_video_backends_never_read(tmp_path):
    cfg = make_config(tmp_path, data={"video_dir": "/shared/videos", "frame_store": "/node0/frames.h5"})
    assert _keys(cfg) == ["data.video_dir"]


def test_rank_check_reads_the_folders_of_the_task_kind(tmp_path):
    # image tasks read image_root, never video_dir; video tasks the reverse
    video = make_config(tmp_path, data={"video_dir": "/shared/videos", "image_root": "/node0/images"})
    assert _keys(video) == ["data.video_dir"]
    image = make_config(
        tmp_path, task="vqa", data={"video_dir": "/node0/videos", "image_root": "/shared/images"}
    )
    assert _keys(image) == ["data.image_root"]


def _evaluation_dir(out):
    # what eval.only of a checkpoint at step 4 leaves in a dir of its own: metrics.jsonl, eval_config.json
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 4, "split": "test", "r1": 0.5}) + "\n")
    (out / "eval_config.json").write_text("{}\n")
    return out


def test_resume_auto_refuses_the_dir_of_an_evaluation_too(tmp_path):
    # resume=auto (the requeue-safe way to start) finds no checkpoint there and "starts over": its rewind to
    # step 0 dropped the evaluation's row of step 4 (a row of an exported model, step null, stayed and was
    # joined by this run's own), where a fresh run is refused
    out = _evaluation_dir(tmp_path / "d")
    with pytest.raises(ConfigError, match=r"holds evaluations of other weights \(metrics.jsonl"):
        refuse_previous_run(make_config(out, train={"resume": "auto"}), out)


def test_resume_auto_still_starts_over_a_run_that_stopped_before_its_first_checkpoint(tmp_path):
    out = _evaluation_dir(tmp_path / "d")
    (out / "config.json").write_text("{}\n")  # a training run wrote it at its start, before any evaluation
    (out / "steps.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    refuse_previous_run(make_config(out, train={"resume": "auto"}), out)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_video_dir_without_the_runs_videos_exits_2_in_one_line(tmp_path, capfd, workers):
    # A data.video_dir that exists but holds none of the annotated videos (another dataset's folder, a
    # download not finished): every example's video is bad. That ended the run with an uncaught
    # RuntimeError (rc 1), and from a DataLoader worker with a page of the worker's traceback; now the
    # dataset's start-up coverage check (datasets.check_source_coverage) refuses it before any worker.
    from clipbert.train.run import main, own_message

    ann, videos = tmp_path / "annotations", tmp_path / "videos"
    ann.mkdir()
    videos.mkdir()
    lines = [json.dumps({"caption": f"a video {i}", "clip_name": f"v{i}"}) for i in range(10)]
    for split in ("train", "val", "test"):
        (ann / f"msrvtt_ret_{split}.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["--config", "ds_synthetic", "--set", f"data.ann_dir={ann}", "--set", f"data.video_dir={videos}"]
    argv += ["--set", f"data.num_workers={workers}", "--set", f"train.output_dir={tmp_path}/out"]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and "none of the 10 videos of msrvtt_ret/train" in err
    assert f"data.video_dir={str(videos)!r}, e.g. 'v0'" in err
    # a message of several lines comes back whole
    wrapped = DataError(
        "Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1\nclipbert.data.annotations.DataError: a\nb\n'
    )
    assert own_message(wrapped) == "a\nb (in DataLoader worker process 1)"
    assert own_message(DataError("plain")) == "plain"
