"""dali_pipelines/trim.py: the packets kept for a sample's frames, and exact frames after the cut."""

import io
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipbert.data.decoders import VideoDecodeError
from clipbert.data.painted import read_index, write_painted_video
from dali_pipelines.trim import (
    EDGE_TOLERANCE_FRAMES,
    is_clean_start,
    is_disposable,
    is_random_access,
    nal_length_size,
    plan_runs,
    trim_video,
)


def spans(runs):
    """Runs without gaps, as (first, last) decode positions."""
    assert all(run == list(range(run[0], run[-1] + 1)) for run in runs), runs
    return [(run[0], run[-1]) for run in runs]


def test_runs_start_at_the_key_frame_before_each_wanted_frame_and_merge():
    pts = list(range(12))
    keys = [i % 4 == 0 for i in range(12)]  # key frames at 0, 4, 8
    runs, at = plan_runs(pts, keys, np.array([1, 9]))
    assert spans(runs) == [(0, 1), (8, 9)] and at.tolist() == [1, 3]
    runs, at = plan_runs(pts, keys, np.array([[5, 2], [6, 2]]))  # overlapping runs merge, order kept
    assert spans(runs) == [(0, 2), (4, 6)] and at.tolist() == [4, 2, 5, 2]
    runs, _ = plan_runs(pts, keys, np.array([3, 4]))  # runs that touch merge too
    assert spans(runs) == [(0, 4)]


def test_b_frames_keep_their_references_decoded_earlier():
    # decode order I0 P3 B1 B2 P6 B4 B5 (pts); frame 1 (decode position 2) needs I0 and P3 before it
    pts, keys = [0, 3, 1, 2, 6, 4, 5], [True] + [False] * 6
    runs, at = plan_runs(pts, keys, np.array([1]))
    assert runs == [[0, 1, 2]] and at.tolist() == [2]


def test_open_gop_leading_pictures():
    # GOP 1: I0 P3 B1 B2 P6 B4 B5; open GOP 2: I9 B7 B8 P12 B10 B11 (B7, B8: shown before I9, decoded after)
    pts = [0, 3, 1, 2, 6, 4, 5, 9, 7, 8, 12, 10, 11]
    keys = [True] + [False] * 6 + [True] + [False] * 5
    runs, at = plan_runs(pts, keys, np.array([7]))  # a leading picture needs GOP 1: start a key frame earlier
    assert runs == [list(range(9))] and at.tolist() == [8]
    runs, at = plan_runs(pts, keys, np.array([10]))  # starts on I9 and leaves out its leading B7, B8
    assert runs == [[7, 10, 11]] and at.tolist() == [2]
    # I9 and its leading B7 both wanted: merged by start, the run begins at B7's key frame I0 (not at I9,
    # which would leave B7 out), and keeps B7's references from GOP 1
    runs, at = plan_runs(pts, keys, np.array([[7, 9]]))
    assert runs == [list(range(9))] and at.tolist() == [8, 7]
    runs, at = plan_runs(pts, keys, np.array([9, 8, 10]))  # I9, B8, B10: one run from I0 to B10
    assert runs == [list(range(12))] and at.tolist() == [7, 9, 11]


def test_only_the_first_run_may_start_on_an_open_key_frame():
    # key frames at 0 (IDR), 12 and 24 (CRA: open, no clean start after other pictures) and 36 (IDR)
    pts, keys = list(range(48)), [i % 12 == 0 for i in range(48)]
    clean = [i in (0, 36) for i in range(48)]
    runs, at = plan_runs(pts, keys, np.array([15, 40]), clean=clean)  # CRA 12 opens the stream; IDR 36
    assert spans(runs) == [(12, 15), (36, 40)] and at.tolist() == [3, 8]
    runs, at = plan_runs(pts, keys, np.array([15, 30]), clean=clean)  # 30 continues the run from CRA 12
    assert spans(runs) == [(12, 30)] and at.tolist() == [3, 18]
    runs, _ = plan_runs(pts, keys, np.array([3, 30]), clean=clean)  # 30 from IDR 0, as part of the first run
    assert spans(runs) == [(0, 30)]
    runs, _ = plan_runs(pts, keys, np.array([3, 30]))  # every key frame clean: two runs
    assert spans(runs) == [(0, 3), (24, 30)]


def test_a_stream_without_a_leading_key_frame_decodes_from_its_first_packet():
    runs, _ = plan_runs(list(range(6)), [False, False, False, True, False, False], np.array([1, 4]))
    assert spans(runs) == [(0, 1), (3, 4)]


def test_indices_past_the_end_clamp_within_tolerance_and_fail_beyond():
    pts, keys = list(range(6)), [True, False, False, True, False, False]
    _, at = plan_runs(pts, keys, np.array([5 + EDGE_TOLERANCE_FRAMES]))
    assert at.tolist() == [2]  # the last frame: decode positions 3, 4, 5 are kept
    with pytest.raises(VideoDecodeError, match=r"clip\.mp4.*frame indices 0\.\.8 outside the 6 frames"):
        plan_runs(pts, keys, np.array([0, 6 + EDGE_TOLERANCE_FRAMES]), "clip.mp4")
    with pytest.raises(VideoDecodeError, match="outside"):
        plan_runs(pts, keys, np.array([-1]))


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.booleans(), min_size=1, max_size=40),
    data=st.data(),
)
def test_runs_cover_each_wanted_frame_from_its_key_frame(keys, data):
    n = len(keys)
    wanted = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8)))
    runs, at = plan_runs(list(range(n)), keys, wanted)
    runs = spans(runs)  # no B-frames: nothing is left out
    assert all(a[1] + 1 < b[0] for a, b in zip(runs, runs[1:], strict=False))  # disjoint, ascending, apart
    concat = [pos for first, last in runs for pos in range(first, last + 1)]
    assert [concat[k] for k in at] == wanted.tolist()  # no B-frames here: decode position = index
    for w in wanted:
        key = max([k for k in range(w + 1) if keys[k]], default=0)
        assert any(first <= key and w <= last for first, last in runs)  # decodable from its key frame
    assert all(keys[first] or first == 0 for first, _ in runs)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_runs_after_the_first_start_on_clean_key_frames(data):
    # open key frames (HEVC CRA) may start the first run only; every wanted frame stays decodable from a key
    # frame: its own run's, or the first run's start when it lies in the first run
    n = data.draw(st.integers(1, 40))
    keys = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    clean = [k and c for k, c in zip(keys, data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))]
    wanted = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8)))
    runs, at = plan_runs(list(range(n)), keys, wanted, clean=clean)
    runs = spans(runs)
    concat = [pos for first, last in runs for pos in range(first, last + 1)]
    assert [concat[k] for k in at] == wanted.tolist()
    assert keys[runs[0][0]] or runs[0][0] == 0
    assert all(clean[first] or first == 0 for first, _ in runs[1:])
    for w in wanted:
        key = max([k for k in range(w + 1) if keys[k]], default=0)
        assert any(first <= key and w <= last for first, last in runs)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_wanted_frame_is_kept_after_its_key_frame_whatever_the_reordering(data):
    # any decode order (open GOPs, B-pyramids): a wanted frame is never filtered out, and its run holds
    # every packet from the key frame it needs up to it
    n = data.draw(st.integers(1, 30))
    pts = data.draw(st.permutations(range(n)))
    keys = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    wanted = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8)))
    runs, at = plan_runs(pts, keys, wanted)
    concat = [pos for run in runs for pos in run]
    assert [pts[concat[k]] for k in at] == wanted.tolist()  # presentation rank = pts here
    assert concat == sorted(set(concat))  # runs ascend and do not overlap
    for w in wanted:
        pos = pts.index(w)
        key = max((k for k in range(pos + 1) if keys[k] and pts[k] <= w), default=0)
        run = next(run for run in runs if pos in run)
        # only the run's own leading pictures (shown before its first packet) may be left out
        assert run[0] <= key and all(p in run for p in range(key, pos + 1) if pts[p] >= pts[run[0]])


def test_unreferenced_pictures_are_left_out_unless_wanted():
    # decode order I0 P3 B1 B2 P6 B4 B5; the B-frames are referenced by nothing
    pts, keys = [0, 3, 1, 2, 6, 4, 5], [True] + [False] * 6
    runs, at = plan_runs(pts, keys, np.array([4, 2]), disposable=lambda pos: pts[pos] % 3 != 0)
    assert runs == [[0, 1, 3, 4, 5]] and at.tolist() == [4, 2]  # B1 out; B2, B4 wanted


def avcc(*nals, size=4):
    return b"".join(len(n).to_bytes(size, "big") + n for n in nals)


def test_nal_units_say_random_access_and_disposable():
    idr, non_idr, sei, b_nonref = (
        bytes([0x65, 0x88]),
        bytes([0x41, 0x9A]),
        bytes([0x06, 0x05]),
        bytes([0x01, 0x9E]),
    )
    assert is_random_access(avcc(sei, idr), "h264") and not is_random_access(avcc(sei, non_idr), "h264")
    assert is_random_access(b"\0\0\0\1" + sei + b"\0\0\1" + idr, "h264", length_size=0)  # Annex B
    assert not is_random_access(b"\0\0\1" + non_idr, "h264", length_size=0)
    # a 4-byte length that starts like a start code (0x00000195) is still a length
    long_slice = non_idr + bytes(0x195 - 2)
    assert avcc(long_slice)[:3] == b"\0\0\1" and not is_random_access(avcc(long_slice), "h264")
    assert is_random_access(avcc(idr, size=2), "h264", length_size=2)
    cra, trail = bytes([21 << 1, 1]), bytes([1 << 1, 1])  # HEVC: CRA is an IRAP picture, TRAIL_R is not
    assert is_random_access(avcc(cra), "hevc") and not is_random_access(avcc(trail), "hevc")
    assert is_random_access(b"anything", "vp9")
    assert is_disposable(avcc(sei, b_nonref, b_nonref), "h264")  # every slice has nal_ref_idc 0
    assert not is_disposable(avcc(b_nonref, non_idr), "h264") and not is_disposable(avcc(sei), "h264")
    assert not is_disposable(avcc(trail), "hevc")


def test_hevc_idr_and_bla_pictures_are_clean_starts_and_cra_pictures_are_not():
    def hevc(nal_type):  # a two-byte NAL unit header: forbidden bit, type, layer 0, temporal id 1
        return bytes([nal_type << 1, 1])

    vps, sps, pps, prefix_sei = hevc(32), hevc(33), hevc(34), hevc(39)
    for nal_type in (16, 17, 18, 19, 20):  # BLA_W_LP, BLA_W_RADL, BLA_N_LP, IDR_W_RADL, IDR_N_LP
        packet = avcc(vps, sps, pps, prefix_sei, hevc(nal_type), hevc(nal_type))  # parameter sets, 2 slices
        assert is_random_access(packet, "hevc") and is_clean_start(packet, "hevc")
        assert is_clean_start(b"\0\0\0\1" + vps + b"\0\0\1" + hevc(nal_type), "hevc", length_size=0)
    cra = avcc(vps, sps, pps, hevc(21))
    assert is_random_access(cra, "hevc") and not is_clean_start(cra, "hevc")
    for nal_type in (0, 1, 8, 9):  # TRAIL_N, TRAIL_R, RASL_N, RASL_R
        assert not is_clean_start(avcc(hevc(nal_type)), "hevc")
    idr, non_idr = bytes([0x65, 0x88]), bytes([0x41, 0x9A])
    assert is_clean_start(avcc(idr), "h264") and not is_clean_start(avcc(non_idr), "h264")
    assert is_clean_start(b"anything", "vp9")


def test_nal_length_size_comes_from_the_codec_record():
    assert nal_length_size("h264", bytes([1, 0x4D, 0x40, 0x0D, 0xFF, 0xE1])) == 4
    assert nal_length_size("h264", bytes([1, 0x4D, 0x40, 0x0D, 0xFD, 0xE1])) == 2
    assert nal_length_size("h264", b"\0\0\0\1\x67") == 0 and nal_length_size("h264", None) == 0
    hvcc = bytearray(23)
    hvcc[0], hvcc[21] = 1, 0x0F
    assert nal_length_size("hevc", bytes(hvcc)) == 4


def decode_all(data: np.ndarray) -> list[np.ndarray]:
    """Every frame of an in-memory video, in the order the decoder gives them out, as DALI counts them; that
    must be presentation order."""
    with av.open(io.BytesIO(data.tobytes())) as container:
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    pts = [p for p, _ in frames]
    assert pts == sorted(pts), f"decoded out of presentation order: {pts}"
    return [frame for _, frame in frames]


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])  # h264 with 2 B-frames
def test_trimmed_video_holds_exactly_the_wanted_frames(tmp_path, codec):
    path = write_painted_video(tmp_path / "v", 90, fps=30, height=48, width=64, codec=codec, gop=12)
    rng = np.random.default_rng(0)
    for _ in range(8):
        indices = rng.integers(0, 90, size=(4, 2))  # unsorted, may repeat
        data, new = trim_video(path, indices)
        assert new.shape == indices.shape and new.dtype == np.int32
        frames = decode_all(data)
        got = np.array([read_index(frames[i]) for i in new.ravel()]).reshape(indices.shape)
        np.testing.assert_array_equal(got, indices)
    data, new = trim_video(path, np.array([[85]]))  # a late frame: one GOP's run, not the whole video
    assert len(decode_all(data)) <= 12 and data.size < Path(path).stat().st_size / 3


def test_open_gop_h264_cuts_start_on_idr_pictures_only(tmp_path):
    # x264's open GOPs: every key frame after the first is a recovery-point I-frame with leading B-frames. The
    # container flags it as a key frame; DALI's index (and a clean start) needs an IDR picture.
    from fractions import Fraction

    from clipbert.data.painted import paint_index

    path = str(tmp_path / "open.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        x264 = "open-gop=1:keyint=12:min-keyint=12:scenecut=0:b-adapt=0"
        stream.options = {"crf": "18", "preset": "ultrafast", "bf": "2", "x264-params": x264}
        for i in range(60):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(paint_index(i, 48, 64), format="rgb24")))
        container.mux(stream.encode())
    with av.open(path) as container:
        flagged = [p for p in container.demux(video=0) if p.size and p.is_keyframe]
        assert len(flagged) > 1 and [is_random_access(bytes(p), "h264") for p in flagged].count(True) == 1
    rng = np.random.default_rng(1)
    for _ in range(6):
        indices = rng.integers(0, 60, size=(4, 2))
        data, new = trim_video(path, indices)
        frames = decode_all(data)
        got = np.array([read_index(frames[i]) for i in new.ravel()]).reshape(indices.shape)
        np.testing.assert_array_equal(got, indices)


def write_open_gop_hevc(path: str, num_frames: int) -> str:
    """x265's open GOPs: an IDR picture at frame 0, then CRA pictures every 12 frames, each with leading RASL
    pictures shown before it. Skips the test where PyAV's FFmpeg has no libx265."""
    if "libx265" not in av.codecs_available:
        pytest.skip("PyAV's FFmpeg has no libx265")
    from fractions import Fraction

    from clipbert.data.painted import paint_index

    with av.open(path, "w") as container:
        stream = container.add_stream("libx265", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        x265 = "open-gop=1:keyint=12:min-keyint=12:scenecut=0:bframes=3:b-adapt=0:log-level=error"
        stream.options = {"crf": "18", "preset": "ultrafast", "x265-params": x265}
        for i in range(num_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(paint_index(i, 48, 64), format="rgb24")))
        container.mux(stream.encode())
    return path


def test_open_gop_hevc_cut_keeps_a_wanted_cra_and_its_leading_pictures(tmp_path):
    path = write_open_gop_hevc(str(tmp_path / "open_hevc.mp4"), 36)
    # CRA 12 with its leading 9..11, CRA 24 with its leading 22: each cut was a KeyError when runs were
    # merged in decode order (the CRA first, its leading pictures then filtered out)
    for indices in ([[9, 12]], [[12, 10], [11, 25]], [[22, 24]], [[3, 33]]):
        data, new = trim_video(path, np.array(indices))
        frames = decode_all(data)
        assert [read_index(frames[i]) for i in new.ravel()] == np.ravel(indices).tolist()


def test_open_gop_hevc_runs_after_the_first_start_on_idr_pictures(tmp_path):
    # A run starting on a CRA after other pictures continued their picture order count: runs at frames 0-3
    # and 192-200 of this video came out of FFmpeg's decoder as frames 0, 1, 2, 192, 3, 4, ... (frames far
    # apart in the file: the count's low bits wrap every 256 pictures).
    path = write_open_gop_hevc(str(tmp_path / "open_hevc.mp4"), 240)
    with av.open(path) as container:
        stream = container.streams.video[0]
        size = nal_length_size("hevc", stream.codec_context.extradata)
        flagged = [bytes(p) for p in container.demux(stream) if p.size and p.is_keyframe]
    assert is_clean_start(flagged[0], "hevc", size)  # the IDR picture at frame 0
    assert len(flagged) == 20 and not any(is_clean_start(p, "hevc", size) for p in flagged[1:])  # CRAs
    for indices in ([[3, 200]], [[3, 150], [40, 201]], [[100, 235]], [[130, 131]]):
        data, new = trim_video(path, np.array(indices))
        frames = decode_all(data)  # in the decoder's output order
        assert [read_index(frames[i]) for i in new.ravel()] == np.ravel(indices).tolist()
    data, _ = trim_video(path, np.array([[130, 131]]))  # one run: it may start on the CRA at 120
    assert len(decode_all(data)) <= 24


def test_dali_cpu_decodes_the_trimmed_frames_exactly(tmp_path):
    pytest.importorskip("nvidia.dali")
    from clipbert.data.preprocess import IMAGENET_RGB
    from dali_pipelines.video import DaliVideoDecoder

    path = write_painted_video(tmp_path / "v", 80, fps=10, height=48, width=64, codec="vp9", gop=10)
    indices = np.array([[[71, 72], [3, 4]], [[40, 45], [40, 46]]])
    cut = [trim_video(path, ix) for ix in indices]
    decoder = DaliVideoDecoder(64, IMAGENET_RGB, 2, device="cpu", order="frames")
    out = decoder.decode([d for d, _ in cut], np.stack([n for _, n in cut]), [(48, 64)] * 2)
    mean, std = np.array(IMAGENET_RGB.mean), np.array(IMAGENET_RGB.std)
    rgb = out.permute(0, 1, 2, 4, 5, 3).numpy() * std + mean  # [B, N, T, L, L, 3], 0..255
    content = np.clip(rgb[..., :48, :, :], 0, 255).round().astype(np.uint8)  # 48 rows; padding below
    got = np.vectorize(lambda b, n, t: read_index(content[b, n, t]))(*np.indices(indices.shape))
    np.testing.assert_array_equal(got, indices)


def test_a_cut_that_does_not_remux_sends_the_whole_file(tmp_path, monkeypatch):
    from dali_pipelines import trim

    path = write_painted_video(tmp_path / "v", 30, codec="vp9")

    def refuse(*args):
        raise ValueError("muxer refuses these packets")

    monkeypatch.setattr(trim, "mux_runs", refuse)
    indices = np.array([[25, 3]])
    data, new = trim_video(path, indices)
    assert data.tobytes() == Path(path).read_bytes() and new.tolist() == [[25, 3]] and new.dtype == np.int32


def test_unreadable_files_raise_naming_the_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoDecodeError, match="bad.mp4: cannot open container"):
        trim_video(str(bad), np.array([0]))
    with pytest.raises(VideoDecodeError, match="missing.mp4: missing file"):
        trim_video(str(tmp_path / "missing.mp4"), np.array([0]))
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(VideoDecodeError, match="empty.mp4: empty file"):
        trim_video(str(tmp_path / "empty.mp4"), np.array([0]))
    audio = str(tmp_path / "audio.mkv")
    with av.open(audio, "w") as container:  # a container with no video stream
        stream = container.add_stream("mp2", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoDecodeError, match="audio.mkv.*no video stream"):
        trim_video(audio, np.array([0]))
