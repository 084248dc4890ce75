"""The HDF5 frame store: built at a chosen fps, resumable, frames equal the decoded ones within JPEG loss."""

import logging

import h5py
import numpy as np
import pytest

# PyAV is a hard dependency, but the GPU test machine runs `-m needs_cuda` without it: skip, not error.
pytest.importorskip("av", reason="PyAV is not installed")

from clipbert.data import build_frame_store as bfs  # noqa: E402
from clipbert.data.decoders import VideoDecodeError, build_decoder  # noqa: E402
from clipbert.data.frame_store import stored_source_indices  # noqa: E402
from clipbert.data.painted import read_index, write_painted_video, write_resizing_video  # noqa: E402


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fs_videos")
    write_painted_video(root / "a", 60, fps=10, codec="h264")
    write_painted_video(root / "b", 33, fps=10, codec="vp9")
    (root / "broken.mp4").write_bytes(b"not a video" * 8)
    return root


@pytest.fixture(scope="module")
def store(video_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fs") / "frames.h5"
    result = bfs.build_frame_store(video_dir, out, fps=5.0, workers=0, progress=False)
    assert sorted(result["written"]) == ["a", "b"] and result["failed"] == ["broken"]
    return out


def test_stored_source_indices():
    np.testing.assert_array_equal(stored_source_indices(300, 30.0, 2.0), np.arange(20) * 15)
    np.testing.assert_array_equal(
        stored_source_indices(33, 10.0, 5.0), [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32]
    )
    np.testing.assert_array_equal(stored_source_indices(3, 10.0, 30.0), [0, 0, 1, 1, 1, 2, 2, 2, 2])


def test_store_holds_fps_times_and_counts(store):
    decoder = build_decoder("frame_store", str(store))
    info = decoder.probe("a")
    assert (info.num_frames, info.fps) == (30, 5.0)
    with h5py.File(store) as h5:
        group = h5["videos/b"]
        assert group.attrs["source_fps"] == 10.0 and group.attrs["source_num_frames"] == 33
        np.testing.assert_allclose(group["times"][:], np.arange(17) / 5.0)
        np.testing.assert_array_equal(group["source_index"][:], np.arange(17) * 2)


@pytest.mark.parametrize("video", ["a", "b"])
def test_store_frames_match_decoded_frames_within_jpeg_tolerance(store, video_dir, video):
    store_decoder, video_decoder = build_decoder("frame_store", str(store)), build_decoder("pyav")
    path = str(next(video_dir.glob(f"{video}.*")))
    indices = np.array([[0, 3], [7, 16]])
    stored = store_decoder.decode(video, indices).astype(np.int16)
    decoded = video_decoder.decode(path, indices * 2).astype(np.int16)  # 5 fps store of a 10 fps video
    assert stored.shape == decoded.shape
    diff = np.abs(stored - decoded)
    assert diff.mean() < 3.0 and np.percentile(diff, 99) < 40, (diff.mean(), diff.max())
    np.testing.assert_array_equal([[read_index(f) for f in clip] for clip in stored], indices * 2)


def test_build_resumes_and_rewrites_an_interrupted_entry(store, video_dir, tmp_path):
    out = tmp_path / "resume.h5"
    out.write_bytes(store.read_bytes())
    with h5py.File(out, "a") as h5:  # as if the build had stopped while writing "b"
        del h5["videos/b"]
        h5.create_group("videos/b").create_dataset("jpeg", data=np.zeros(3))
    result = bfs.build_frame_store(video_dir, out, fps=5.0, workers=0, progress=False)
    assert result["skipped"] == ["a"] and result["written"] == ["b"]
    assert build_decoder("frame_store", str(out)).probe("b").num_frames == 17
    with pytest.raises(ValueError, match="fps=5.0, not 2.0"):
        bfs.build_frame_store(video_dir, out, fps=2.0, workers=0, progress=False)
    # the size and JPEG quality too (a resume wrote frames of another size into the same store)
    with pytest.raises(ValueError, match="max_side=0, not 32: resume it with the same settings"):
        bfs.build_frame_store(video_dir, out, fps=5.0, workers=0, progress=False, max_side=32)
    with pytest.raises(ValueError, match="quality=90, not 75"):
        bfs.build_frame_store(video_dir, out, fps=5.0, workers=0, progress=False, quality=75)


def test_command_line_builds_a_store(video_dir, tmp_path, capsys):
    args = ["--videos", str(video_dir), "--out", str(tmp_path / "cli.h5"), "--workers", "0"]
    assert bfs.main([*args, "--fps", "2"]) == 1  # built, but broken.mp4 failed: a script can tell
    assert "2 video(s) written, 0 already there, 1 failed" in capsys.readouterr().out
    assert bfs.main([*args, "--fps", "3"]) == 2  # a settings error is one line, not a traceback
    assert "error: " in capsys.readouterr().err
    assert build_decoder("frame_store", str(tmp_path / "cli.h5")).probe("a").num_frames == 12


def test_corrupt_or_absent_entry_is_a_decode_error(store, tmp_path):
    out = tmp_path / "corrupt.h5"
    out.write_bytes(store.read_bytes())
    with h5py.File(out, "a") as h5:
        h5["videos/a/jpeg"][4] = np.frombuffer(b"\xff\xd8garbage", dtype=np.uint8)
    decoder = build_decoder("frame_store", str(out))
    with pytest.raises(VideoDecodeError, match="corrupt frame store entry"):
        decoder.decode("a", np.array([[3, 4]]))
    with pytest.raises(VideoDecodeError, match="not in frame store"):
        decoder.probe("broken")


def test_a_failing_video_is_reported_by_name_and_the_build_goes_on(tmp_path, monkeypatch, caplog):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_painted_video(videos / "good", 10, fps=10, codec="mjpeg")
    resized = write_resizing_video(videos / "resized", [(32, 48)] * 3 + [(48, 64)] * 3)
    with caplog.at_level(logging.WARNING, logger="clipbert.data.build_frame_store"):
        result = bfs.build_frame_store(videos, tmp_path / "a.h5", fps=5.0, workers=0, progress=False)
    assert result["written"] == ["good"] and result["failed"] == ["resized"]
    assert f"{resized}: frame size changes mid-stream" in caplog.text

    def broken_encoder(*args):
        raise ZeroDivisionError("an error no decoder foresaw")

    # any other exception is one file's failure too, not the end of a build of many videos
    monkeypatch.setattr(bfs, "encode_frames", broken_encoder)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipbert.data.build_frame_store"):
        result = bfs.build_frame_store(videos, tmp_path / "b.h5", fps=5.0, workers=0, progress=False)
    assert result["written"] == [] and sorted(result["failed"]) == ["good", "resized"]
    assert f"{videos / 'good.avi'}: unexpected ZeroDivisionError (an error no decoder foresaw)" in caplog.text


def test_a_rotated_video_is_stored_upright(tmp_path):
    # The build decodes with PyAV, which turns a phone's portrait video upright; the store keeps no rotation.
    videos = tmp_path / "videos"
    videos.mkdir()
    write_painted_video(videos / "portrait", 10, fps=10, codec="h264", rotation=-90)
    out = tmp_path / "frames.h5"
    assert bfs.build_frame_store(videos, out, fps=5.0, workers=0, progress=False)["written"] == ["portrait"]
    store = build_decoder("frame_store", str(out))
    info = store.probe("portrait")
    assert (info.height, info.width) == (64, 48)
    frames = store.decode("portrait", np.array([[0, 3]]))[0]  # source frames 0 and 6
    np.testing.assert_array_equal([read_index(np.rot90(f, 1)) for f in frames], [0, 6])  # turned clockwise


def test_videos_sharing_a_stem_fail_by_name_and_the_rest_is_built(tmp_path, caplog, capsys):
    # a.mp4 and a.webm are both video id "a": the second write hit the first's HDF5 group with a bare h5py
    # ValueError, which stopped the build and exited with 2 ("bad arguments").
    videos = tmp_path / "videos"
    videos.mkdir()
    first = write_painted_video(videos / "a", 6, codec="h264")
    second = write_painted_video(videos / "a", 6, codec="vp9")
    write_painted_video(videos / "b", 6, codec="mjpeg")
    with caplog.at_level(logging.WARNING, logger="clipbert.data.build_frame_store"):
        result = bfs.build_frame_store(videos, tmp_path / "s.h5", fps=5.0, workers=0, progress=False)
    assert result["written"] == ["b"] and result["failed"] == ["a", "a"]
    assert f"{first} and {second}: they share the video id 'a'" in caplog.text
    args = ["--videos", str(videos), "--out", str(tmp_path / "cli.h5"), "--workers", "0"]
    assert bfs.main(args) == 1  # some videos failed, the rest built
    assert "1 video(s) written, 0 already there, 2 failed" in capsys.readouterr().out
