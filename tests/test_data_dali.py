"""DALI pipelines on the CPU (device="cpu"): VP9 frames match PyAV within codec tolerance; H.264 and broken
files fall back or drop; the frame-store JPEG pipeline matches the CPU reader. GPU variants: needs_cuda."""

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")

from clipbert.data.config import DataConfig  # noqa: E402
from clipbert.data.datasets import build_dataset  # noqa: E402
from clipbert.data.decoders.pyav import PyAVDecoder  # noqa: E402
from clipbert.data.loader import build_loader  # noqa: E402
from clipbert.data.painted import (  # noqa: E402
    read_index,
    write_edit_list_video,
    write_painted_video,
    write_vfr_video,
    zero_payloads,
)
from clipbert.data.preprocess import CAFFE_BGR, IMAGENET_RGB, preprocess_frames  # noqa: E402
from clipbert.data.tokenizer import build_tokenizer  # noqa: E402
from dali_pipelines.common import read_bytes  # noqa: E402
from dali_pipelines.video import DaliVideoDecoder  # noqa: E402


@pytest.fixture(scope="module")
def vp9(tmp_path_factory):
    return write_painted_video(tmp_path_factory.mktemp("dali") / "v", 60, fps=10, codec="vp9")


def denormalize(frames: torch.Tensor, norm) -> torch.Tensor:
    """[..., 3, L, L] normalized -> RGB 0..255 [..., L, L, 3] (inverse of preprocess)."""
    mean = torch.tensor(norm.mean).view(3, 1, 1)
    std = torch.tensor(norm.std).view(3, 1, 1)
    x = frames * std + mean
    if norm.channel_order == "BGR":
        x = x.flip(-3)
    return x.movedim(-3, -1)


def pyav_reference(path, indices, size, norm) -> torch.Tensor:
    raw = PyAVDecoder().decode(path, indices.reshape(-1, indices.shape[-1]))
    flat = preprocess_frames(raw.reshape(-1, *raw.shape[-3:]), size, norm)
    return flat.view(*indices.shape, 3, size, size)


@pytest.mark.parametrize("pipelines, build_index", [(1, True), (2, False)])
def test_dali_cpu_decodes_exactly_the_requested_vp9_frames(vp9, pipelines, build_index):
    indices = np.array([[[30, 31], [2, 3]], [[59, 0], [10, 5]], [[7, 8], [9, 10]]])  # [B=3, N=2, T=2]
    decoder = DaliVideoDecoder(
        64, IMAGENET_RGB, 3, device="cpu", num_pipelines=pipelines, build_index=build_index
    )
    out = decoder.decode([read_bytes(vp9)] * 3, indices, [(48, 64)] * 3)
    assert out.shape == (3, 2, 2, 3, 64, 64) and out.dtype == torch.float32
    rgb = denormalize(out, IMAGENET_RGB).round().clamp(0, 255).to(torch.uint8).numpy()
    got = np.array([[[read_index(f[:48]) for f in clip] for clip in sample] for sample in rgb])
    np.testing.assert_array_equal(got, indices)
    assert (out[..., 48:, :] == 0).all()  # zero padding at the bottom
    diff = (out - pyav_reference(vp9, indices, 64, IMAGENET_RGB)) * torch.tensor(IMAGENET_RGB.std).view(
        3, 1, 1
    )
    assert diff.abs().mean() < 1.0  # grey levels: the same libvpx decode, same frames


@pytest.mark.parametrize(
    "device, codec",
    [("cpu", "vp9"), pytest.param("gpu", "h264", marks=pytest.mark.needs_cuda)],
)
@pytest.mark.parametrize("trim", [False, True])
def test_dali_and_pyav_agree_on_a_variable_frame_rate_video(tmp_path, device, codec, trim):
    # Both count frames in presentation order (PyAV through its probe's timestamp table), so a VFR file
    # gives the same frames whichever backend decodes it, cut by trim.py or whole.
    from dali_pipelines.trim import trim_video

    path = write_vfr_video(tmp_path / "vfr", [50, 150, 100, 200, 30] * 8, codec)
    indices = np.array([[[1, 2], [38, 39]], [[17, 3], [20, 21]]])  # [B=2, N=2, T=2]
    data, dali_indices = [read_bytes(path)] * 2, indices
    if trim:
        cuts = [trim_video(path, sample) for sample in indices]
        data, dali_indices = [c[0] for c in cuts], np.stack([c[1] for c in cuts])
    out = DaliVideoDecoder(64, IMAGENET_RGB, 2, device=device).decode(data, dali_indices, [(48, 64)] * 2)
    out = out.cpu()
    rgb = denormalize(out, IMAGENET_RGB).round().clamp(0, 255).to(torch.uint8).numpy()
    got = np.array([[[read_index(f[:48]) for f in clip] for clip in sample] for sample in rgb])
    np.testing.assert_array_equal(got, indices)
    diff = (out - pyav_reference(path, indices, 64, IMAGENET_RGB)) * torch.tensor(IMAGENET_RGB.std).view(
        3, 1, 1
    )
    assert diff.abs().mean() < 2.0  # grey levels: YUV-to-RGB rounding differs by about one level on the CPU


@pytest.mark.parametrize("trim", [False, True])
def test_dali_and_pyav_agree_on_an_edit_list_video(tmp_path, trim):
    # trim.py keeps the discard-flagged packets as references but counts, like PyAV and DALI, shown frames.
    from dali_pipelines.trim import trim_video

    path = write_edit_list_video(tmp_path / "edit", 30, hidden=5)
    indices = np.array([[[0, 1], [10, 20]]])  # [B=1, N=2, T=2]
    data, dali_indices = [read_bytes(path)], indices
    if trim:
        cut, dali_indices = trim_video(path, indices[0])
        data, dali_indices = [cut], dali_indices[None]
    out = DaliVideoDecoder(64, IMAGENET_RGB, 1, device="cpu").decode(data, dali_indices, [(48, 64)])
    rgb = denormalize(out, IMAGENET_RGB).round().clamp(0, 255).to(torch.uint8).numpy()
    got = np.array([[[read_index(f[:48]) for f in clip] for clip in sample] for sample in rgb])
    np.testing.assert_array_equal(got, indices + 5)
    pyav = PyAVDecoder().decode(path, indices[0])
    np.testing.assert_array_equal([[read_index(f) for f in clip] for clip in pyav], indices[0] + 5)


@pytest.mark.parametrize("norm", [IMAGENET_RGB, CAFFE_BGR])
def test_dali_resize_normalize_pad_matches_the_cpu_path(vp9, norm):
    indices = np.array([[[12, 20]]])
    out = DaliVideoDecoder(40, norm, 1, device="cpu", order="none").decode(
        [read_bytes(vp9)], indices, [(48, 64)]
    )
    ref = pyav_reference(vp9, indices, 40, norm)
    diff = (out - ref) * torch.tensor(norm.std).view(3, 1, 1)
    assert diff.abs().mean() < 2.0 and (diff.abs() > 40).float().mean() < 0.01  # interpolation differences
    assert (out[..., 30:, :] == 0).all() and (ref[..., 30:, :] == 0).all()


@pytest.fixture(scope="module")
def vp9_bench(tmp_path_factory):
    from clipbert.data import synthetic

    out = tmp_path_factory.mktemp("vp9_bench")
    synthetic.generate(out, 12, 1, codec="vp9", size="tiny", workers=1)
    return out


def cfg_for(root, **overrides):
    values = dict(ann_dir=str(root / "annotations"), video_dir=str(root / "videos"), image_size=32)
    values.update(num_clips=2, num_test_clips=2, frames_per_clip=2, num_workers=0, seed=5)
    values.update(overrides)
    return DataConfig(**values)


def loader_batches(root, task, split, batch_size=3, **overrides):
    cfg = cfg_for(root, **overrides)
    dataset = build_dataset(task, split, cfg, build_tokenizer(), IMAGENET_RGB)
    loader = build_loader(dataset, cfg, batch_size, split == "train", rank=0, world_size=1, device="cpu")
    loader.sampler.set_epoch(1)
    return list(loader)


@pytest.mark.parametrize("trim, pack, workers", [(True, 1, 0), (True, 3, 1), (False, 1, 0)])
def test_dali_loader_matches_pyav_loader_on_the_vp9_benchmark(vp9_bench, trim, pack, workers, monkeypatch):
    # Batches of 6 from the set's 4 frame sizes: some rows share a stream format, so packs form (in a
    # DataLoader worker's collate, when there is one).
    from dali_pipelines.video import DaliVideoDecoder

    submit, packed = DaliVideoDecoder.submit_packs, []

    def spy(self, packs, hw):
        packed.extend(len(p.rows) for p in packs)
        return submit(self, packs, hw)

    monkeypatch.setattr(DaliVideoDecoder, "submit_packs", spy)
    dali = loader_batches(
        vp9_bench,
        "tgif_action",
        "train",
        6,
        backend="dali",
        dali_pipelines=2,
        dali_trim=trim,
        dali_pack=pack,
        num_workers=workers,
    )
    assert (max(packed) > 1) == (pack > 1) and max(packed) <= pack
    pyav = loader_batches(vp9_bench, "tgif_action", "train", 6, backend="pyav")
    assert len(dali) == len(pyav) > 0
    for x, y in zip(dali, pyav, strict=True):
        assert set(x) == set(y) and x["bad_videos"] == []
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["index"], y["index"])
        diff = (x["frames"] - y["frames"]) * torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)
        assert diff.abs().mean() < 2.0


@pytest.mark.parametrize("trim", [True, False])
def test_dali_cpu_falls_back_to_pyav_for_h264_and_handles_undecodable(tmp_path, trim):
    import json

    videos, anns = tmp_path / "videos", tmp_path / "annotations"
    videos.mkdir()
    anns.mkdir()
    write_painted_video(videos / "a", 30, codec="vp9")
    write_painted_video(videos / "b", 30, codec="h264")
    zero_payloads(write_painted_video(videos / "c", 60, codec="mjpeg"), first=5)  # probes, fails to decode
    with open(anns / "msrvtt_qa_val.jsonl", "w") as f:
        for name in "abcc":  # two questions on c
            f.write(json.dumps({"question": "what", "answer": "x", "video_id": name}) + "\n")
    (anns / "msrvtt_qa_ans2label.json").write_text('{"x": 0}')
    (batch,) = loader_batches(tmp_path, "msrvtt_qa", "val", batch_size=4, backend="dali", dali_trim=trim)
    bad = " | ".join(batch["bad_videos"])
    assert "b.mp4: codec h264 unreadable by DALI on CPU; used PyAV" in bad
    (ref,) = loader_batches(tmp_path, "msrvtt_qa", "val", batch_size=4, backend="pyav")  # c replaced by a
    torch.testing.assert_close(batch["frames"][1], ref["frames"][1])  # b via PyAV: identical
    # The worker's probe and cut read packets only, so c reaches DALI, which fails on it mid-batch; PyAV
    # cannot decode it either, so the sample is dropped. (The probe catches truncated files: bad_input tests.)
    assert batch["video_ids"] == ["a", "b"] and batch["frames"].shape == (2, 2, 2, 3, 32, 32)
    assert "c.avi: DALI could not decode" in bad and bad.count("sample dropped") == 2
    assert bad.count("DALI could not decode") == 1  # found once: the second row of c goes to PyAV untried
    assert batch["labels"].tolist() == [0, 0] and batch["input_ids"].shape[0] == 2


@pytest.mark.parametrize("trim", [True, False])
def test_dali_sends_rotated_videos_to_pyav_and_reports_them(tmp_path, trim):
    import json

    # DALI's decoder ignores the display matrix: a VP9 it reads well would come out sideways
    videos, anns = tmp_path / "videos", tmp_path / "annotations"
    videos.mkdir()
    anns.mkdir()
    write_painted_video(videos / "a", 30, codec="vp9")
    write_painted_video(videos / "r", 30, codec="vp9", rotation=90)
    with open(anns / "msrvtt_qa_val.jsonl", "w") as f:
        for name in "arr":
            f.write(json.dumps({"question": "what", "answer": "x", "video_id": name}) + "\n")
    (anns / "msrvtt_qa_ans2label.json").write_text('{"x": 0}')
    (batch,) = loader_batches(tmp_path, "msrvtt_qa", "val", batch_size=3, backend="dali", dali_trim=trim)
    assert batch["bad_videos"] == [  # once per file, as the other files routed to PyAV
        f"{videos / 'r.webm'}: display rotation of 90 degrees, which DALI ignores (its frames would be "
        "sideways); used PyAV"
    ]
    (ref,) = loader_batches(tmp_path, "msrvtt_qa", "val", batch_size=3, backend="pyav")
    torch.testing.assert_close(batch["frames"][1:], ref["frames"][1:])  # PyAV's upright frames
    diff = (batch["frames"][0] - ref["frames"][0]) * torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)
    assert diff.abs().mean() < 2.0


def test_frame_store_loader_keeps_an_all_dropped_batch_on_its_device():
    from dali_pipelines.loader import DaliFrameStoreLoader

    class Corrupt:  # every entry fails, as corrupt JPEGs do
        def decode(self, *args):
            raise RuntimeError("corrupt")

        def rebuild(self):
            pass

    # "meta" stands in for a GPU here: the empty frames were made on the CPU whatever the device
    loader = DaliFrameStoreLoader.__new__(DaliFrameStoreLoader)
    loader.cfg, loader.device, loader.decoder = cfg_for(Path(".")), torch.device("meta"), Corrupt()
    batch = {"index": torch.arange(2), "video_ids": ["a", "b"], "bad_videos": []}
    job = {"batch": batch, "jpegs": [[b""], [b""]], "hw": [(4, 4)] * 2, "dali": None, "shape": (2, 1, 1)}
    out = loader.finish(job)
    assert out["frames"].shape == (0, 1, 1, 3, 32, 32) and out["frames"].device.type == "meta"
    assert len(out["bad_videos"]) == 2 and out["video_ids"] == []


def _write_bars(path: Path, tag: int | None) -> None:
    """A 10-frame VP9 webm of saturated colour bars, converted by and tagged with FFmpeg's colour space `tag`
    (1 BT.709, 7 SMPTE 240M, 9 BT.2020 non-constant luminance), or by BT.601 and untagged (None)."""
    from fractions import Fraction

    import av

    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :21], image[:, 21:43], image[:, 43:] = (220, 30, 30), (30, 200, 40), (40, 40, 230)
    image[::8] = 128  # some texture for the resize
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"crf": "4", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        if tag is not None:
            # the matrix is what the conversion reads; primaries and transfer stay BT.709's
            stream.codec_context.colorspace = tag
            stream.codec_context.color_primaries = stream.codec_context.color_trc = 1
        for _ in range(10):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            out.mux(
                stream.encode(
                    frame.reformat(format="yuv420p", dst_colorspace=tag if tag is not None else "ITU601")
                )
            )
        out.mux(stream.encode())


@pytest.mark.parametrize("norm_name, tag", [("rgb", 1), ("bgr", 1), ("rgb", 7), ("rgb", 9)])
def test_dali_gives_pyavs_colours_for_tagged_videos(tmp_path, norm_name, tag):
    # DALI converts YUV to RGB by BT.601 whatever the tag, PyAV by the tag: a BT.709 video's frames were
    # 12.6 grey levels apart on average (up to 76), so DALI-trained models saw other colours than PyAV's.
    # VP9 carries BT.709, SMPTE 240M and BT.2020 tags (not FCC's: test_dali_color covers its matrix).
    import json

    videos, anns = tmp_path / "videos", tmp_path / "annotations"
    videos.mkdir()
    anns.mkdir()
    _write_bars(videos / "tagged.webm", tag)
    _write_bars(videos / "plain.webm", None)
    with open(anns / "msrvtt_qa_val.jsonl", "w") as f:
        for name in ("tagged", "plain"):
            f.write(json.dumps({"question": "what", "answer": "x", "video_id": name}) + "\n")
    (anns / "msrvtt_qa_ans2label.json").write_text('{"x": 0}')
    norm = {"rgb": IMAGENET_RGB, "bgr": CAFFE_BGR}[norm_name]
    pairs = {}
    for backend in ("dali", "pyav"):
        cfg = cfg_for(tmp_path, backend=backend, image_size=48)
        dataset = build_dataset("msrvtt_qa", "val", cfg, build_tokenizer(), norm)
        (batch,) = list(build_loader(dataset, cfg, 2, False, rank=0, world_size=1, device="cpu"))
        assert batch["video_ids"] == ["tagged", "plain"] and batch["bad_videos"] == []
        pairs[backend] = denormalize(batch["frames"], norm)
    for row in (0, 1):  # within codec and resize tolerance, tagged as untagged
        diff = (pairs["dali"][row] - pairs["pyav"][row]).abs()
        assert diff.mean() < 2.0, (row, diff.mean())


def test_dali_loader_sends_what_the_nvdec_guard_flags_to_pyav(vp9_bench, monkeypatch):
    # On the GPU the guard flags cropped H.264 after an uncropped video of the same coded size. The CPU
    # decoder has no such cache, so this runs the same routing on VP9 with H.264's 16-pixel blocks: the
    # tiny set's 64x36 videos then collide with its 64x48 one and must come from PyAV, reported once each.
    from dali_pipelines import routing
    from dali_pipelines.loader import DaliLoader

    monkeypatch.setitem(routing.CODED_ALIGN, "vp9", 16)
    cfg = cfg_for(vp9_bench, backend="dali", dali_pipelines=2)
    dataset = build_dataset("tgif_action", "train", cfg, build_tokenizer(), IMAGENET_RGB)
    loader = build_loader(dataset, cfg, 3, True, rank=0, world_size=1, device="cpu")
    assert isinstance(loader, DaliLoader) and loader.guard is None  # off on the CPU decoder
    loader.guard = routing.NvdecCacheGuard()
    loader.guard.uncropped.add(("vp9", 48, 64))  # as if the 64x48 video had been decoded before
    loader.sampler.set_epoch(1)
    dali = list(loader)
    pyav = loader_batches(vp9_bench, "tgif_action", "train", backend="pyav")
    routed = [b for x in dali for b in x["bad_videos"]]
    sizes = {v: dataset.source.info(v) for x in dali for v in x["video_ids"]}
    cropped = sorted(v for v, info in sizes.items() if (info.height, info.width) == (36, 64))
    assert cropped and len(routed) == len(cropped)
    assert all("64x36 vp9 is coded as 64x48" in r and r.endswith("used PyAV") for r in routed)
    assert loader.use_pyav == {dataset.source.key(v) for v in cropped}
    for x, y in zip(dali, pyav, strict=True):
        diff = (x["frames"] - y["frames"]) * torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)
        assert diff.abs().mean() < 2.0


@pytest.mark.parametrize("pack", [1, 3])
def test_dali_loader_isolates_a_failed_batch_from_the_cut_videos(vp9_bench, monkeypatch, pack):
    # When a batch fails in DALI the loader decodes its samples one at a time to find the offender; with cut
    # videos it must resend the cut bytes and their own indices (not the packs). Here one batch fails once.
    from dali_pipelines.video import DaliVideoDecoder

    collect, failed = DaliVideoDecoder.collect, []

    def flaky(self, job):
        if sum(job["rows"]) > 1 and not failed:
            failed.append(job["rows"])
            raise RuntimeError("spurious DALI failure")
        return collect(self, job)

    monkeypatch.setattr(DaliVideoDecoder, "collect", flaky)
    dali = loader_batches(
        vp9_bench, "tgif_action", "train", 6, backend="dali", dali_trim=True, dali_pack=pack
    )
    pyav = loader_batches(vp9_bench, "tgif_action", "train", 6, backend="pyav")
    assert failed and all(x["bad_videos"] == [] for x in dali)  # every sample decoded on its own
    for x, y in zip(dali, pyav, strict=True):
        diff = (x["frames"] - y["frames"]) * torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)
        assert diff.abs().mean() < 2.0


def _qa_set(root: Path, videos: dict[str, str]) -> None:
    """An msrvtt_qa val split under `root`, one question per video id; videos: id -> written path."""
    import json

    (root / "annotations").mkdir()
    with open(root / "annotations" / "msrvtt_qa_val.jsonl", "w") as f:
        for name in videos:
            f.write(json.dumps({"question": "what", "answer": "x", "video_id": name}) + "\n")
    (root / "annotations" / "msrvtt_qa_ans2label.json").write_text('{"x": 0}')


@pytest.mark.timeout(60)  # a pipeline left waiting would hang the next iteration: fail instead
@pytest.mark.parametrize("trim", [False, True])
def test_dali_loader_starts_clean_after_an_abandoned_iteration(tmp_path, trim):
    # Breaking out of `for batch in loader` leaves the next batch scheduled in DALI; its frames came out as
    # the next iteration's first batch, and every batch after it was one behind.
    (tmp_path / "videos").mkdir()
    lengths = {"a": 20, "b": 35, "c": 50, "d": 65}  # other lengths, other sampled frames
    _qa_set(
        tmp_path,
        {n: write_painted_video(tmp_path / "videos" / n, k, codec="vp9") for n, k in lengths.items()},
    )
    cfg = cfg_for(tmp_path, backend="dali", dali_trim=trim)
    dataset = build_dataset("msrvtt_qa", "val", cfg, build_tokenizer(), IMAGENET_RGB)
    loader = build_loader(dataset, cfg, 1, False, rank=0, world_size=1, device="cpu")
    expected = list(loader)
    assert [b["video_ids"] for b in expected] == [["a"], ["b"], ["c"], ["d"]]
    assert not torch.equal(expected[0]["frames"], expected[1]["frames"])  # a leftover would show
    for _ in loader:
        break
    again = list(loader)
    assert [b["video_ids"] for b in again] == [["a"], ["b"], ["c"], ["d"]]
    assert all(torch.equal(x["frames"], y["frames"]) for x, y in zip(again, expected, strict=True))
    paused = iter(loader)  # a paused iteration, closed only after a new one started
    next(paused)
    fresh = iter(loader)
    assert torch.equal(next(fresh)["frames"], expected[0]["frames"])
    paused.close()  # must leave the newer iteration's pending batch alone
    rest = list(fresh)
    assert all(torch.equal(x["frames"], y["frames"]) for x, y in zip(rest, expected[1:], strict=True))


def test_dali_frame_store_reader_matches_cpu_reader(vp9_bench, tmp_path):
    import h5py

    from clipbert.data.build_frame_store import build_frame_store

    store = tmp_path / "frames.h5"
    build_frame_store(vp9_bench / "videos", store, fps=4.0, workers=0, progress=False)
    common = dict(backend="frame_store", frame_store=str(store))
    dali = loader_batches(vp9_bench, "msrvtt_qa", "test", frame_store_reader="dali", **common)
    cpu = loader_batches(vp9_bench, "msrvtt_qa", "test", frame_store_reader="cpu", **common)
    for x, y in zip(dali, cpu, strict=True):
        diff = (x["frames"] - y["frames"]) * torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)
        assert diff.abs().mean() < 2.0
    broken = cpu[0]["video_ids"][0]
    with h5py.File(store, "a") as h5:
        jpeg = h5[f"videos/{broken}/jpeg"]
        for i in range(len(jpeg)):
            jpeg[i] = np.frombuffer(b"\xff\xd8\xff\xe0broken", dtype=np.uint8)
    cfg = cfg_for(vp9_bench, frame_store_reader="dali", max_bad_retries=0, **common)
    dataset = build_dataset("msrvtt_qa", "test", cfg, build_tokenizer(), IMAGENET_RGB)
    loader = build_loader(dataset, cfg, 3, False, rank=0, world_size=1, device="cpu")
    batch = next(iter(loader))
    assert broken not in batch["video_ids"] and any(b.startswith(broken) for b in batch["bad_videos"])
    assert batch["frames"].shape[0] == len(batch["video_ids"]) == batch["labels"].shape[0]


@pytest.mark.needs_cuda
def test_dali_gpu_matches_cpu(tmp_path):
    # NVDEC decodes VP9 from 128x128 up (the 64x48 CPU test video is refused on the GPU).
    vp9 = write_painted_video(tmp_path / "v", 40, fps=10, height=144, width=192, codec="vp9")
    indices = np.array([[[30, 31], [2, 3]]])
    gpu = DaliVideoDecoder(40, IMAGENET_RGB, 1, device="gpu").decode([read_bytes(vp9)], indices, [(144, 192)])
    cpu = DaliVideoDecoder(40, IMAGENET_RGB, 1, device="cpu").decode([read_bytes(vp9)], indices, [(144, 192)])
    assert gpu.is_cuda
    diff = (gpu.cpu() - cpu) * torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)
    assert diff.abs().mean() < 2.0, f"mean abs difference {diff.abs().mean():.2f} grey levels"


@pytest.fixture(scope="module")
def h264_bench(tmp_path_factory):
    from clipbert.data import synthetic

    out = tmp_path_factory.mktemp("h264_bench")
    synthetic.generate(out, 12, 1, codec="h264", size="tiny", workers=1)
    return out


@pytest.mark.needs_cuda
@pytest.mark.parametrize(
    "order,trim,pack", [("none", True, 1), ("frames", True, 1), ("frames", False, 1), ("frames", True, 3)]
)
def test_dali_gpu_loader_on_h264_matches_pyav(h264_bench, order, trim, pack):
    def batches(**overrides):
        cfg = cfg_for(h264_bench, **overrides)
        dataset = build_dataset("tgif_action", "train", cfg, build_tokenizer(), IMAGENET_RGB)
        loader = build_loader(dataset, cfg, 3, True, rank=0, world_size=1, device="cuda")
        loader.sampler.set_epoch(1)
        return list(loader)

    dali = batches(backend="dali", dali_pipelines=2, dali_order=order, dali_trim=trim, dali_pack=pack)
    pyav = batches(backend="pyav")
    assert len(dali) == len(pyav) > 0
    for x, y in zip(dali, pyav, strict=True):
        # Cropped 64x36 videos after the uncropped 64x48 one go to PyAV (routing.NvdecCacheGuard); nothing
        # else may be reported.
        assert x["frames"].is_cuda
        assert all("NVDEC decoder cache" in b for b in x["bad_videos"]), x["bad_videos"]
        diff = (x["frames"] - y["frames"].to(x["frames"].device)).cpu() * torch.tensor(IMAGENET_RGB.std).view(
            3, 1, 1
        )
        # NVDEC vs libavcodec H.264 and resize rounding
        assert diff.abs().mean() < 2.0, f"mean abs difference {diff.abs().mean():.2f} grey levels"


@pytest.mark.needs_cuda
def test_dali_gpu_frame_store_matches_cpu_reader(h264_bench, tmp_path):
    from clipbert.data.build_frame_store import build_frame_store

    store = tmp_path / "frames.h5"
    build_frame_store(h264_bench / "videos", store, fps=4.0, workers=0, progress=False)
    out = {}
    for reader in ("dali", "cpu"):
        cfg = cfg_for(h264_bench, backend="frame_store", frame_store=str(store), frame_store_reader=reader)
        dataset = build_dataset("msrvtt_qa", "test", cfg, build_tokenizer(), IMAGENET_RGB)
        loader = build_loader(dataset, cfg, 3, False, rank=0, world_size=1, device="cuda")
        out[reader] = list(loader)
    for x, y in zip(out["dali"], out["cpu"], strict=True):
        assert x["frames"].is_cuda
        diff = (x["frames"] - y["frames"]).cpu() * torch.tensor(IMAGENET_RGB.std).view(3, 1, 1)
        assert diff.abs().mean() < 2.0  # nvJPEG vs libjpeg-turbo
