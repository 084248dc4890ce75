"""Folders and files named with spaces and non-ASCII (UTF-8) characters: video ids, the video folder, the
frame store, predict's inputs. A name not in UTF-8 bytes is a documented limit and is not tested here."""

import json
import os
import shlex
import shutil
import subprocess
import unicodedata
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is not installed")

from clipbert.data import build_frame_store as bfs  # noqa: E402
from clipbert.data.config import DataConfig  # noqa: E402
from clipbert.data.decoders import build_decoder  # noqa: E402
from clipbert.data.frame_store import FrameStore  # noqa: E402
from clipbert.data.painted import read_index, write_painted_video  # noqa: E402
from clipbert.data.preprocess import Normalization  # noqa: E402
from clipbert.data.video_source import VideoSource  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NORM = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "RGB")
NFC_ID = unicodedata.normalize("NFC", "clip café 01 (copié)")  # as an annotation file writes it
NFD_ID = unicodedata.normalize("NFD", NFC_ID)  # as macOS (or a zip made there) names the file
CJK_ID = "数据 二"


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """A folder named with a space, accents and CJK, holding a video named in NFD and one in CJK."""
    root = tmp_path_factory.mktemp("names") / "My Research" / "vidéos 数据 (copy)"
    root.mkdir(parents=True)
    write_painted_video(root / NFD_ID, 12, fps=10, codec="h264")
    write_painted_video(root / CJK_ID, 12, fps=10, codec="h264")
    return root


def source(video_dir, **overrides) -> VideoSource:
    values = dict(ann_dir=str(video_dir), video_dir=str(video_dir), image_size=32, num_workers=0)
    return VideoSource(DataConfig(**{**values, **overrides}), NORM, train=False)


def test_names_with_spaces_accents_and_cjk_are_found_and_decoded(video_dir):
    src = source(video_dir)
    assert src.key(CJK_ID) == str(video_dir / f"{CJK_ID}.mp4")
    indices = src.indices(CJK_ID, epoch=0)
    frames, _ = src.frames(CJK_ID, indices)  # uint8 [N, T, 3, L, L]
    assert frames.shape[:2] == indices.shape


@pytest.mark.parametrize("video_id", [NFC_ID, NFD_ID], ids=["nfc_id", "nfd_id"])
def test_a_file_named_in_another_unicode_form_is_found_by_its_id(video_dir, video_id):
    """The file is named "cafe" + U+0301 (NFD), the annotation says "café" (NFC): the same name, which
    counted as a missing file (<id>.mp4) and was replaced in every batch."""
    src = source(video_dir)
    assert src.key(video_id) == str(video_dir / f"{NFD_ID}.mp4")
    assert src.info(video_id).num_frames == 12


def test_frame_store_under_such_names_serves_either_unicode_form(video_dir, tmp_path, capsys):
    out = tmp_path / "stores é" / "frames 数据.h5"
    out.parent.mkdir()
    assert bfs.main(["--videos", str(video_dir), "--out", str(out), "--fps", "5", "--workers", "0"]) == 0
    # the report names the file as given, not escaped
    assert f"{out}: 2 video(s) written, 0 already there, 0 failed" in capsys.readouterr().out
    # a resumed build finds the entries it wrote, whatever form the files are named in
    resumed = bfs.build_frame_store(video_dir, out, fps=5.0, workers=0, progress=False)
    assert sorted(resumed["skipped"]) == sorted([NFC_ID, CJK_ID]) and not resumed["written"]
    store = FrameStore(out)
    assert sorted(store.video_ids()) == sorted([NFC_ID, CJK_ID])  # stored under the annotations' form
    for video_id in (NFC_ID, NFD_ID, CJK_ID):
        assert store.info(video_id).num_frames == 6  # 12 frames at 10 fps, stored at 5 fps
    frames = build_decoder("frame_store", str(out)).decode(
        NFD_ID, np.array([[0, 5]])
    )  # uint8 [1, 2, H, W, 3]
    assert [read_index(f) for f in frames[0]] == [0, 10]  # stored frames 0 and 5: source frames 0 and 10


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_passes_folders_with_spaces_and_quotes_as_one_argument(tmp_path):
    data, out = tmp_path / "John's data" / "vidéos 数据", tmp_path / "demo out"
    args = [
        "make",
        "-n",
        "--no-print-directory",
        "-o",
        "setup",
        "demo",
        f"DEMO_DIR={data}",
        f"DEMO_OUT={out}",
    ]
    # a make of its own: under `make test` the outer make's MAKEFLAGS and MAKELEVEL would reach this one
    env = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
    }
    dry = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    command = shlex.split(dry.strip().splitlines()[-1])  # the recipe as the shell reads it
    assert command[-4:] == ["--data", str(data), "--out", str(out)]


def test_predict_table_keeps_scores_in_their_column_for_wide_and_combining_names():
    from clipbert.predict.report import format_retrieval

    videos = [f"/data/vidéos 数据/{name}.webm" for name in ("a", CJK_ID, NFD_ID)]
    out = {
        "unit": "video",
        "settings": {"word_score_weight": 1.0},
        "word_score": None,
        "texts": ["a red circle"],
        "videos": videos,
        "scores": [[-1.0], [-2.0], [-3.0]],
        "best_video_per_text": [{"video": videos[0], "score": -1.0}],
        "best_text_per_video": [{"video": v, "text": "a red circle", "score": -1.0} for v in videos],
    }
    lines = format_retrieval(out)
    rows = [line for line in lines if line.endswith(("-1.000", "-2.000", "-3.000"))]
    best = [line for line in lines if line.endswith("(-1.000)") and "t1" in line[-15:]]
    assert len(rows) == 3 and len(best) == 3
    # the names are kept as they are (not escaped), and every score starts in the same terminal column
    assert [row.split("  ")[0] for row in rows] == ["a.webm", f"{CJK_ID}.webm", f"{NFD_ID}.webm"]
    assert len({terminal_columns(row) for row in rows}) == 1
    assert len({terminal_columns(line.rsplit("t1", 1)[0]) for line in best}) == 1


def terminal_columns(text: str) -> int:
    """As a terminal shows `text`: wide (CJK) characters take 2 columns, combining accents none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def test_predict_pattern_in_a_folder_named_with_brackets_matches_its_files(tmp_path):
    from clipbert.predict.inputs import expand_inputs

    folder = tmp_path / "My Research" / "clips [HD] é"
    folder.mkdir(parents=True)
    for name in ("a b.mp4", f"{CJK_ID}.mp4", "notes.txt"):
        (folder / name).write_bytes(b"")
    files, skipped = expand_inputs([f"{folder}/*.mp4"])
    assert files == [str(folder / "a b.mp4"), str(folder / f"{CJK_ID}.mp4")] and skipped == []
    # a pattern's own brackets still match as a pattern
    files, _ = expand_inputs([f"{folder}/[a]*"])
    assert files == [str(folder / "a b.mp4")]


def test_synthetic_generator_prints_its_folder_as_named(tmp_path, capsys):
    from clipbert.data.synthetic.__main__ import main

    out = tmp_path / "My Research" / "vidéos 数据"
    main(["--out", str(out), "--size", "tiny", "--num-videos", "3", "--workers", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f'"out": "{out}"' in last and json.loads(last)["out"] == str(out)


def test_an_image_file_named_in_another_unicode_form_is_found(tmp_path):
    """Image tasks name files by path ("file" entries, written NFC); macOS and its zips name them NFD."""
    from PIL import Image

    from clipbert.data.decoders import VideoDecodeError
    from clipbert.data.video_source import load_image

    def nfc(name):
        return unicodedata.normalize("NFC", name)

    def nfd(name):
        return unicodedata.normalize("NFD", name)

    # the whole tree unzipped from a Mac; an NFC folder holding an NFD file (each part is matched alone)
    for folder in (tmp_path / "a" / nfd("imagés"), tmp_path / "b" / nfc("imagés")):
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 6), (200, 10, 10)).save(folder / nfd("café.png"))
        frames, hw = load_image(folder.parent / nfc("imagés") / nfc("café.png"), 16)
        assert hw == (12, 16) and frames.shape == (1, 1, 3, 16, 16) and frames[0, 0, 0, 0, 0] == 200
    with pytest.raises(VideoDecodeError, match="missing file"):
        load_image(tmp_path / "b" / "imagés" / "thé.png", 16)
