"""Real-world media as the datasets ship it: TGIF's GIFs, DiDeMo's .3gp/.m4v/.mov/.avi mix, ActivityNet's
WebM/MKV, phone and camera quirks (audio first, a second video stream, a start time past 0, non-square
pixels), and the images of VQA and pre-training.

Each file either decodes to the frames the sampler asked for (their index is painted in), through the PyAV
decoder, the video source, the frame store builder and the transcoder alike, or is reported by name."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV is not installed")

from clipbert.data.decoders import VideoDecodeError, build_decoder  # noqa: E402
from clipbert.data.painted import paint_index, read_index, write_painted_video  # noqa: E402

X264 = {"crf": "18", "preset": "ultrafast", "bf": "2"}  # B-frames: decode order differs from display


def needs(*encoders):
    missing = [name for name in encoders if name not in av.codecs_available]
    return pytest.mark.skipif(bool(missing), reason=f"this FFmpeg cannot encode {', '.join(missing)}")


def write_video(
    path, encoder="libx264", num_frames=20, fmt=None, first_pts=0, audio_first=False, second=False
):
    """Frames 0..num_frames-1 painted with their index at 10 fps, 64x48; `first_pts` (in frames) starts the
    stream later; `audio_first` puts an AAC stream before the video; `second` adds a second, smaller video
    stream after it, painted with 1000 + k."""
    path = str(path)
    with av.open(path, "w", format=fmt) as container:
        audio = container.add_stream("aac", rate=16000) if audio_first else None
        stream = container.add_stream(encoder, rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = X264 if encoder == "libx264" else {}
        other = container.add_stream("mpeg4", rate=Fraction(10)) if second else None
        if other is not None:
            other.width, other.height, other.pix_fmt = 32, 24, "yuv420p"
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(paint_index(index, 48, 64), format="rgb24")
            frame.pts = first_pts + index
            container.mux(stream.encode(frame))
            if other is not None:
                small = av.VideoFrame.from_ndarray(paint_index(1000 + index, 24, 32), format="rgb24")
                small.pts = index
                container.mux(other.encode(small))
            if audio is not None and index % 2 == 0:
                samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
                samples.sample_rate, samples.pts = 16000, index // 2 * 1024
                container.mux(audio.encode(samples))
        for s in (stream, other, audio):
            if s is not None:
                container.mux(s.encode())
    return path


def write_gif(path, delays_ms, colors=16):
    """An animated GIF as PIL (and most GIF tools) write it: palette frames, frame k painted with k and shown
    delays_ms[k] milliseconds (0: the player's default)."""
    from PIL import Image

    frames = [
        Image.fromarray(paint_index(k, 48, 64)).convert("P", palette=Image.ADAPTIVE, colors=colors)
        for k in range(len(delays_ms))
    ]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=delays_ms, loop=0)
    return str(path)


def painted(frames: np.ndarray) -> list[list[int]]:
    return [[read_index(f) for f in clip] for clip in frames]


# --- videos: each format and quirk gives the requested frames ---


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("didemo.3gp", {"encoder": "mpeg4"}),
        ("didemo.m4v", {"encoder": "mpeg4", "fmt": "ipod"}),
        ("didemo.mov", {}),
        ("activitynet.mkv", {}),
        ("audio_first.mp4", {"audio_first": True}),
        ("audio_first.mkv", {"audio_first": True}),
        ("two_video_streams.mp4", {"second": True}),  # the first video stream is the video
        ("starts_at_2_5s.mp4", {"first_pts": 25}),
        ("starts_at_2_5s.mkv", {"first_pts": 25}),
        ("starts_at_3s.webm", {"encoder": "libvpx-vp9", "first_pts": 30}),
    ],
)
def test_containers_and_stream_layouts_give_the_requested_frames(tmp_path, name, kwargs):
    # The .mkv and .webm that start after 0 were "truncated: the header declares 4.50 s, the packets cover
    # 2.00 s": Matroska's declared duration is its end time, and the probe compared it to a duration.
    if kwargs.get("encoder") == "libvpx-vp9" and "libvpx-vp9" not in av.codecs_available:
        pytest.skip("this FFmpeg cannot encode libvpx-vp9")
    path = write_video(tmp_path / name, **kwargs)
    decoder = build_decoder("pyav")
    info = decoder.probe(path)
    assert (info.num_frames, info.fps, info.height, info.width) == (20, 10.0, 48, 64)
    indices = np.array([[0, 19, 10], [1, 18, 5]])
    assert painted(decoder.decode(path, indices)) == indices.tolist()


@needs("libvpx-vp9")
def test_a_cut_off_webm_that_starts_after_0_is_still_truncated(tmp_path):
    path = write_video(tmp_path / "late.webm", "libvpx-vp9", num_frames=40, first_pts=30)  # 3 s to 7 s
    assert build_decoder("pyav").probe(path).num_frames == 40
    cut = tmp_path / "cut.webm"
    cut.write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size * 4 // 10])
    with pytest.raises(VideoDecodeError, match=r"cut\.webm: truncated: the header declares 7\.00 s"):
        build_decoder("pyav").probe(str(cut))


@needs("libx265")
def test_10_bit_hevc_and_non_square_pixels_decode_as_stored(tmp_path):
    # Non-square pixels (anamorphic DV, CIF 3GP at 12:11) are not stretched: frames come out as stored, as
    # DALI decodes them, and are resized keeping that stored shape.
    path = str(tmp_path / "camera.mkv")
    with av.open(path, "w") as container:
        stream = container.add_stream("libx265", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p10le"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        stream.options = {"x265-params": "log-level=error"}
        for index in range(12):
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(paint_index(index, 48, 64), format="rgb24"))
            )
        container.mux(stream.encode())
    with av.open(path) as container:
        assert container.streams.video[0].sample_aspect_ratio == 2
    decoder = build_decoder("pyav")
    info = decoder.probe(path)
    assert (info.num_frames, info.codec, info.height, info.width) == (12, "hevc", 48, 64)
    frames = decoder.decode(path, np.array([[11, 0, 6]]))
    assert frames.dtype == np.uint8 and painted(frames) == [[11, 0, 6]]


@pytest.mark.parametrize(
    "delays_ms, fps",
    [
        ([100] * 12, 10.0),
        ([0] * 12, 10.0),  # 0: the player's default, 100 ms (FFmpeg's GIF demuxer reads it so too)
        ([30, 70, 100, 20, 200, 50, 40, 100, 100, 60, 30, 200], 11 / 0.8),  # TGIF: per-frame delays
    ],
)
def test_tgif_style_gifs_give_frames_by_presentation_order(tmp_path, delays_ms, fps):
    path = write_gif(tmp_path / "tumblr.gif", delays_ms)
    decoder = build_decoder("pyav")
    info = decoder.probe(path)
    assert info.num_frames == 12 and info.fps == pytest.approx(fps)  # variable rate: the mean rate
    indices = np.array([[11, 0, 5, 6, 7], [1, 2, 3, 4, 10]])  # backward, forward and seeks
    frames = decoder.decode(path, indices)
    assert painted(frames) == indices.tolist()
    # palette frames: 16 colours, close to the painted frame
    assert np.abs(frames[0, 0].astype(int) - paint_index(11, 48, 64)).mean() < 10


# --- the same files through the video source, the frame store and the transcoder ---


def write_didemo_mix(folder) -> dict[str, str]:
    """One short video per suffix DiDeMo and ActivityNet ship; video id -> path."""
    folder.mkdir()
    paths = {
        "a": write_video(folder / "a.3gp", "mpeg4", 10),
        "b": write_video(folder / "b.m4v", "mpeg4", 10, fmt="ipod"),
        "c": write_video(folder / "c.mov", num_frames=10),
        "d": write_video(folder / "d.avi", "mpeg4", 10),
        "e": write_gif(folder / "e.gif", [100] * 10),
    }
    (folder / "notes.txt").write_text("not a video")
    return paths


def test_3gp_and_m4v_videos_are_found_by_training_the_frame_store_transcode_and_predict(tmp_path):
    # DiDeMo's .3gp and .m4v videos were not video files: training looked for "<id>.mp4" ("missing file"),
    # and the frame store and transcode left them out without a word.
    from clipbert.data.build_frame_store import build_frame_store
    from clipbert.data.config import DataConfig
    from clipbert.data.preprocess import IMAGENET_RGB
    from clipbert.data.transcode import main as transcode_main
    from clipbert.data.video_source import VideoSource
    from clipbert.predict.inputs import expand_inputs

    paths = write_didemo_mix(tmp_path / "videos")
    source = VideoSource(DataConfig(video_dir=str(tmp_path / "videos"), image_size=16), IMAGENET_RGB, False)
    for video_id, path in paths.items():
        assert source.key(video_id) == path
        padded, _ = source.frames(video_id, np.array([[0, 9]]))
        assert padded.shape == (1, 2, 3, 16, 16)
    result = build_frame_store(tmp_path / "videos", tmp_path / "store.h5", fps=5.0, workers=0, progress=False)
    assert sorted(result["written"]) == sorted(paths) and not result["failed"]
    assert transcode_main(["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "copies")]) == 0
    assert sorted(p.stem for p in (tmp_path / "copies").iterdir()) == sorted(paths)
    found, skipped = expand_inputs([str(tmp_path / "videos")])
    assert sorted(found) == sorted(paths.values())
    assert [Path(s.path).name for s in skipped] == ["notes.txt"]


def test_files_without_a_video_suffix_are_counted_when_building_the_store(tmp_path, caplog):
    # DiDeMo's .mpg and .wmv videos were left out of the store without a word (and of transcode, which lists
    # videos the same way); training then called each "not in the frame store".
    from clipbert.data.build_frame_store import build_frame_store

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", num_frames=4)
    for name in ("b.mpg", "c.wmv", "d.wmv", "README", ".DS_Store"):
        (videos / name).write_bytes(b"x")
    (videos / "sub").mkdir()
    with caplog.at_level("WARNING", logger="clipbert.data.build_frame_store"):
        result = build_frame_store(videos, tmp_path / "s.h5", fps=5.0, workers=0, progress=False)
    assert result["written"] == ["a"]
    assert "4 file(s) without a video suffix" in caplog.text and "1 .mpg, 2 .wmv, 1 README" in caplog.text


@needs("libvpx-vp9")
def test_transcode_reports_a_cut_off_webm_instead_of_copying_a_shorter_video(tmp_path, capsys):
    # The cut WebM decodes up to its cut without an error: its copy was a whole-looking 18-frame video that
    # no probe could flag any more, and the CLI said "transcoded 1 video(s)".
    from clipbert.data.transcode import main, transcode

    full = write_painted_video(tmp_path / "full", 40, codec="vp9")
    (tmp_path / "videos").mkdir()
    cut = tmp_path / "videos" / "cut.webm"
    cut.write_bytes(Path(full).read_bytes()[: Path(full).stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match=r"cut\.webm: truncated"):
        transcode(cut, tmp_path)
    assert main(["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "copies")]) == 1
    assert "cut.webm: VideoDecodeError" in capsys.readouterr().err
    assert list((tmp_path / "copies").iterdir()) == []  # nothing, not even a partial copy


def test_transcoded_gif_keeps_the_sources_fps_and_frames(tmp_path):
    # The copy took the container's average rate (100/9 fps for a GIF of 0-delay frames, shown at 100 ms),
    # not the decoder's: clips of clip_seconds then spanned other frames in the copy than in the source.
    from clipbert.data.transcode import transcode

    decoder = build_decoder("pyav")
    (tmp_path / "copies").mkdir()
    for name, delays in (("zero", [0] * 12), ("vfr", [30, 70, 100, 20, 200, 50, 40, 100, 100, 60, 30, 200])):
        source = write_gif(tmp_path / f"{name}.gif", delays)
        copy = transcode(source, tmp_path / "copies")
        src_info, copy_info = decoder.probe(source), decoder.probe(copy)
        assert copy_info.num_frames == src_info.num_frames == 12
        assert copy_info.fps == pytest.approx(src_info.fps, rel=1e-4), name
        assert painted(decoder.decode(copy, np.arange(12)[None])) == [list(range(12))]


def test_transcode_counts_a_timestamp_shown_twice_once_as_the_decoder_does(tmp_path):
    # Frame k of the copy must be frame k of the source: the decoder counts a repeated timestamp once, the
    # copy kept both frames, and every index past the repeat was off by one.
    from clipbert.data.transcode import transcode

    path = str(tmp_path / "dup.mkv")
    with av.open(path, "w") as container:
        stream = container.add_stream("mjpeg", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        stream.time_base = Fraction(1, 10)
        for index, pts in enumerate([0, 1, 2, 2, 3, 4, 5]):  # painted frames 2 and 3 share time 2
            frame = av.VideoFrame.from_ndarray(paint_index(index, 48, 64), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 10)
            for packet in stream.encode(frame):
                packet.pts = packet.dts = pts
                container.mux(packet)
    decoder = build_decoder("pyav")
    (tmp_path / "copies").mkdir()
    copy = transcode(path, tmp_path / "copies")
    assert decoder.probe(copy).num_frames == decoder.probe(path).num_frames == 6
    everything = np.arange(6)[None]
    assert painted(decoder.decode(copy, everything)) == painted(decoder.decode(path, everything))


@pytest.mark.parametrize("sizes", [[(48, 64)] * 4 + [(96, 128)] * 4, [(96, 128)] * 4 + [(48, 64)] * 4])
def test_transcode_rejects_a_frame_size_change_as_the_decoder_does(tmp_path, sizes):
    # The encoder cropped larger frames to the first size (frames 4.. read as garbage) or scaled smaller ones
    # up, so a video every decoder rejects became a readable copy.
    from clipbert.data.painted import write_resizing_video
    from clipbert.data.transcode import transcode

    path = write_resizing_video(tmp_path / "spliced", sizes)
    with pytest.raises(VideoDecodeError, match="frame size changes mid-stream"):
        build_decoder("pyav").decode(path, np.arange(8)[None])
    (tmp_path / "copies").mkdir()
    (h0, w0), (h1, w1) = sizes[0], sizes[-1]
    message = rf"spliced\.mkv: frame size changes mid-stream \({h0}x{w0} at frame 0, {h1}x{w1} at frame 4\)"
    with pytest.raises(VideoDecodeError, match=message):
        transcode(path, tmp_path / "copies")
    assert list((tmp_path / "copies").iterdir()) == []


# --- images ---


def test_an_exif_rotated_photo_is_read_as_stored_by_default(tmp_path):
    # data.image_orientation "stored" (the default, documented in load_image): pixels as stored, as the
    # original release's PIL Image.open(...).convert("RGB") read them; "exif" turns it upright. More
    # orientations in test_image_orientation_gif_timing.py.
    from PIL import Image

    from clipbert.data.video_source import load_image

    stored = Image.fromarray(paint_index(1234, 48, 64)).transpose(Image.Transpose.ROTATE_90)  # 64 x 48
    exif = Image.Exif()
    exif[0x0112] = 6  # a viewer turns it 90 degrees clockwise, upright again
    stored.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    padded, (h, w) = load_image(tmp_path / "phone.jpg", 64)
    assert (h, w) == (64, 48)
    shown = padded[0, 0, :, :h, :w].permute(1, 2, 0).numpy()
    assert read_index(np.rot90(shown, -1)) == 1234  # turned back by hand, it is the painted frame
    padded, (h, w) = load_image(tmp_path / "phone.jpg", 64, "exif")
    assert (h, w) == (48, 64)
    assert read_index(padded[0, 0, :, :h, :w].permute(1, 2, 0).numpy()) == 1234  # the painted frame, upright


@pytest.mark.parametrize("kind", ["png named .jpg", "webp", "progressive jpeg"])
def test_other_image_encodings_read_exactly(tmp_path, kind):
    from PIL import Image

    from clipbert.data.video_source import load_image

    image, path = Image.fromarray(paint_index(777, 48, 64)), tmp_path / "image.jpg"
    if kind == "png named .jpg":
        image.save(path, format="PNG")
    elif kind == "webp":
        path = tmp_path / "image.webp"
        image.save(path, lossless=True)
    else:
        image.save(path, progressive=True, quality=95)
    padded, hw = load_image(path, 64)
    assert hw == (48, 64)
    pixels = padded[0, 0, :, :48].permute(1, 2, 0).numpy().astype(int)
    assert read_index(pixels.astype(np.uint8)) == 777
    assert np.abs(pixels - paint_index(777, 48, 64)).mean() < (4 if kind == "progressive jpeg" else 0.5)


@pytest.mark.parametrize("kind", ["bmp", "tiff", "html saved as .jpg"])
def test_unsupported_images_are_decode_errors_naming_the_file(tmp_path, kind):
    from PIL import Image

    from clipbert.data.video_source import load_image

    path = tmp_path / {"bmp": "scan.bmp", "tiff": "scan.tif", "html saved as .jpg": "page.jpg"}[kind]
    if kind == "html saved as .jpg":
        path.write_text("<html>404 not found</html>")
    else:
        Image.fromarray(paint_index(1, 48, 64)).save(path)
    with pytest.raises(VideoDecodeError, match=rf"{path.name}: undecodable image"):
        load_image(path, 64)


def test_a_video_id_written_with_its_extension_names_its_file(tmp_path):
    # annotation files of other sources write "video7.mp4" as the id: looked up as video7.mp4.mp4, every
    # such video was a missing file
    from clipbert.data.config import DataConfig
    from clipbert.data.preprocess import IMAGENET_RGB
    from clipbert.data.video_source import VideoSource

    paths = write_didemo_mix(tmp_path / "videos")
    source = VideoSource(DataConfig(video_dir=str(tmp_path / "videos"), image_size=16), IMAGENET_RGB, False)
    for path in paths.values():
        assert source.key(Path(path).name) == path
        assert source.frames(Path(path).name, np.array([[0, 9]]))[0].shape == (1, 2, 3, 16, 16)
    assert source.key("absent.webm") == str(tmp_path / "videos" / "absent.webm.mp4")  # named as missing
