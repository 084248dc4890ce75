"""Edge cases of clip sampling and pre-processing across backends: the frame store samples the frames the
video decoders sample, extreme aspect ratios and odd sizes resize and pad the same way everywhere."""

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="PyAV is not installed")

from clipbert.data.build_frame_store import build_frame_store  # noqa: E402
from clipbert.data.config import DataConfig  # noqa: E402
from clipbert.data.frame_store import nearest_stored_indices, stored_source_indices  # noqa: E402
from clipbert.data.painted import read_index, write_painted_video  # noqa: E402
from clipbert.data.preprocess import CAFFE_BGR, IMAGENET_RGB, normalize_padded, resize_frames  # noqa: E402
from clipbert.data.sampling import sample_frame_indices  # noqa: E402
from clipbert.data.video_source import VideoSource  # noqa: E402


@pytest.fixture(scope="module")
def store_2fps(tmp_path_factory):
    """A 6 s painted video at 10 fps, and a 2 fps frame store of it (stored frame k shows source 5k)."""
    root = tmp_path_factory.mktemp("store_2fps")
    (root / "videos").mkdir()
    write_painted_video(root / "videos" / "a", 60, fps=10, codec="h264")
    build_frame_store(root / "videos", root / "frames.h5", fps=2.0, workers=0, progress=False)
    return root


def source_pair(root, **overrides):
    """VideoSources of one config on the video itself (PyAV) and on its frame store."""
    values = dict(video_dir=str(root / "videos"), image_size=32, num_clips=3, num_test_clips=3, seed=3)
    values.update(overrides)
    pyav = VideoSource(DataConfig(**values), IMAGENET_RGB, train=True)
    store = VideoSource(
        DataConfig(**values, backend="frame_store", frame_store=str(root / "frames.h5")), IMAGENET_RGB, True
    )
    return pyav, store


@pytest.mark.parametrize("strategy", ["middle", "uniform", "rand"])
@pytest.mark.parametrize("frames_per_clip", [1, 2])
def test_a_2fps_store_samples_the_stored_frames_nearest_the_video_decoders_frames(
    store_2fps, strategy, frames_per_clip
):
    # The store sampled clips on its own 2 fps timeline: 1 s clips of 2 stored frames, so T=2 took frames
    # 0.5 s apart where PyAV takes them 0.9 s apart, and `middle` with T=1 took the frame 0.4 s before the
    # one PyAV takes (the paper's default inference), although the store holds a frame at that very time.
    pyav, store = source_pair(store_2fps, train_sampling=strategy, frames_per_clip=frames_per_clip)
    for epoch in range(4):
        wanted = pyav.indices("a", epoch)  # [N, T] source frames at 10 fps
        stored = store.indices("a", epoch)  # [N, T] stored frames at 2 fps
        assert stored.shape == wanted.shape and stored.dtype == np.int64
        frames = store.decoder.decode("a", stored)  # [N, T, H, W, 3]
        shown = np.array([[read_index(f) for f in clip] for clip in frames])  # source frame shown
        # the stored frame nearest each wanted frame (the store holds source frames 0, 5, ..., 55)
        nearest = np.abs(np.arange(0, 60, 5)[None, None, :] - wanted[..., None]).min(-1)  # [N, T]
        assert (np.abs(shown - wanted) == nearest).all(), (strategy, epoch, wanted.tolist(), shown.tolist())


@pytest.mark.parametrize(
    "num_frames, source_fps, fps",
    [
        (300, 29.97, 2.0),
        (2_160_000, 60.0, 2.0),
        (7, 0.5, 2.0),
        (3, 10.0, 30.0),
        (1, 30.0, 2.0),
        (45, 25.0, 2.0),
    ],
)
def test_nearest_stored_frames_are_nearest_in_time(num_frames, source_fps, fps):
    shown = stored_source_indices(num_frames, source_fps, fps)  # [F] source frame of each stored frame
    source = np.arange(num_frames) if num_frames < 10_000 else np.array([0, 1, 12_345, num_frames - 1])
    stored = nearest_stored_indices(source[None, :], source_fps, fps, len(shown))  # [1, S]
    assert stored.shape == (1, len(source)) and stored.dtype == np.int64
    # no stored frame is nearer in time to each source frame than the one chosen (ties either way)
    gap = np.abs(np.arange(len(shown))[None, :] / fps - source[:, None] / source_fps).min(1)
    np.testing.assert_allclose(np.abs(stored[0] / fps - source / source_fps), gap, atol=1e-9)


def test_a_store_at_the_source_fps_samples_exactly_the_video_decoders_frames(tmp_path):
    (tmp_path / "videos").mkdir()
    write_painted_video(tmp_path / "videos" / "a", 37, fps=10, codec="vp9")
    build_frame_store(tmp_path / "videos", tmp_path / "frames.h5", fps=10.0, workers=0, progress=False)
    pyav, store = source_pair(tmp_path, frames_per_clip=3)
    for epoch in range(3):
        np.testing.assert_array_equal(store.indices("a", epoch), pyav.indices("a", epoch))


@pytest.mark.parametrize("damage", ["no_source_fps", "zero_source_frames"])
def test_a_store_entry_without_its_source_timeline_is_a_bad_video(store_2fps, tmp_path, damage):
    import shutil

    import h5py

    from clipbert.data.decoders import VideoDecodeError

    shutil.copytree(store_2fps / "videos", tmp_path / "videos")
    shutil.copy(store_2fps / "frames.h5", tmp_path / "frames.h5")
    with h5py.File(tmp_path / "frames.h5", "a") as h5:
        if damage == "no_source_fps":
            del h5["videos/a"].attrs["source_fps"]
        else:
            h5["videos/a"].attrs["source_num_frames"] = 0
    _, store = source_pair(tmp_path)
    with pytest.raises(VideoDecodeError, match="a: corrupt frame store entry"):
        store.indices("a", 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fps=float("inf")), "fps must be a finite number > 0, got inf"),
        (dict(clip_seconds=float("inf")), "clip_seconds must be a finite number > 0, got inf"),
        (dict(clip_seconds=-1.0), "clip_seconds must be a finite number > 0, got -1.0"),
    ],
)
def test_sampling_rejects_infinite_rates_and_lengths_by_name(kwargs, message):
    # an infinite fps or clip length raised "OverflowError: cannot convert float infinity to integer"
    args = dict(num_frames=10, fps=10.0, num_clips=1, frames_per_clip=2, clip_seconds=1.0, strategy="middle")
    with pytest.raises(ValueError, match=message):
        sample_frame_indices(**{**args, **kwargs})


def test_config_rejects_an_infinite_clip_length():
    # accepted, then every sample of the run failed in the workers
    with pytest.raises(ValueError, match="clip_seconds must be a finite number > 0, got inf"):
        DataConfig.from_dict({"clip_seconds": float("inf")})


def content_box(frames: torch.Tensor) -> tuple[int, int]:
    """(rows, columns) holding any nonzero value in normalized [..., 3, L, L] frames: the content, as a
    pixel is never exactly 0 after subtracting a non-integer mean."""
    nonzero = (frames != 0).flatten(0, -3).any(0)  # [L, L]
    return int(nonzero.any(1).sum()), int(nonzero.any(0).sum())


@pytest.mark.parametrize(
    "height, width, size, norm",
    [(33, 17, 45, IMAGENET_RGB), (2, 200, 50, CAFFE_BGR)],  # odd portrait upscaled to odd L; extreme aspect
)
def test_every_backend_resizes_and_zero_pads_alike(tmp_path, height, width, size, norm):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed")
    from dali_pipelines.common import read_bytes
    from dali_pipelines.frame_store import DaliJpegDecoder
    from dali_pipelines.video import DaliVideoDecoder

    (tmp_path / "videos").mkdir()
    path = write_painted_video(tmp_path / "videos" / "a", 12, fps=10, height=height, width=width, codec="vp9")
    build_frame_store(tmp_path / "videos", tmp_path / "frames.h5", fps=10.0, workers=0, progress=False)
    pyav, store = source_pair(tmp_path, image_size=size, num_clips=2, frames_per_clip=2)
    indices = pyav.indices("a", 0)  # [N, T]
    outs = {}
    for name, source in (("pyav", pyav), ("store", store)):
        padded, hw = source.frames("a", source.indices("a", 0))  # uint8 [N, T, 3, L, L]
        outs[name] = normalize_padded(padded, hw, norm)
    outs["dali"] = DaliVideoDecoder(size, norm, 1, device="cpu").decode(
        [read_bytes(path)], indices[None], [(height, width)]
    )[0]
    jpegs = store.decoder.store.read_jpegs("a", store.indices("a", 0).ravel())
    outs["dali_jpeg"] = DaliJpegDecoder(size, norm, 4, device="cpu").decode(
        [jpegs], (1, 2, 2), [(height, width)]
    )[0]
    content = (round(height * size / max(height, width)) or 1, round(width * size / max(height, width)) or 1)
    std = torch.tensor(norm.std).view(3, 1, 1)
    for name, out in outs.items():
        assert out.shape == (2, 2, 3, size, size), name
        assert content_box(out) == content, name  # the same content, exactly 0 in the padding
        diff = ((out - outs["pyav"]) * std).abs()  # on the 0..255 scale: codec, JPEG and interpolation
        assert diff.mean() < 3.0, (name, diff.mean())


@pytest.mark.parametrize("height, width, size", [(1000, 1, 448), (1, 1000, 448), (100, 3, 30), (7, 5, 9)])
def test_resize_of_extreme_aspects_matches_pil(height, width, size):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    got = resize_frames(rgb[None], size)[0]  # [3, h, w]
    h, w = got.shape[-2:]
    assert max(h, w) == size and min(h, w) == max(1, round(min(height, width) * size / max(height, width)))
    want = np.stack(
        [np.asarray(Image.fromarray(rgb[..., c]).resize((w, h), Image.BILINEAR)) for c in range(3)]
    )
    assert np.abs(got.numpy() - want).max() <= 1
