"""A frame store that another process has open: said as such, not as a damaged file to rebuild. Why: HDF5
locks the files it opens, and a run started while the store was still being built (or a build started while
runs read it) was told the store "is not a readable HDF5 file; rebuild it" (or, for the build, "if it is a
damaged store, move it away"): advice that throws away hours of encoding."""

import subprocess
import sys

import h5py
import pytest

from clipbert.data.annotations import DataError
from clipbert.data.build_frame_store import build_frame_store
from clipbert.data.frame_store import VERSION, FrameStore
from clipbert.data.painted import write_painted_video

HOLDER = """
import sys, h5py
h5 = h5py.File(sys.argv[1], sys.argv[2])
print("open", flush=True)
sys.stdin.readline()
"""


def _store(path):
    with h5py.File(path, "w") as h5:
        h5.attrs["version"] = VERSION
        h5.create_group("videos")
    return path


def _held(path, mode):
    """A process holding `path` open in `mode` until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "open"
    return proc


@pytest.fixture
def held_for_writing(tmp_path):
    path = _store(tmp_path / "frames.h5")
    proc = _held(path, "a")
    yield path
    proc.communicate("\n", timeout=30)


def test_a_store_being_built_is_said_so_not_called_unreadable(held_for_writing):
    with pytest.raises(DataError) as err:
        FrameStore(held_for_writing)
    said = str(err.value)
    assert "is being written by another process" in said and str(held_for_writing) in said
    assert "rebuild" not in said


def test_readers_share_a_store(tmp_path):
    path = _store(tmp_path / "frames.h5")
    proc = _held(path, "r")
    try:
        assert FrameStore(path).listed_ids() == set()
    finally:
        proc.communicate("\n", timeout=30)


def test_building_a_store_that_a_run_reads_is_said_so_not_called_damaged(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_painted_video(videos / "v0", 4, fps=10, codec="mjpeg")
    path = _store(tmp_path / "frames.h5")
    proc = _held(path, "r")  # a training run's reader
    try:
        with pytest.raises(ValueError) as err:
            build_frame_store(videos, path, fps=2.0, workers=1)
    finally:
        proc.communicate("\n", timeout=30)
    said = str(err.value)
    assert f"{path} is open in another process" in said and "damaged" not in said
    assert build_frame_store(videos, path, fps=2.0, workers=1)["written"] == ["v0"]  # once it has let go
