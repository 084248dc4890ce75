"""Long-run hygiene: file descriptors stay flat over many decodes (the failing ones too), frame-store handles
are per process and read right after fork, and a frame-store build holds a bounded number of frames and
survives a worker's death (Linux: counted in /proc)."""

import contextlib
import functools
import os
import signal
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

# PyAV is a hard dependency, but the GPU test machine runs `-m needs_cuda` without it: skip, not error.
av = pytest.importorskip("av", reason="PyAV is not installed")

from clipbert.data import build_frame_store as bfs  # noqa: E402
from clipbert.data.decoders import VideoDecodeError, build_decoder  # noqa: E402
from clipbert.data.loader import ignore_interrupts  # noqa: E402
from clipbert.data.painted import read_index, write_painted_video, write_resizing_video  # noqa: E402


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fds_to(path: str) -> int:
    """This process's file descriptors open on `path`."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own descriptor)
            count += os.readlink(f"/proc/self/fd/{fd}") == path
    return count


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A readable H.264 video, one in MPEG-TS named .mp4 (its decoder falls back to a second seek), and
    broken ones: cut in half, random bytes, missing."""
    root = tmp_path_factory.mktemp("leaks")
    good = write_painted_video(root / "good", 30)
    ts = str(root / "hls.mp4")
    with av.open(ts, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = 12
        frame = np.zeros((48, 64, 3), np.uint8)
        for _ in range(40):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = Path(good).read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) // 2])
    (root / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    return {"good": good, "ts": ts, "broken": [str(root / n) for n in ("cut.mp4", "noise.mp4", "nope.mp4")]}


def test_pyav_leaves_no_descriptor_open_over_many_decodes_good_or_failing(videos):
    jobs = [(videos["good"], [[0, 29], [5, 1]]), (videos["ts"], [[0, 39], [38, 1]])]
    jobs += [(path, [[0]]) for path in videos["broken"]]
    build_decoder("pyav").decode(videos["good"], np.array([[0]]))  # first use: libraries load
    before = open_fds()
    failed = 0
    for k in range(300):
        path, indices = jobs[k % len(jobs)]
        try:
            build_decoder("pyav").decode(path, np.array(indices))  # a new decoder: probes every time
        except VideoDecodeError:
            failed += 1
    assert failed == 180
    assert open_fds() == before


def test_frame_store_handle_is_one_per_process_and_reopened_after_fork(tmp_path):
    (tmp_path / "videos").mkdir()
    for name in "ab":
        write_painted_video(tmp_path / "videos" / name, 8)
    store = str(tmp_path / "frames.h5")
    bfs.build_frame_store(tmp_path / "videos", store, fps=10.0, workers=0, progress=False)
    decoder = build_decoder("frame_store", store)
    indices = np.array([[0, 7, 3]])
    for _ in range(50):  # the parent reads first: its handle is open when the workers fork
        expected = {vid: decoder.decode(vid, indices) for vid in "ab"}
    assert fds_to(store) == 1

    class Reads(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            vid = "ab"[i % 2]
            return vid, decoder.decode(vid, indices), fds_to(store), os.getpid()

    init = functools.partial(ignore_interrupts, main_pid=os.getpid())  # as build_loader's workers start
    loader = torch.utils.data.DataLoader(Reads(), batch_size=None, num_workers=2, worker_init_fn=init)
    pids = set()
    for vid, frames, handles, pid in loader:
        np.testing.assert_array_equal(frames, expected[vid])  # the inherited handle did not garble reads
        assert handles == 1  # the worker's own; the parent's copy was closed, not kept beside it
        pids.add(pid)
    assert len(pids) == 2 and os.getpid() not in pids
    assert [[read_index(f) for f in clip] for clip in expected["a"]] == [[0, 7, 3]]


def _entry_peak_bytes(path: str) -> int:
    tracemalloc.start()
    try:
        bfs._encode_entry(path, 10.0, 0, 90)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_building_a_frame_store_holds_a_bounded_number_of_decoded_frames(tmp_path, monkeypatch):
    # The whole video's frames were decoded into one array before encoding: a 10-minute 720p video at 2 fps
    # held over 3.3 GB in each build worker. Chunks of 10 frames here: a video 5 times longer peaks the same.
    monkeypatch.setattr(bfs, "DECODE_CHUNK_BYTES", 10 * 96 * 128 * 3)
    short = write_painted_video(tmp_path / "short", 40, height=96, width=128)
    long = write_painted_video(tmp_path / "long", 200, height=96, width=128)
    frame_bytes = 96 * 128 * 3
    assert _entry_peak_bytes(long) - _entry_peak_bytes(short) < 40 * frame_bytes  # not 160 frames more
    # and chunking changes nothing stored: the same JPEGs as one decode of every frame
    chunked = bfs._encode_entry(long, 10.0, 64, 90)
    monkeypatch.setattr(bfs, "DECODE_CHUNK_BYTES", 1 << 40)
    whole = bfs._encode_entry(long, 10.0, 64, 90)
    assert len(chunked["jpeg"]) == 200 and (chunked["height"], chunked["width"]) == (48, 64)
    assert all(np.array_equal(a, b) for a, b in zip(chunked["jpeg"], whole["jpeg"], strict=True))
    np.testing.assert_array_equal(chunked["source_index"], whole["source_index"])


def test_a_frame_size_change_between_chunks_still_fails_the_video(tmp_path, monkeypatch):
    monkeypatch.setattr(bfs, "DECODE_CHUNK_BYTES", 3 * 32 * 48 * 3)  # chunks of 3 frames: [0, 1, 2], [3, 4]
    path = write_resizing_video(tmp_path / "resized", [(32, 48)] * 3 + [(48, 64)] * 2)
    with pytest.raises(VideoDecodeError, match=r"resized\.mkv: frame size changes mid-stream"):
        bfs._encode_entry(path, 10.0, 0, 90)


def child_processes() -> list[int]:
    """This process's children, but multiprocessing's resource tracker (one per process, kept)."""
    pids = []
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as f:  # a thread may end
            pids += [int(pid) for pid in f.read().split()]
    alive = []
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"resource_tracker" not in f.read():
                alive.append(pid)
    return alive


def has_open(pid: int, path: str) -> bool:
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                    return True
    return False


def test_a_build_whose_worker_dies_fails_that_video_and_goes_on(tmp_path):
    # A worker killed mid-video (the OOM killer on a long video, a crash inside FFmpeg) took its job with it:
    # Pool.imap_unordered waited for that result forever, and a days-long build hung at its last videos.
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in "ab":
        write_painted_video(videos / name, 5)
    doomed = os.path.realpath(write_painted_video(videos / "z", 150, height=120, width=160))
    stop = threading.Event()

    def kill_whoever_opens_it():  # as the OOM killer would, each time a worker takes the video on
        while not stop.is_set():
            for pid in child_processes():
                if has_open(pid, doomed):
                    with contextlib.suppress(OSError):  # gone already
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)

    killer = threading.Thread(target=kill_whoever_opens_it, daemon=True)
    result = {}
    build = threading.Thread(
        target=lambda: result.update(
            bfs.build_frame_store(videos, tmp_path / "frames.h5", fps=30.0, workers=1, progress=False)
        ),
        daemon=True,
    )
    killer.start()
    build.start()
    build.join(60)
    stop.set()
    assert not build.is_alive(), "the build hangs after its worker died"
    assert result == {"written": ["a", "b"], "skipped": [], "failed": ["z"]}
    assert child_processes() == []  # every pool's workers ended
