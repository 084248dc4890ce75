"""A data source that lacks the split's annotated videos (or images) is said at start-up: a warning naming the
key, the count and a few ids when some are missing, a DataError when all are (train.py exits 2 at once).
Why: each missing video was a bad input replaced by another example's; the run trained on the few that
exist, said only per video and in the epoch summary."""

import json
import logging
import shutil
import unicodedata

import h5py
import pytest

from clipbert.data.annotations import DataError
from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB

LOGGER = "clipbert.data.datasets"


def _ann(tmp_path, ids, task="msrvtt_ret", split="train"):
    ann = tmp_path / "annotations"
    ann.mkdir(exist_ok=True)
    lines = [json.dumps({"caption": f"a video {i}", "clip_name": vid}) for i, vid in enumerate(ids)]
    (ann / f"{task}_{split}.jsonl").write_text("\n".join(lines) + "\n")
    return ann


def _video_dir(tmp_path, names):
    """Empty files: the check lists the folder and decodes nothing."""
    videos = tmp_path / "videos"
    videos.mkdir(exist_ok=True)
    for name in names:
        (videos / name).write_bytes(b"")
    return videos


def _cfg(ann, **overrides):
    return DataConfig(**{**dict(ann_dir=str(ann), image_size=32, num_workers=0), **overrides})


def _checked_train_split(ann, tokenizer, **overrides):
    """The msrvtt_ret train split over `ann`, built with the source check on."""
    return build_dataset(
        "msrvtt_ret", "train", _cfg(ann, **overrides), tokenizer, IMAGENET_RGB, check_source=True
    )


def _coverage_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "are not in" in r.getMessage()]


def test_some_videos_missing_is_one_warning_naming_key_count_and_ids(tmp_path, tokenizer, caplog):
    ids = [f"v{i}" for i in range(6)] * 2  # 6 distinct videos, each captioned twice
    ann, videos = _ann(tmp_path, ids), _video_dir(tmp_path, ["v0.mp4", "v1.webm"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds = _checked_train_split(ann, tokenizer, video_dir=str(videos))
    assert len(ds) == 12
    [message] = _coverage_warnings(caplog)
    assert f"4 of 6 videos of msrvtt_ret/train are not in data.video_dir={str(videos)!r}" in message
    assert "'v2', 'v3', 'v4'" in message and "'v5'" not in message  # up to 3 examples


def test_no_video_present_is_a_data_error_naming_key_split_and_an_id(tmp_path, tokenizer):
    ann, videos = _ann(tmp_path, ["v0", "v1"]), _video_dir(tmp_path, ["other.mp4"])
    cfg = _cfg(ann, video_dir=str(videos))
    with pytest.raises(
        DataError, match=r"none of the 2 videos of msrvtt_ret/train .* is in data\.video_dir="
    ):
        build_dataset("msrvtt_ret", "train", cfg, tokenizer, IMAGENET_RGB, check_source=True)
    build_dataset("msrvtt_ret", "train", cfg, tokenizer, IMAGENET_RGB)  # unasked (text-only use): no check
    # retrieval evaluation checks its distinct videos
    _ann(tmp_path, ["v0", "v0"], split="val")
    with pytest.raises(DataError, match=r"none of the 1 videos of msrvtt_ret/val .*'v0'"):
        build_dataset("msrvtt_ret", "val", cfg, tokenizer, IMAGENET_RGB, check_source=True)


def test_nfd_file_names_and_ids_with_suffix_count_as_present(tmp_path, tokenizer, caplog):
    nfc = unicodedata.normalize("NFC", "clip café")
    nfd = unicodedata.normalize("NFD", nfc)
    ann = _ann(tmp_path, [nfc, "video7.mp4", "plain"])
    videos = _video_dir(tmp_path, [f"{nfd}.mp4", "video7.mp4", "plain.MOV"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _checked_train_split(ann, tokenizer, video_dir=str(videos))
    assert _coverage_warnings(caplog) == []


def _store(path, ids):
    with h5py.File(path, "w") as h5:
        h5.attrs["version"] = 2
        videos = h5.create_group("videos")
        for vid in ids:
            videos.create_group(vid).attrs["complete"] = True
    return path


def test_frame_store_missing_videos_warns_or_fails_by_its_keys(tmp_path, tokenizer, caplog):
    nfc = unicodedata.normalize("NFC", "café")
    ann = _ann(tmp_path, [unicodedata.normalize("NFD", nfc), "a", "b", "c"])
    store = _store(tmp_path / "frames.h5", [nfc, "a"])  # stored under the canonical (NFC) id
    cfg = _cfg(ann, backend="frame_store", frame_store=str(store))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        build_dataset("msrvtt_ret", "train", cfg, tokenizer, IMAGENET_RGB, check_source=True)
    [message] = _coverage_warnings(caplog)
    assert f"2 of 4 videos of msrvtt_ret/train are not in data.frame_store={str(store)!r}" in message
    other = _store(tmp_path / "other.h5", ["x", "y"])  # built from another split's videos
    cfg = _cfg(ann, backend="frame_store", frame_store=str(other))
    with pytest.raises(DataError, match=r"none of the 4 videos .* is in data\.frame_store=.*other\.h5"):
        build_dataset("msrvtt_ret", "train", cfg, tokenizer, IMAGENET_RGB, check_source=True)


def test_image_task_missing_images_are_counted_in_their_folders(tmp_path, tokenizer, caplog):
    ann = tmp_path / "annotations"
    ann.mkdir()
    nfc = unicodedata.normalize("NFC", "photo é.jpg")
    files = ["imgs/a.jpg", "imgs/b.jpg", f"imgs/{nfc}", "gone/c.jpg"]
    lines = [json.dumps({"image_id": i, "caption": "a cat", "file": f}) for i, f in enumerate(files)]
    (ann / "pretrain_train.jsonl").write_text("\n".join(lines) + "\n")
    images = tmp_path / "images"
    (images / "imgs").mkdir(parents=True)
    for name in ("a.jpg", unicodedata.normalize("NFD", nfc)):
        (images / "imgs" / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        build_dataset(
            "pretrain", "train", _cfg(ann, image_root=str(images)), tokenizer, IMAGENET_RGB, check_source=True
        )
    [message] = _coverage_warnings(caplog)
    assert "2 of 4 images of pretrain/train are not in data.image_root=" in message
    assert "'gone/c.jpg', 'imgs/b.jpg'" in message


def _run_argv(tmp_path, ann, videos):
    argv = ["--config", "ds_synthetic", "--set", f"data.ann_dir={ann}", "--set", f"data.video_dir={videos}"]
    return argv + ["--set", "data.num_workers=0", "--set", f"train.output_dir={tmp_path}/out"]


@pytest.mark.usefixtures("cpu_world")
def test_train_exits_2_in_one_line_before_any_step_when_no_video_is_there(tmp_path, capfd):
    from clipbert.train.run import main

    ids = [f"v{i}" for i in range(4)]
    for split in ("train", "val", "test"):
        ann = _ann(tmp_path, ids, split=split)
    videos = _video_dir(tmp_path, ["unrelated.mp4"])
    assert main(_run_argv(tmp_path, ann, videos)) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert f"none of the 4 videos of msrvtt_ret/train ({ann / 'msrvtt_ret_train.jsonl'}) is in " in err
    assert f"data.video_dir={str(videos)!r}, e.g. 'v0'" in err
    assert not (tmp_path / "out" / "steps.jsonl").exists()


@pytest.mark.usefixtures("cpu_world")
def test_train_and_eval_still_run_when_some_videos_are_missing(bench, tmp_path, caplog):
    from clipbert.train.run import main

    videos = tmp_path / "videos"
    shutil.copytree(bench / "videos", videos)
    gone = sorted(videos.iterdir())[:2]
    for path in gone:
        path.unlink()
    argv = _run_argv(tmp_path, bench / "annotations", videos) + ["--set", "train.max_steps=1"]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert main(argv) == 0
    messages = _coverage_warnings(caplog)
    assert messages and all(f"data.video_dir={str(videos)!r}" in m for m in messages)
    assert any("msrvtt_ret/train" in m for m in messages)
    assert (tmp_path / "out" / "metrics.jsonl").exists()  # the evaluation ran and reported
