"""Frame-store edge cases: a build killed before its first entry resumes, bad settings and paths are one
clear error, and a damaged store or entry fails at start-up naming the file or counts as a bad video."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg

# PyAV is a hard dependency, but the GPU test machine runs `-m needs_cuda` without it: skip, not error.
pytest.importorskip("av", reason="PyAV is not installed")

from clipbert.data import build_frame_store as bfs  # noqa: E402
from clipbert.data.config import DataConfig  # noqa: E402
from clipbert.data.datasets import build_dataset  # noqa: E402
from clipbert.data.decoders import build_decoder  # noqa: E402
from clipbert.data.painted import write_painted_video  # noqa: E402
from clipbert.data.preprocess import IMAGENET_RGB  # noqa: E402
from clipbert.data.tokenizer import build_tokenizer  # noqa: E402

IDS = ["a", "b", "c"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three tiny MJPEG videos, a 5 fps store of them and an msrvtt_qa val split showing each."""
    root = tmp_path_factory.mktemp("fs_edge")
    videos, anns = root / "videos", root / "annotations"
    videos.mkdir()
    anns.mkdir()
    for name in IDS:
        write_painted_video(videos / name, 10, fps=10, height=32, width=32, codec="mjpeg")
    with open(anns / "msrvtt_qa_val.jsonl", "w") as f:
        for name in IDS:
            f.write(json.dumps({"question": "what", "answer": "shape", "video_id": name}) + "\n")
    (anns / "msrvtt_qa_ans2label.json").write_text(json.dumps({"shape": 0}))
    result = bfs.build_frame_store(videos, root / "frames.h5", fps=5.0, workers=0, progress=False)
    assert result["written"] == IDS
    return root


def copy_store(data, tmp_path) -> Path:
    out = tmp_path / "frames.h5"
    out.write_bytes((data / "frames.h5").read_bytes())
    return out


def dataset(data, store):
    cfg = DataConfig(
        ann_dir=str(data / "annotations"),
        video_dir=str(data / "videos"),
        image_size=16,
        num_test_clips=1,
        frames_per_clip=2,
        num_workers=0,
        backend="frame_store",
        frame_store=str(store),
    )
    return build_dataset("msrvtt_qa", "val", cfg, build_tokenizer(), IMAGENET_RGB)


# A build killed (SIGKILL, as an OOM killer or a preempted node does) while writing its first entry: the
# file's header had never been flushed, so the rerun met "truncated file" and could not resume.
KILLED_BUILD = """
import os, signal, sys
from clipbert.data import build_frame_store as bfs
def killed(h5, video_id, entry, fps):
    h5["videos"].create_group(video_id).create_dataset("jpeg", data=[1, 2, 3])  # half written
    os.kill(os.getpid(), signal.SIGKILL)
bfs._write_entry = killed
bfs.build_frame_store(sys.argv[1], sys.argv[2], fps=5.0, workers=0, progress=False)
"""


def test_a_build_killed_during_its_first_entry_resumes(data, tmp_path):
    out = tmp_path / "killed.h5"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(data / "videos"), str(out)], env=env)
    assert proc.returncode == -9 and out.exists()
    result = bfs.build_frame_store(data / "videos", out, fps=5.0, workers=0, progress=False)
    assert result == {"written": IDS, "skipped": [], "failed": []}
    assert build_decoder("frame_store", str(out)).probe("a").num_frames == 5


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"quality": 0}, "quality must be 1..100, got 0"),
        ({"quality": 101}, "quality must be 1..100, got 101"),
        ({"max_side": -5}, "max_side must be >= 0"),  # built a store of 1x1 frames without a word
        ({"fps": float("inf")}, "fps must be a finite number > 0, got inf"),
        ({"fps": float("nan")}, "fps must be a finite number > 0, got nan"),
    ],
)
def test_a_bad_setting_is_one_error_before_any_video(data, tmp_path, setting, message):
    # each used to fail every video one by one ("unexpected ValueError" per file, exit 1) or build silently
    settings = {"fps": 5.0, **setting}
    with pytest.raises(ValueError, match=message):
        bfs.build_frame_store(data / "videos", tmp_path / "x.h5", workers=0, progress=False, **settings)
    assert not (tmp_path / "x.h5").exists()


def test_a_folder_without_videos_is_an_error_not_an_empty_store(tmp_path, capsys):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    (videos / "notes.txt").write_text("not a video")
    write_painted_video(videos / "sub" / "nested", 2, codec="mjpeg")  # subfolders are not searched
    with pytest.raises(ValueError, match=r"no video files \(.mp4, .* in .*videos \(subfolders are not"):
        bfs.build_frame_store(videos, tmp_path / "x.h5", workers=0, progress=False)
    assert bfs.main(["--videos", str(videos), "--out", str(tmp_path / "x.h5"), "--workers", "0"]) == 2
    assert "error: no video files" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("kind", ["not_hdf5", "truncated", "directory", "missing_folder"])
def test_an_out_that_cannot_be_opened_is_a_clear_error(data, tmp_path, capsys, kind):
    # a raw h5py OSError traceback and exit 1 ("some videos failed") before
    out = tmp_path / "frames.h5"
    if kind == "not_hdf5":
        out.write_text("my notes, not a store")
    elif kind == "truncated":
        store = (data / "frames.h5").read_bytes()
        out.write_bytes(store[: len(store) // 2])
    elif kind == "directory":
        out.mkdir()
    else:
        out = tmp_path / "absent" / "frames.h5"
    args = ["--videos", str(data / "videos"), "--out", str(out), "--fps", "5", "--workers", "0"]
    assert bfs.main(args) == 2
    assert f"error: cannot open {out} to build or resume a frame store" in capsys.readouterr().err
    if kind == "not_hdf5":
        assert out.read_text() == "my notes, not a store"  # left as it was


def test_a_video_named_dot_is_reported_and_the_rest_is_built(tmp_path, caplog):
    # "..avi" has the id ".", which HDF5 reads as the /videos group: the build died with a bare KeyError
    videos = tmp_path / "videos"
    videos.mkdir()
    write_painted_video(videos / "ok", 2, codec="mjpeg")
    os.replace(write_painted_video(videos / "dot", 2, codec="mjpeg"), videos / "..avi")
    with caplog.at_level(logging.WARNING, logger="clipbert.data.build_frame_store"):
        result = bfs.build_frame_store(videos, tmp_path / "x.h5", fps=5.0, workers=0, progress=False)
    assert result == {"written": ["ok"], "skipped": [], "failed": ["."]}
    assert f"skipping {videos / '..avi'}: its video id '.' cannot name an HDF5 group" in caplog.text


@pytest.mark.parametrize("kind", ["truncated", "not_hdf5", "empty", "no_videos_group"])
def test_an_unreadable_store_fails_at_start_up_naming_the_file(data, tmp_path, kind):
    # before, the dataset started and every sample then failed as "corrupt frame store entry"
    store = tmp_path / "frames.h5"
    if kind == "truncated":
        whole = (data / "frames.h5").read_bytes()
        store.write_bytes(whole[: len(whole) // 2])
    elif kind == "not_hdf5":
        store.write_text("not hdf5")
    elif kind == "empty":
        store.write_bytes(b"")
    else:
        with h5py.File(store, "w") as h5:
            h5["other"] = np.arange(3)
    message = "has no /videos group" if kind == "no_videos_group" else "is not a readable HDF5 file"
    with pytest.raises(ValueError, match=f"frame store {store} {message}"):
        dataset(data, store)


@pytest.mark.parametrize("damage", ["no_frames", "zero_fps"])
def test_an_entry_without_frames_or_fps_is_a_counted_bad_video(data, tmp_path, damage):
    # clip sampling raised a bare ValueError ("num_frames must be >= 1", "fps must be > 0") mid-training
    store = copy_store(data, tmp_path)
    with h5py.File(store, "a") as h5:
        if damage == "no_frames":
            del h5["videos/a/jpeg"]
            h5["videos/a"].create_dataset("jpeg", (0,), dtype=h5py.vlen_dtype(np.uint8))
        else:
            h5["videos/a"].attrs["fps"] = 0.0
    item = dataset(data, store)[(0, 0)]
    assert item["video_id"] == "b" and len(item["bad_videos"]) == 1
    assert item["bad_videos"][0].startswith("a: corrupt frame store entry (")


def test_a_greyscale_jpeg_entry_is_read_as_rgb(data, tmp_path):
    # the CPU reader returned 1 channel, which the resize raised mid-training; DALI's reader decodes RGB
    store = copy_store(data, tmp_path)
    grey = encode_jpeg(torch.full((1, 32, 32), 200, dtype=torch.uint8), quality=95).numpy()
    with h5py.File(store, "a") as h5:
        jpeg = h5["videos/a/jpeg"]
        for i in range(len(jpeg)):
            jpeg[i] = grey
    frames = build_decoder("frame_store", str(store)).decode("a", np.array([[0, 4]]))
    assert frames.shape == (1, 2, 32, 32, 3) and np.abs(frames.astype(int) - 200).max() <= 2
    item = dataset(data, store)[(0, 0)]
    assert item["video_id"] == "a" and item["bad_videos"] == []
