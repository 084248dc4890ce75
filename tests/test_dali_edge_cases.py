"""DALI loader (CPU decoder) on edge-case inputs: a repeated timestamp, bad files mixed into packs, and the
routing report of a batch abandoned by `break`. Each compares with the PyAV loader on tiny videos."""

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")

from clipbert.data.config import DataConfig  # noqa: E402
from clipbert.data.datasets import build_dataset  # noqa: E402
from clipbert.data.loader import build_loader  # noqa: E402
from clipbert.data.painted import ENCODER_OPTIONS, paint_index, write_painted_video, zero_payloads  # noqa: E402
from clipbert.data.preprocess import IMAGENET_RGB  # noqa: E402
from clipbert.data.tokenizer import build_tokenizer  # noqa: E402

STD = torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)


def _write_repeated_timestamp(path: Path, num_frames: int = 20, repeat: int = 5) -> str:
    """A VP9 webm of painted frames whose packet `repeat` carries the timestamp of the packet before it (a
    muxer bug): PyAV counts the timestamp once, keeping the frame decoded first (painted repeat - 1)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = ENCODER_OPTIONS["vp9"]
        packets = []
        for index in range(num_frames):
            packets += stream.encode(av.VideoFrame.from_ndarray(paint_index(index, 48, 64), format="rgb24"))
        packets += stream.encode()
        packets[repeat].pts, packets[repeat].dts = packets[repeat - 1].pts, packets[repeat - 1].dts
        for packet in packets:
            out.mux(packet)
    return str(path)


def _qa_set(root: Path, names: list[str]) -> None:
    """An msrvtt_qa val split under `root`, one question per name (a video id; its file may be absent)."""
    (root / "annotations").mkdir()
    with open(root / "annotations" / "msrvtt_qa_val.jsonl", "w") as f:
        for name in names:
            f.write(json.dumps({"question": "what", "answer": "x", "video_id": name}) + "\n")
    (root / "annotations" / "msrvtt_qa_ans2label.json").write_text('{"x": 0}')


def _loader(root: Path, batch_size: int, **overrides):
    values = dict(ann_dir=str(root / "annotations"), video_dir=str(root / "videos"), image_size=32)
    values.update(num_clips=2, num_test_clips=2, frames_per_clip=2, num_workers=0, seed=5, max_bad_retries=6)
    values.update(overrides)
    cfg = DataConfig(**values)
    dataset = build_dataset("msrvtt_qa", "val", cfg, build_tokenizer(), IMAGENET_RGB)
    return build_loader(dataset, cfg, batch_size, False, rank=0, world_size=1, device="cpu")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("trim, pack", [(False, 1), (True, 1), (True, 3)])
def test_dali_gives_pyavs_frames_for_a_repeated_timestamp(tmp_path, trim, pack):
    # DALI counts both packets of a repeated timestamp, PyAV (the sampler's index) once: from the repeat on,
    # DALI's frame k was PyAV's k - 1 (14 grey levels off), cut by trim.py or whole.
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_repeated_timestamp(videos / "dup.webm")
    write_painted_video(videos / "good", 20, codec="vp9")
    _qa_set(tmp_path, ["good", "dup", "dup"])
    (dali,) = list(_loader(tmp_path, 3, backend="dali", dali_trim=trim, dali_pack=pack))
    (pyav,) = list(_loader(tmp_path, 3, backend="pyav"))
    assert dali["video_ids"] == pyav["video_ids"] == ["good", "dup", "dup"] and dali["bad_videos"] == []
    diff = ((dali["frames"] - pyav["frames"]) * STD).abs().flatten(1).mean(1)
    assert (diff < 2.0).all(), diff


@pytest.mark.timeout(60)
def test_dali_reports_a_routed_file_of_an_abandoned_batch_when_met_again(tmp_path):
    # The H.264 file is first met in the batch DALI decodes ahead; `break` drops that batch with its report,
    # and the file, routed to PyAV for good, was never reported to the BadInputTracker.
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, codec in (("a", "vp9"), ("b", "h264"), ("c", "vp9")):
        write_painted_video(videos / name, 12, codec=codec)
    _qa_set(tmp_path, ["a", "b", "c"])
    loader = _loader(tmp_path, 1, backend="dali")
    for _ in loader:
        break
    reports = [batch["bad_videos"] for batch in loader]
    assert reports == [[], [f"{videos / 'b.mp4'}: codec h264 unreadable by DALI on CPU; used PyAV"], []]
    assert [batch["bad_videos"] for batch in loader] == [[], [], []]  # once per file, as before


@pytest.mark.timeout(90)
@pytest.mark.parametrize("trim, pack, workers", [(True, 3, 1), (False, 1, 0)])
def test_dali_batch_mixing_bad_files_with_good_ones_in_packs(tmp_path, trim, pack, workers):
    # Missing, empty, cut-off, H.264 (CPU DALI cannot read it) and undecodable MJPEG files in one batch with
    # good VP9, VP8 and MJPEG ones, which pack together: the good rows keep their frames, the bad ones are
    # replaced, routed or dropped and reported, and nothing hangs.
    import av

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("v1", "v2"):
        write_painted_video(videos / name, 20, codec="vp9")
    for name in ("m1", "m2", "mz"):
        write_painted_video(videos / name, 20, codec="mjpeg")
    zero_payloads(str(videos / "mz.avi"), first=3)  # probes and cuts, DALI and PyAV fail to decode it
    write_painted_video(videos / "h", 20, codec="h264")
    with av.open(str(videos / "vp8.webm"), "w") as out:
        stream = out.add_stream("libvpx", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(20):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(paint_index(index, 48, 64), format="rgb24")))
        out.mux(stream.encode())
    (videos / "empty.webm").write_bytes(b"")
    full = Path(write_painted_video(videos / "whole", 40, codec="vp9")).read_bytes()
    (videos / "cut.webm").write_bytes(full[: len(full) // 2])
    (videos / "whole.webm").unlink()
    names = ["v1", "missing", "m1", "empty", "mz", "v2", "cut", "h", "m2", "vp8"]
    _qa_set(tmp_path, names)
    (dali,) = list(_loader(tmp_path, 10, backend="dali", dali_trim=trim, dali_pack=pack, num_workers=workers))
    (pyav,) = list(_loader(tmp_path, 10, backend="pyav"))
    bad = " | ".join(dali["bad_videos"])
    for name in ("missing.mp4: missing file", "empty.webm: empty file", "cut.webm: truncated"):
        assert name in bad
    assert "h.mp4: codec h264 unreadable by DALI on CPU; used PyAV" in bad
    assert "mz.avi: DALI could not decode" in bad and "sample dropped" in bad  # as the loader's docs say
    rows = {(int(i), v): r for r, (i, v) in enumerate(zip(pyav["index"], pyav["video_ids"], strict=True))}
    # mz's row, and the row whose replacement mz was, are dropped; every other row is there
    assert "mz" not in dali["video_ids"] and len(dali["video_ids"]) == 10 - bad.count("sample dropped")
    for r, key in enumerate(zip(dali["index"].tolist(), dali["video_ids"], strict=True)):
        diff = ((dali["frames"][r] - pyav["frames"][rows[key]]) * STD).abs().mean()
        assert diff < 2.0, (key, diff)
    assert np.isin(["v1", "m1", "v2", "h", "m2", "vp8"], dali["video_ids"]).all()
