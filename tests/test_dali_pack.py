"""dali_pipelines/pack.py: cut videos of one stream format back to back in one DALI sample, frames exact."""

import io

import av
import numpy as np
import pytest
from test_dali_trim import write_open_gop_hevc

from clipbert.data.config import DataConfig
from clipbert.data.painted import read_index, write_painted_video
from dali_pipelines.pack import Pack, pack_cuts
from dali_pipelines.trim import trim_video


def decode_all(data: np.ndarray) -> list[np.ndarray]:
    """The frames in the decoder's output order, as DALI counts them: it must be presentation order."""
    with av.open(io.BytesIO(data.tobytes())) as container:
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    pts = [p for p, _ in frames]
    assert pts == sorted(pts), f"decoded out of presentation order: {pts}"
    return [frame for _, frame in frames]


def painted_cuts(tmp_path, codec, sizes, seed=0):
    """One painted 90-frame video per (height, width), 4 clips x 2 random frames each, cut by trim_video."""
    rng = np.random.default_rng(seed)
    wanted, cuts = [], []
    for i, (h, w) in enumerate(sizes):
        path = write_painted_video(
            tmp_path / f"{codec}{i}", 90, fps=30, height=h, width=w, codec=codec, gop=12
        )
        indices = rng.integers(0, 90, size=(4, 2))
        wanted.append(indices)
        cuts.append(trim_video(path, indices))
    return wanted, [c for c, _ in cuts], [n for _, n in cuts]


def assert_exact(packs, wanted):
    for pack in packs:
        frames = decode_all(pack.data)
        for row, indices in zip(pack.rows, pack.indices, strict=True):
            got = np.array([read_index(frames[i]) for i in indices.ravel()]).reshape(wanted[row].shape)
            np.testing.assert_array_equal(got, wanted[row])


@pytest.mark.parametrize("codec", ["h264", "vp9"])  # H.264 with B-frames (painted videos use bf=2)
def test_packs_group_one_stream_format_and_keep_every_frame_exact(tmp_path, codec):
    sizes = [(48, 64), (48, 64), (64, 64), (48, 64), (48, 64), (48, 64), (64, 64)]
    wanted, cuts, indices = painted_cuts(tmp_path, codec, sizes)
    packs = pack_cuts(cuts, indices, max_rows=3)
    # 48x64 rows 0, 1, 3 | 4, 5 and 64x64 rows 2, 6: at most 3 a pack, ordered by first row
    assert [p.rows for p in packs] == [[0, 1, 3], [2, 6], [4, 5]]
    assert all(p.indices.shape == (len(p.rows), 4, 2) and p.indices.dtype == np.int32 for p in packs)
    assert_exact(packs, wanted)
    assert sum(p.data.size for p in packs) < sum(c.size for c in cuts)  # one header a pack, not a row


def test_hevc_cuts_that_start_on_a_cra_picture_open_their_pack(tmp_path):
    # A CRA after another cut's pictures continued their picture order count: frames of the second cut came
    # out of the decoder between the first cut's. A cut that starts on an IDR may follow; one on a CRA opens a
    # pack.
    path = write_open_gop_hevc(str(tmp_path / "open_hevc.mp4"), 48)
    wanted = [np.array([[38, 40]]), np.array([[25, 26]]), np.array([[5, 6]])]
    cuts = [trim_video(path, indices) for indices in wanted]  # their key frames: CRA 36, CRA 24, IDR 0
    packs = pack_cuts([c for c, _ in cuts], [n for _, n in cuts], max_rows=3)
    assert [p.rows for p in packs] == [[0], [1, 2]]  # one pack of all three came out as frames 36, 24, 38 ...
    assert_exact(packs, wanted)


def test_one_row_a_pack_sends_the_cuts_as_they_are(tmp_path):
    wanted, cuts, indices = painted_cuts(tmp_path, "vp9", [(48, 64)] * 3)
    packs = pack_cuts(cuts, indices, max_rows=1)
    assert [p.rows for p in packs] == [[0], [1], [2]]
    assert all(p.data is cuts[i] and (p.indices[0] == indices[i]).all() for i, p in enumerate(packs))
    with pytest.raises(ValueError, match="max_rows must be >= 1, got 0"):
        pack_cuts(cuts, indices, max_rows=0)


def test_unreadable_or_unmuxable_cuts_stay_single(tmp_path, monkeypatch):
    from dali_pipelines import pack as pack_module

    wanted, cuts, indices = painted_cuts(tmp_path, "vp9", [(48, 64)] * 3)
    garbage = np.frombuffer(b"not a video" * 20, dtype=np.uint8)
    packs = pack_cuts(
        [cuts[0], garbage, cuts[1], cuts[2]], [indices[0], indices[0], indices[1], indices[2]], 4
    )
    assert [p.rows for p in packs] == [[0, 2, 3], [1]] and packs[1].data is garbage

    def refuse(*args):
        raise ValueError("muxer refuses these packets")

    monkeypatch.setattr(pack_module, "mux_runs", refuse)
    packs = pack_cuts(cuts, indices, 4)
    assert [p.rows for p in packs] == [[0], [1], [2]] and all(p.data is cuts[i] for i, p in enumerate(packs))


def test_dali_pack_needs_cut_videos_and_a_positive_size():
    with pytest.raises(ValueError, match="dali_pack=4 packs cut videos: it needs dali_trim=true"):
        DataConfig(dali_pack=4, dali_trim=False)
    with pytest.raises(ValueError, match="dali_pack"):
        DataConfig(dali_pack=0)
    assert DataConfig(dali_pack=4).dali_pack == 4


@pytest.mark.parametrize("order", ["frames", "none"])
def test_dali_cpu_decodes_packs_exactly(tmp_path, order):
    pytest.importorskip("nvidia.dali")
    from clipbert.data.preprocess import IMAGENET_RGB
    from dali_pipelines.video import DaliVideoDecoder

    wanted, cuts, indices = painted_cuts(tmp_path, "vp9", [(48, 64), (48, 64), (64, 64), (48, 64)], seed=3)
    packs = pack_cuts(cuts, indices, max_rows=4)
    assert [p.rows for p in packs] == [[0, 1, 3], [2]]
    decoder = DaliVideoDecoder(64, IMAGENET_RGB, 4, device="cpu", order=order)
    out = decoder.collect(decoder.submit_packs(packs, [(48, 64), (64, 64)]))  # [4, N, T, 3, L, L]
    assert out.shape == (4, 4, 2, 3, 64, 64)
    mean, std = np.array(IMAGENET_RGB.mean), np.array(IMAGENET_RGB.std)
    rgb = out.permute(0, 1, 2, 4, 5, 3).numpy() * std + mean
    content = np.clip(rgb, 0, 255).round().astype(np.uint8)
    rows = [r for p in packs for r in p.rows]  # the packs' row order: 0, 1, 3, 2
    height = [64 if r == 2 else 48 for r in rows]  # the 48x64 videos are padded below to 64 rows

    def index(b, n, t):
        return read_index(content[b, n, t, : height[b]])

    got = np.vectorize(index)(*np.indices((4, 4, 2)))
    np.testing.assert_array_equal(got, np.stack([wanted[r] for r in rows]))


def test_the_loader_splits_a_pack_that_holds_a_row_for_pyav():
    pytest.importorskip("nvidia.dali")
    from dali_pipelines.loader import DaliLoader

    job = {
        "trimmed": [np.full(4, i, dtype=np.uint8) for i in range(4)],
        "dali_indices": np.arange(16).reshape(4, 4),
    }
    packs = [
        Pack(np.zeros(8, np.uint8), [0, 2], np.zeros((2, 4), np.int32)),
        Pack(job["trimmed"][1], [1], np.zeros((1, 4))),
    ]
    packs.append(Pack(np.zeros(8, np.uint8), [3], np.zeros((1, 4), np.int32)))
    out = DaliLoader._packs(DaliLoader.__new__(DaliLoader), [0, 1, 3], packs, job)  # row 2 goes to PyAV
    assert [p.rows for p in out] == [[0], [1], [3]]
    assert out[0].data is job["trimmed"][0] and out[0].indices.tolist() == [[0, 1, 2, 3]]
    kept = DaliLoader._packs(DaliLoader.__new__(DaliLoader), [0, 1, 2, 3], packs, job)
    assert kept[0] is packs[0] and [p.rows for p in kept] == [[0, 2], [1], [3]]
