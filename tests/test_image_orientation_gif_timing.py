"""Images with data.image_orientation "exif" come out upright (EXIF orientation applied, as viewers and
DALI's image decoder show them), with "stored" (the default) as stored; a GIF's frames are timed as browsers
and FFmpeg's documented GIF demuxer show them (a delay under 20 ms is shown for 100 ms), in the PyAV
decoder, the frame store and transcode alike."""

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from clipbert.data.config import DataConfig
from clipbert.data.decoders.pyav import PyAVDecoder
from clipbert.data.painted import paint_index, read_index
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.data.video_source import VideoSource, load_image

H, W = 48, 64
ORIENTATION = 0x0112  # the EXIF tag


def _exif_photo(path, index: int, orientation: int) -> np.ndarray:
    """Save `path` (JPEG or PNG by suffix) with `index` painted upright, stored as a camera stores it:
    turned so that applying `orientation` makes it upright again. Returns the upright picture [H, W, 3]."""
    upright = Image.fromarray(paint_index(index, H, W))
    # exif_transpose's inverse: the stored pixels a viewer turns back into `upright`
    undo = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    stored = upright.transpose(undo[orientation])
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    kwargs = {"quality": 95} if path.suffix == ".jpg" else {}
    stored.save(path, exif=exif.tobytes(), **kwargs)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert shown.shape == (H, W, 3) and read_index(shown) == index  # the file is what a viewer shows upright
    return shown


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_an_exif_oriented_photo_is_loaded_upright_as_a_viewer_shows_it(tmp_path, orientation, suffix):
    # "exif": a phone's portrait photo was read as stored, on its side (6, 8) or upside down (3), unlike what
    # any viewer and DALI's fn.decoders.image (adjust_orientation=True by default) show.
    path = tmp_path / f"phone{suffix}"
    shown = _exif_photo(path, 1234 + orientation, orientation)
    padded, hw = load_image(path, W, "exif")  # uint8 [1, 1, 3, L, L]
    assert tuple(hw) == (H, W)
    content = padded[0, 0, :, :H, :W].permute(1, 2, 0).numpy()
    assert read_index(content) == 1234 + orientation
    assert np.abs(content.astype(int) - shown).mean() < 2  # JPEG: pixels as PIL decodes them, within rounding
    # "stored", the default: the pixels as the original release's PIL Image.open read them
    as_stored = np.asarray(Image.open(path).convert("RGB"))
    padded, hw = load_image(path, W)
    assert tuple(hw) == as_stored.shape[:2]
    content = padded[0, 0, :, : hw[0], : hw[1]].permute(1, 2, 0).numpy()
    assert np.abs(content.astype(int) - as_stored).mean() < 2


def test_image_orientation_is_validated_by_name():
    with pytest.raises(ValueError, match="image_orientation must be one of stored, exif; got 'upright'"):
        DataConfig(image_orientation="upright")
    with pytest.raises(ValueError, match="orientation must be 'stored' or 'exif'"):
        load_image("any.jpg", W, "upright")


@pytest.mark.parametrize("orientation", ["stored", "exif"])
def test_the_image_datasets_read_data_image_orientation(tmp_path, tokenizer, orientation):
    import json

    from clipbert.data.datasets import build_dataset

    upright = _exif_photo(tmp_path / "phone.jpg", 77, 8)
    shown = (
        upright if orientation == "exif" else np.asarray(Image.open(tmp_path / "phone.jpg").convert("RGB"))
    )
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "vqa_ans2label.json").write_text('{"red": 0}')
    row = {"question_id": 1, "question": "what color", "file": "phone.jpg", "answers": ["red"] * 10}
    (ann / "vqa_val.jsonl").write_text(json.dumps(row) + "\n")
    cfg = DataConfig(ann_dir=str(ann), image_root=str(tmp_path), image_size=W, image_orientation=orientation)
    item = build_dataset("vqa", "val", cfg, tokenizer, IMAGENET_RGB)[(0, 0)]
    h, w = shown.shape[:2]
    content = item["frames"].reshape(3, W, W)[:, :h, :w].permute(1, 2, 0).numpy()  # uint8 [h, w, 3]
    assert np.abs(content.astype(int) - shown).mean() < 2


@pytest.mark.parametrize("orientation", ["stored", "exif"])
def test_predict_images_are_oriented_as_the_image_datasets_load_them(tmp_path, orientation):
    from types import SimpleNamespace

    from clipbert.data.loader import finish_frames
    from clipbert.predict.cli import _loader

    path = tmp_path / "phone.jpg"
    upright = _exif_photo(path, 2025, 6)
    shown = upright if orientation == "exif" else np.asarray(Image.open(path).convert("RGB"))
    h, w = shown.shape[:2]
    run = SimpleNamespace(unit="image", data=DataConfig(image_size=W, image_orientation=orientation))
    predictor = SimpleNamespace(run=run, norm=IMAGENET_RGB, device=torch.device("cpu"))
    frames = _loader(predictor)(str(path))  # float32 [1, 1, 1, 3, L, L], as predict reads the image
    expected = torch.zeros(1, 1, 1, 3, W, W, dtype=torch.uint8)  # the picture, padded
    expected[..., :h, :w] = torch.from_numpy(shown.copy()).permute(2, 0, 1)
    expected = finish_frames({"frames": expected, "frames_hw": torch.tensor([[h, w]])}, IMAGENET_RGB, "cpu")
    assert frames.shape == (1, 1, 1, 3, W, W)
    assert (frames - expected["frames"]).abs().mean() < 0.05


# --- GIF timing ---


def _painted_gif(path, delays_ms: list[int]) -> str:
    """A GIF written by PIL: frame k painted with k, shown for delays_ms[k] (as a GIF stores it, in cs)."""
    frames = [Image.fromarray(paint_index(k, H, W)) for k in range(len(delays_ms))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=delays_ms, loop=0)
    return str(path)


@pytest.mark.parametrize(
    "delay_ms, fps",
    [
        (10, 10.0),  # 1 cs: shown for 100 ms (PyAV read it as 10 ms: 100 fps)
        (0, 10.0),  # 0 cs: PyAV's FFmpeg already shows it for 100 ms; pinned
        (20, 50.0),  # 2 cs: FFmpeg's min_delay, shown as written
        (100, 10.0),
    ],
)
def test_a_gif_is_timed_as_browsers_and_ffmpeg_show_it(tmp_path, delay_ms, fps):
    path = _painted_gif(tmp_path / "a.gif", [delay_ms] * 20)
    info = PyAVDecoder().probe(path)
    assert info.num_frames == 20 and info.fps == pytest.approx(fps)


def test_a_one_second_clip_of_a_fast_gif_spans_one_second(tmp_path):
    # 20 frames of 1 cs: 2 s as shown, so a 1 s clip spans 10 frames, not 100 (the whole GIF, clamped)
    _painted_gif(tmp_path / "fast.gif", [10] * 20)
    cfg = DataConfig(video_dir=str(tmp_path), image_size=W, frames_per_clip=2, test_sampling="middle")
    source = VideoSource(cfg, IMAGENET_RGB, train=False)
    indices = source.indices("fast", 0)  # [1, 2]
    assert indices[0, -1] - indices[0, 0] + 1 == pytest.approx(10, abs=2)
    raw = source.decoder.decode(source.key("fast"), indices)  # uint8 [1, 2, H, W, 3]
    assert [read_index(f) for f in raw[0]] == indices[0].tolist()


def test_a_gif_with_mixed_short_delays_decodes_each_frame_by_rank(tmp_path):
    delays = [10, 100, 0, 50, 10] * 4  # 1 cs and 0 cs shown for 100 ms
    path = _painted_gif(tmp_path / "mix.gif", delays)
    decoder = PyAVDecoder()
    shown_s = [100 if d < 20 else d for d in delays][:-1]  # the last frame's delay is not in the span
    assert decoder.probe(path).fps == pytest.approx(len(shown_s) / (sum(shown_s) / 1000))
    wanted = np.array([[0, 4, 5, 13, 19]])
    assert [read_index(f) for f in decoder.decode(path, wanted)[0]] == wanted[0].tolist()


def test_the_frame_store_and_transcode_time_a_fast_gif_as_the_decoder(tmp_path):
    from clipbert.data.build_frame_store import build_frame_store
    from clipbert.data.frame_store import FrameStore
    from clipbert.data.transcode import transcode

    (tmp_path / "videos").mkdir()
    _painted_gif(tmp_path / "videos" / "fast.gif", [10] * 20)  # 2 s as shown
    store_path = tmp_path / "frames.h5"
    result = build_frame_store(tmp_path / "videos", store_path, fps=2.0, workers=0, progress=False)
    assert result["written"] == ["fast"]
    # stored at 0, 0.5, 1 and 1.5 s: frames 0, 5, 10, 15 (at 100 fps the GIF lasted 0.2 s: one frame)
    store = FrameStore(store_path)
    assert store.source_timeline("fast") == (20, pytest.approx(10.0))
    stored = store.read_frames("fast", np.arange(4))  # 4 x uint8 [H, W, 3]
    assert [read_index(f.numpy()) for f in stored] == [0, 5, 10, 15]

    (tmp_path / "copies").mkdir()
    copy = transcode(tmp_path / "videos" / "fast.gif", tmp_path / "copies")
    with av.open(copy) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(10.0)
    assert PyAVDecoder().probe(copy).num_frames == 20


def test_a_store_of_the_older_gif_timing_warns_and_is_not_resumed_with_gifs(tmp_path, caplog):
    # A version-1 store timed fast GIFs at up to 10x their rate: reading it says so, and a resume with GIF
    # sources would mix two timings in one store. Without GIFs it resumes (every version stores them alike).
    import h5py

    from clipbert.data.build_frame_store import build_frame_store
    from clipbert.data.frame_store import VERSION, FrameStore
    from clipbert.data.painted import write_painted_video

    (tmp_path / "videos").mkdir()
    _painted_gif(tmp_path / "videos" / "fast.gif", [10] * 4)
    store_path = tmp_path / "frames.h5"
    build_frame_store(tmp_path / "videos", store_path, fps=2.0, workers=0, progress=False)
    with h5py.File(store_path, "a") as h5:
        h5.attrs["version"] = 1
    with caplog.at_level("WARNING", logger="clipbert.data.frame_store"):
        FrameStore(store_path)
    assert f"built by version 1 (now {VERSION})" in caplog.text
    with pytest.raises(ValueError, match=r"built by frame store version 1.*include GIFs \(fast.gif\)"):
        build_frame_store(tmp_path / "videos", store_path, fps=2.0, workers=0, progress=False)
    (tmp_path / "videos" / "fast.gif").unlink()
    write_painted_video(tmp_path / "videos" / "clip", 4)
    result = build_frame_store(tmp_path / "videos", store_path, fps=2.0, workers=0, progress=False)
    assert result["written"] == ["clip"]
    with h5py.File(store_path, "r") as h5:
        assert int(h5.attrs["version"]) == VERSION and set(h5["videos"]) == {"clip", "fast"}
