"""PyAV decoding returns exactly the requested frames; pre-processing matches a float64 reference."""

import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest

# PyAV is a hard dependency, but the GPU test machine runs `-m needs_cuda` without it: skip, not error.
pytest.importorskip("av", reason="PyAV is not installed")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from clipbert.data.config import DataConfig  # noqa: E402
from clipbert.data.decoders import VideoDecodeError, build_decoder  # noqa: E402
from clipbert.data.painted import (  # noqa: E402
    paint_index,
    read_index,
    write_edit_list_video,
    write_painted_video,
    write_resizing_video,
    write_vfr_video,
)
from clipbert.data.preprocess import (  # noqa: E402
    CAFFE_BGR,
    IMAGENET_RGB,
    Normalization,
    normalization_for,
    preprocess_frames,
    resized_hw,
)


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    root = tmp_path_factory.mktemp("painted")
    return {
        codec: write_painted_video(root / f"v_{codec}", 75, fps=10, codec=codec)
        for codec in ("h264", "vp9", "mjpeg")
    }


def read_indices(frames: np.ndarray) -> np.ndarray:
    return np.array([[read_index(f) for f in clip] for clip in frames])


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_pyav_returns_exactly_the_requested_frames(painted, codec):
    decoder = build_decoder("pyav")
    info = decoder.probe(painted[codec])
    assert (info.num_frames, info.fps) == (75, 10.0)
    rng = np.random.default_rng(0)
    cases = [
        np.array([[0, 74]]),
        np.array([[74, 0], [3, 3]]),
        np.array([[40, 41, 42]]),
    ]  # edges, backwards, run
    cases += [rng.integers(0, 75, size=(3, 2)) for _ in range(6)]
    for indices in cases:
        frames = decoder.decode(painted[codec], indices)
        assert frames.shape == (*indices.shape, 48, 64, 3) and frames.dtype == np.uint8
        np.testing.assert_array_equal(read_indices(frames), indices)


@pytest.mark.parametrize("codec", ["gif", "vp9", "h264"])
def test_variable_frame_rate_videos_are_indexed_by_presentation_order(tmp_path, codec):
    # GIF delays and phone recordings vary; frame k is the k-th shown, as DALI and trim.py count. Indexing by
    # round(pts * fps) left holes ("frame 1 not found by its timestamp") and reported such videos bad.
    delays = [50, 150, 100, 200, 30] * 9  # ms; 45 frames, so the decoder also seeks (SEEK_GAP_FRAMES)
    path = write_vfr_video(tmp_path / "vfr", delays, codec)
    decoder = build_decoder("pyav")
    info = decoder.probe(path)
    assert info.num_frames == 45 and info.codec == codec
    assert info.fps == pytest.approx(44 / (sum(delays[:-1]) / 1000))  # the mean rate, not the nominal 10
    rng = np.random.default_rng(1)
    cases = [np.array([[0, 44]]), np.array([[44, 1], [2, 2]]), np.arange(45)[None]]
    cases += [rng.integers(0, 45, size=(3, 2)) for _ in range(4)]
    for indices in cases:
        np.testing.assert_array_equal(read_indices(decoder.decode(path, indices)), indices)


def test_constant_rate_videos_keep_the_time_clock(painted, tmp_path):
    # The rank table is only for variable-rate videos; constant-rate ones index by time (no table kept).
    decoder = build_decoder("pyav")
    gif = write_vfr_video(tmp_path / "cfr", [100] * 12, "gif")
    for path in (painted["h264"], painted["vp9"], gif):
        assert decoder._probe_cached(path)[1].table is None
    assert decoder.probe(gif).fps == 10.0
    np.testing.assert_array_equal(read_indices(decoder.decode(gif, np.array([[11, 3]]))), [[11, 3]])


def test_edit_list_videos_count_only_the_shown_frames(tmp_path):
    # The first 5 packets come before the edit list's start (discard-flagged): decoded, never shown. Frame k
    # is the k-th shown one, and the header's 30 would over-count.
    path = write_edit_list_video(tmp_path / "edit", 30, hidden=5)
    decoder = build_decoder("pyav")
    assert decoder.probe(path).num_frames == 25
    got = read_indices(decoder.decode(path, np.array([[0, 1], [10, 24]])))
    np.testing.assert_array_equal(got, [[5, 6], [15, 29]])


def test_av1_is_named_by_its_codec_not_its_decoder(tmp_path):
    # PyAV decodes AV1 with libdav1d; routing (NVDEC's list, its minimum sizes, coded block size) needs "av1".
    import av

    path = str(tmp_path / "a.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("libsvtav1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(3):
            frame = av.VideoFrame.from_ndarray(paint_index(index, 64, 64), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert build_decoder("pyav").probe(path).codec == "av1"


# What a player shows: FFmpeg's CLI turns a display rotation of -90 (a phone's portrait recording, tkhd matrix
# (0, 1, 0, -1, 0, 0, 0, 0, 1)) 90 degrees clockwise ("transpose=clock"), and +90 counterclockwise.
SHOWN = {-90: lambda f: np.rot90(f, -1), 90: lambda f: np.rot90(f, 1), 180: lambda f: f[::-1, ::-1]}


@pytest.mark.parametrize("codec, rotation", [("h264", -90), ("vp9", 90), ("h264", 180)])
def test_rotated_videos_decode_upright_at_their_displayed_size(tmp_path, codec, rotation):
    # Every backend decoded such videos sideways, and resize/pad fitted the stored size, not the shown one.
    path = write_painted_video(tmp_path / "rot", 12, codec=codec, rotation=rotation)
    decoder = build_decoder("pyav")
    info = decoder.probe(path)
    shown_hw = (48, 64) if rotation == 180 else (64, 48)
    assert (info.height, info.width) == shown_hw
    indices = np.array([[0, 5], [11, 7]])
    frames = decoder.decode(path, indices)
    assert frames.shape == (2, 2, *shown_hw, 3) and frames.flags.c_contiguous
    for frame, index in zip(frames.reshape(-1, *shown_hw, 3), indices.ravel()):
        assert np.abs(frame.astype(int) - SHOWN[rotation](paint_index(index, 48, 64))).mean() < 6
    assert info.rotation == rotation % 360  # degrees counterclockwise, for DALI's routing


def test_transcoded_copy_of_a_rotated_video_is_upright(tmp_path):
    from clipbert.data.transcode import transcode

    # the copy has no display matrix: its frames must be stored as shown
    (tmp_path / "out").mkdir()
    copy = transcode(write_painted_video(tmp_path / "rot", 6, codec="h264", rotation=-90), tmp_path / "out")
    decoder = build_decoder("pyav")
    info = decoder.probe(copy)
    assert (info.height, info.width) == (64, 48)
    frame = decoder.decode(copy, np.array([[3]]))[0, 0]
    assert np.abs(frame.astype(int) - SHOWN[-90](paint_index(3, 48, 64))).mean() < 6


@pytest.mark.parametrize("container", ["webm", "mkv"])
@pytest.mark.parametrize("keep", [0.3, 0.6])
def test_a_cut_off_matroska_video_is_truncated_not_shorter(tmp_path, container, keep):
    # Matroska counts no frames (stream.frames == 0), so the frame-count check never fired and a cut-off
    # download was read as a shorter video. The header's 4 s duration gives it away.
    if container == "webm":
        path = write_painted_video(tmp_path / "full", 40, codec="vp9")
    else:
        path = write_resizing_video(tmp_path / "full", [(48, 64)] * 40)  # MJPEG in .mkv
    decoder = build_decoder("pyav")
    assert decoder.probe(path).num_frames == 40  # whole, it is not flagged
    data = Path(path).read_bytes()
    cut = tmp_path / f"cut.{container}"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VideoDecodeError, match=r"truncated: the header declares 4\.00 s, the packets cover"):
        decoder.probe(str(cut))


def test_whole_webm_videos_with_a_longer_audio_track_or_a_variable_rate_are_not_truncated(tmp_path):
    import av

    # The container's 5 s duration is the audio's; the video track's own DURATION tag says 2 s.
    if "libopus" not in av.codecs_available:
        pytest.skip("this FFmpeg has no Opus encoder")
    path = str(tmp_path / "audio.webm")
    with av.open(path, "w") as container:
        video = container.add_stream("libvpx-vp9", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("libopus", rate=48000)
        for index in range(20):
            container.mux(
                video.encode(av.VideoFrame.from_ndarray(paint_index(index, 48, 64), format="rgb24"))
            )
        container.mux(video.encode())
        for k in range(250):  # 5 s of 20 ms silence
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = 48000, k * 960
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    decoder = build_decoder("pyav")
    assert decoder.probe(path).num_frames == 20
    vfr = write_vfr_video(tmp_path / "vfr", [50, 150, 100, 200, 2000], "vp9")  # the last frame shown 2 s
    assert decoder.probe(vfr).num_frames == 5


def test_probe_cache_is_lru_within_its_byte_budget(painted, tmp_path):
    from clipbert.data.decoders.pyav import PyAVDecoder, _entry_bytes

    # room for the H.264 and VP9 entries (each with its key frames' table), not for a third
    sizes = [_entry_bytes(PyAVDecoder()._probe_cached(painted[codec])) for codec in ("h264", "vp9")]
    decoder = PyAVDecoder(probe_cache_bytes=sum(sizes))
    decoder.probe(painted["h264"])
    decoder.probe(painted["vp9"])
    decoder.probe(painted["h264"])  # used again: now the most recent
    decoder.probe(painted["mjpeg"])
    assert list(decoder._probes) == [painted["h264"], painted["mjpeg"]]
    vfr = write_vfr_video(tmp_path / "vfr", [50, 150] * 50, "gif")
    decoder.probe(vfr)  # its table alone exceeds the budget: it stays, alone
    # its 100 timestamps and its one key frame (a GIF flags its first frame only)
    assert list(decoder._probes) == [vfr] and decoder._cache_bytes == PyAVDecoder.ENTRY_BYTES + 100 * 8 + 8


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_pyav_threads_do_not_change_the_frames(painted, codec):
    indices = np.array([[60, 2], [31, 30]])  # backwards seeks: frame threading must flush correctly
    one = build_decoder("pyav", pyav_threads=1).decode(painted[codec], indices)
    auto = build_decoder("pyav", pyav_threads=0).decode(painted[codec], indices)
    np.testing.assert_array_equal(one, auto)
    np.testing.assert_array_equal(read_indices(one), indices)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        build_decoder("pyav", pyav_threads=-1)
    with pytest.raises(ValueError, match="pyav_threads"):
        DataConfig(pyav_threads=-1)


def test_pyav_pixels_are_close_to_the_painted_frames(painted):
    frames = build_decoder("pyav").decode(painted["mjpeg"], np.array([[5, 9]]))
    for frame, index in zip(frames[0], (5, 9)):
        assert np.abs(frame.astype(int) - paint_index(index, 48, 64)).mean() < 6  # codec loss only


def test_pyav_rejects_out_of_range_indices(painted):
    with pytest.raises(ValueError, match=r"outside 0\.\.74"):
        build_decoder("pyav").decode(painted["h264"], np.array([[0, 75]]))


def test_pyav_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(VideoDecodeError, match="missing file"):
        build_decoder("pyav").probe(str(tmp_path / "nope.mp4"))


def test_pyav_frame_size_change_mid_stream_is_a_decode_error_naming_the_file(tmp_path):
    path = write_resizing_video(tmp_path / "resized", [(32, 48)] * 3 + [(48, 64)] * 2)
    decoder = build_decoder("pyav")
    frames = decoder.decode(path, np.array([[0, 2]]))  # wanted frames of one size decode as usual
    assert frames.shape == (1, 2, 32, 48, 3) and read_indices(frames).tolist() == [[0, 2]]
    # a VideoDecodeError (the video is replaced), not np.stack's bare ValueError (the worker dies)
    message = r"resized\.mkv: frame size changes mid-stream \(32x48 at frame 1, 48x64 at frame 4\)"
    with pytest.raises(VideoDecodeError, match=message):
        decoder.decode(path, np.array([[4, 1]]))


def reference_preprocess(frames: np.ndarray, size: int, norm: Normalization) -> np.ndarray:
    """float64 reference of resize (antialiased bilinear, rounded) -> normalize -> zero-pad."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).double()
    h, w = resized_hw(frames.shape[1], frames.shape[2], size)
    x = (
        F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        .round()
        .clamp(0, 255)
    )
    x = x.numpy()
    if norm.channel_order == "BGR":
        x = x[:, ::-1]
    x = (x - np.array(norm.mean).reshape(1, 3, 1, 1)) / np.array(norm.std).reshape(1, 3, 1, 1)
    out = np.zeros((len(frames), 3, size, size))
    out[:, :, :h, :w] = x
    return out


@pytest.mark.parametrize("norm", [IMAGENET_RGB, CAFFE_BGR])
@pytest.mark.parametrize("shape, size", [((2, 21, 37, 3), 29), ((1, 40, 24, 3), 40), ((3, 17, 17, 3), 23)])
def test_preprocess_matches_float64_reference(norm, shape, size):
    frames = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    got = preprocess_frames(frames, size, norm)
    assert got.shape == (shape[0], 3, size, size) and got.dtype == torch.float32
    want = reference_preprocess(frames, size, norm)
    grey_levels = np.abs(got.double().numpy() - want) * np.array(norm.std).reshape(1, 3, 1, 1)
    # torch's uint8 resampling uses fixed-point weights: at most one grey level off the float64 result.
    assert grey_levels.max() <= 1.0 + 1e-4
    assert grey_levels.mean() < 0.2
    h, w = resized_hw(shape[1], shape[2], size)
    assert (got[:, :, h:, :] == 0).all() and (got[:, :, :, w:] == 0).all()  # zero-padded right and bottom


def test_preprocess_without_resize_is_exact():
    frames = np.random.default_rng(2).integers(0, 256, size=(2, 9, 13, 3), dtype=np.uint8)
    got = preprocess_frames(frames, 13, CAFFE_BGR).double().numpy()
    np.testing.assert_allclose(got, reference_preprocess(frames, 13, CAFFE_BGR), rtol=1e-6, atol=1e-5)


def test_normalization_for_reads_the_model_config():
    cfg = types.SimpleNamespace(pixel_mean=(1.0, 2.0, 3.0), pixel_std=(4.0, 5.0, 6.0), channel_order="BGR")
    assert normalization_for(cfg) == Normalization((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), "BGR")
    with pytest.raises(ValueError, match="pixel_std"):
        normalization_for(types.SimpleNamespace(pixel_mean=(1, 2, 3), pixel_std=None, channel_order="RGB"))
    with pytest.raises(ValueError, match="channel_order"):
        Normalization((0, 0, 0), (1, 1, 1), "GBR")


def test_normalization_for_model_presets():
    from clipbert.models.config import ClipBertConfig

    for style, want in (("torchvision", IMAGENET_RGB), ("msra", CAFFE_BGR)):
        cfg = ClipBertConfig.from_preset("tiny", backbone_style=style)
        assert normalization_for(cfg) == want


def test_transcoded_copy_keeps_frame_indices_and_downscales(painted, tmp_path):
    from clipbert.data.transcode import transcode

    copy = transcode(painted["vp9"], tmp_path, max_side=32, gop=4)
    decoder = build_decoder("pyav")
    info = decoder.probe(copy)
    assert (info.num_frames, info.fps, info.codec, info.width, info.height) == (75, 10.0, "h264", 32, 24)
    indices = np.array([[0, 13], [74, 40]])
    np.testing.assert_array_equal(read_indices(decoder.decode(copy, indices)), indices)


def test_transcode_cli_skips_a_bad_video_and_resumes(painted, tmp_path, capsys):
    import shutil

    from clipbert.data.transcode import main

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    shutil.copy(painted["vp9"], src / "good.webm")
    (src / "bad.mp4").write_bytes(Path(painted["vp9"]).read_bytes()[:300])  # truncated: no frame decodes
    assert main(["--videos", str(src), "--out", str(out), "--max-side", "32"]) == 1  # it stopped at bad.mp4
    err = capsys.readouterr().err
    assert "1 video(s) could not be transcoded and were skipped" in err and "bad.mp4" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.mp4"]  # no partial file left behind
    stamp = (out / "good.mp4").stat().st_mtime_ns
    main(["--videos", str(src), "--out", str(out), "--max-side", "32"])
    assert "1 of 2 already transcoded" in capsys.readouterr().out
    assert (out / "good.mp4").stat().st_mtime_ns == stamp


def test_collate_rejects_items_with_different_text_counts():
    from clipbert.data.collate import Collator

    item = dict(index=0, video_id="v", bad_videos=[], frames=torch.zeros(1, 1, 3, 2, 2), frames_hw=(2, 2))
    with pytest.raises(ValueError, match=r"different numbers of texts M: \[1, 2\]"):
        Collator()([dict(item, input_ids=[[101, 102]]), dict(item, input_ids=[[101, 102], [101, 7, 102]])])
    batch = Collator()(
        [dict(item, input_ids=[[101, 102]], labels=1), dict(item, input_ids=[[101, 5, 102]], labels=0)]
    )
    assert batch["input_ids"].tolist() == [[[101, 102, 0]], [[101, 5, 102]]]
    assert batch["attention_mask"].tolist() == [[[1, 1, 0]], [[1, 1, 1]]]


def test_normalize_padded_zeroes_each_samples_own_padding():
    from clipbert.data.preprocess import normalize_padded, resize_pad

    rng = np.random.default_rng(3)
    shapes = [(2, 30, 20, 3), (2, 12, 31, 3)]  # portrait and landscape: different padding per sample
    padded, hws, refs = [], [], []
    for shape in shapes:
        frames = rng.integers(0, 256, size=shape, dtype=np.uint8)
        x, hw = resize_pad(frames, 25)
        assert x.dtype == torch.uint8 and x.shape == (2, 3, 25, 25)
        padded.append(x)
        hws.append(hw)
        refs.append(reference_preprocess(frames, 25, CAFFE_BGR))
    batch = normalize_padded(torch.stack(padded), torch.tensor(hws), CAFFE_BGR)  # [B=2, F=2, 3, 25, 25]
    assert hws == [(25, 17), (10, 25)]
    assert np.abs(batch.double().numpy() - np.stack(refs)).max() <= 1.0 + 1e-4  # CAFFE std 1: grey levels
    assert (batch[0, ..., 17:] == 0).all() and (batch[1, ..., 10:, :] == 0).all()


def test_frames_missing_at_the_end_repeat_the_last_frame_within_tolerance(painted):
    decoder = build_decoder("pyav")
    info, clock = decoder._probe_cached(painted["h264"])
    over_counted = dataclasses.replace(info, num_frames=80)  # the header over-counts by 5
    decoder._probes[painted["h264"]] = (over_counted, clock)
    np.testing.assert_array_equal(
        read_indices(decoder.decode(painted["h264"], np.array([[70, 76]]))), [[70, 74]]
    )
    with pytest.raises(VideoDecodeError, match="frame 77 missing: stream ends at frame 74"):
        decoder.decode(painted["h264"], np.array([[10, 77]]))
