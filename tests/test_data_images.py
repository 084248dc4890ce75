"""load_image, the image tasks' (VQA, pre-training) and predict's decoder: whatever image format a dataset
holds comes out as uint8 [1, 1, 3, L, L] with the right pixels, or as a VideoDecodeError the bad-input
tracker counts, never as another exception that would stop training."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from clipbert.data.decoders import VideoDecodeError
from clipbert.data.video_source import load_image

H, W = 12, 20
L = W  # the longer side is L already: no resampling, so pixels compare exactly


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _png16(path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG, written by hand (PIL writes 16-bit greyscale only)."""
    h, w, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # depth 16, colour type 2 (RGB)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _content(frames: torch.Tensor, hw) -> np.ndarray:
    assert frames.shape == (1, 1, 3, L, L) and frames.dtype == torch.uint8 and tuple(hw) == (H, W)
    return frames[0, 0, :, :H, :W].permute(1, 2, 0).numpy()  # [H, W, 3]


def test_an_8_bit_png_is_read_exactly(tmp_path):
    rgb = _rgb(0)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(_content(*load_image(tmp_path / "a.png", L)), rgb)


def test_a_16_bit_png_is_rescaled_not_wrapped(tmp_path):
    rgb = _rgb(1)
    # x * 257 maps 0..255 onto 0..65535 exactly; +100 moves each value off the grid but rounds back to x
    _png16(tmp_path / "deep.png", rgb.astype(np.uint16) * 257 + np.where(rgb < 255, 100, 0).astype(np.uint16))
    assert np.array_equal(_content(*load_image(tmp_path / "deep.png", L)), rgb)


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    # flat colours: GIF's 256-colour palette keeps them exactly
    frames = [Image.new("RGB", (W, H), colour) for colour in ((200, 10, 10), (10, 200, 10), (10, 10, 200))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    content = _content(*load_image(tmp_path / "anim.gif", L))
    assert (content == np.array([200, 10, 10], dtype=np.uint8)).all()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK"])
def test_grey_palette_alpha_and_cmyk_images_come_out_rgb(tmp_path, mode):
    path = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")
    Image.fromarray(_rgb(2)).convert(mode).save(path)
    frames, hw = load_image(path, L)
    assert _content(frames, hw).shape == (H, W, 3)


def test_a_larger_image_is_resized_keeping_its_aspect(tmp_path):
    Image.new("RGB", (80, 40), (30, 60, 90)).save(tmp_path / "wide.png")
    frames, hw = load_image(tmp_path / "wide.png", 32)
    assert tuple(hw) == (16, 32) and (frames[0, 0, :, 16:] == 0).all()  # zero padding below
    assert (frames[0, 0, :, :16].flatten(1).float().mean(1) == torch.tensor([30.0, 60.0, 90.0])).all()


@pytest.mark.parametrize(
    "name, write, reason",
    [
        ("missing.png", None, "missing file"),
        ("empty.jpg", b"", "undecodable image"),
        ("garbage.png", b"\x89PNG\r\n\x1a\n" + bytes(range(200)), "undecodable image"),
        ("a.bmp", "bmp", "undecodable image"),  # torchvision reads JPEG, PNG, GIF and WebP
    ],
)
def test_bad_images_raise_the_decode_error_the_tracker_counts(tmp_path, name, write, reason):
    path = tmp_path / name
    if write == "bmp":
        Image.fromarray(_rgb(3)).save(path)
    elif write is not None:
        path.write_bytes(write)
    with pytest.raises(VideoDecodeError) as info:
        load_image(path, 32)
    assert info.value.reason.startswith(reason) and info.value.key == str(path)


@pytest.mark.parametrize("cache", [8, 0])
def test_an_images_questions_read_in_order_decode_it_once(tmp_path, tokenizer, monkeypatch, cache):
    # VQA lists about 5 questions per COCO image in a row: evaluation decoded the image once per question
    import json

    from clipbert.data import datasets
    from clipbert.data.config import DataConfig
    from clipbert.data.preprocess import IMAGENET_RGB

    Image.fromarray(_rgb(1)).save(tmp_path / "a.png")
    Image.fromarray(_rgb(2)).save(tmp_path / "b.png")
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "vqa_ans2label.json").write_text('{"red": 0}')
    rows = [
        {"question_id": q, "question": "what color", "file": f, "answers": ["red"] * 10}
        for q, f in enumerate(["a.png", "a.png", "a.png", "b.png", "b.png"])
    ]
    (ann / "vqa_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(ann_dir=str(ann), image_root=str(tmp_path), image_size=64, frame_cache_size=cache)
    dataset = datasets.build_dataset("vqa", "val", cfg, tokenizer, IMAGENET_RGB)
    calls = []
    real = datasets.load_image
    monkeypatch.setattr(datasets, "load_image", lambda *args: calls.append(args[0]) or real(*args))
    items = [dataset[(0, i)] for i in range(len(rows))]
    assert len(calls) == (2 if cache else 5)
    assert torch.equal(items[0]["frames"], load_image(tmp_path / "a.png", 64)[0])
    assert torch.equal(items[4]["frames"], load_image(tmp_path / "b.png", 64)[0])
