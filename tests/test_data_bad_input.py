"""Bad input: missing, empty, truncated, undecodable videos and corrupt store entries are replaced, counted
once, and summarized; a malformed annotation line names its file and line."""

import json
import logging
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

# PyAV is a hard dependency, but the GPU test machine runs `-m needs_cuda` without it: skip, not error.
pytest.importorskip("av", reason="PyAV is not installed")

from clipbert.data.annotations import AnnotationError, DataError, read_jsonl  # noqa: E402
from clipbert.data.bad_input import BadInputTracker  # noqa: E402
from clipbert.data.build_frame_store import build_frame_store  # noqa: E402
from clipbert.data.config import DataConfig  # noqa: E402
from clipbert.data.datasets import build_dataset  # noqa: E402
from clipbert.data.loader import build_loader  # noqa: E402
from clipbert.data.painted import write_painted_video  # noqa: E402
from clipbert.data.preprocess import IMAGENET_RGB  # noqa: E402
from clipbert.data.tokenizer import build_tokenizer  # noqa: E402

GOOD = ["good0", "good1", "good2"]
BAD = ["missing", "empty", "truncated", "garbage"]
ORDER = ["good0", "missing", "empty", "good1", "truncated", "garbage", "good2"]  # example order


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    videos, anns = root / "videos", root / "annotations"
    videos.mkdir()
    anns.mkdir()
    for name in GOOD:
        write_painted_video(videos / name, 30, codec="h264")
    (videos / "empty.mp4").write_bytes(b"")
    full = Path(write_painted_video(root / "full", 60, codec="mjpeg")).read_bytes()
    (videos / "truncated.avi").write_bytes(full[: len(full) // 2])  # header promises 60 frames
    (videos / "garbage.mp4").write_bytes(
        np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    )
    with open(anns / "msrvtt_qa_val.jsonl", "w") as f:
        for name in ORDER:
            f.write(
                json.dumps({"question": f"what is in {name}", "answer": "shape", "video_id": name}) + "\n"
            )
    (anns / "msrvtt_qa_ans2label.json").write_text(json.dumps({"shape": 0}))
    return root


def make_cfg(root, **overrides):
    values = dict(ann_dir=str(root / "annotations"), video_dir=str(root / "videos"), image_size=16)
    values.update(num_test_clips=2, frames_per_clip=2, num_workers=0)
    values.update(overrides)
    return DataConfig(**values)


def dataset(root, **overrides):
    return build_dataset("msrvtt_qa", "val", make_cfg(root, **overrides), build_tokenizer(), IMAGENET_RGB)


def test_each_bad_video_is_replaced_by_the_next_good_example(data):
    ds = dataset(data)
    expected = {1: (3, ["missing", "empty"]), 2: (3, ["empty"]), 4: (6, ["truncated", "garbage"])}
    for index, (replacement, bad) in expected.items():
        item = ds[(0, index)]
        assert item["index"] == index and item["source_index"] == replacement
        assert item["video_id"] == ORDER[replacement]
        assert [entry.split(": ")[0].rsplit("/", 1)[-1].split(".")[0] for entry in item["bad_videos"]] == bad
    assert ds[(0, 0)]["bad_videos"] == []
    reasons = " ".join(ds[(0, 1)]["bad_videos"] + ds[(0, 4)]["bad_videos"])
    for reason in ("missing file", "empty file", "truncated: the header counts 60", "cannot open container"):
        assert reason in reasons


def test_everything_bad_is_a_clear_error_not_a_loop(data):
    ds = dataset(data, max_bad_retries=1)
    with pytest.raises(DataError, match="max_bad_retries=1"):
        ds[(0, 1)]  # missing, then empty


def shared_video_dataset(root, tmp_path, order, **overrides):
    """A QA dataset whose examples show `order`'s videos (from the module's folder): in MSRVTT-QA and TGIF
    many consecutive questions share one video."""
    (tmp_path / "msrvtt_qa_ans2label.json").write_text(json.dumps({"shape": 0}))
    with open(tmp_path / "msrvtt_qa_val.jsonl", "w") as f:
        for i, name in enumerate(order):
            f.write(json.dumps({"question": f"question {i}", "answer": "shape", "video_id": name}) + "\n")
    cfg = make_cfg(root, ann_dir=str(tmp_path), **overrides)
    return build_dataset("msrvtt_qa", "val", cfg, build_tokenizer(), IMAGENET_RGB)


def test_questions_sharing_a_bad_video_are_skipped_not_retried(data, tmp_path):
    # 5 questions on one missing video > max_bad_retries=2: retrying the next example would hit it 3 times
    order = ["good0"] + ["missing"] * 5 + ["empty", "good1"]
    ds = shared_video_dataset(data, tmp_path, order, max_bad_retries=2)
    missing = f"{data / 'videos' / 'missing.mp4'}: missing file"
    for index in range(1, 6):
        item = ds[(0, index)]
        assert (item["index"], item["source_index"], item["video_id"]) == (index, 7, "good1")
        assert item["bad_videos"][0] == missing and len(item["bad_videos"]) == 2  # missing once, then empty
    assert len(ds[(0, 6)]["bad_videos"]) == 1 and ds[(0, 7)]["bad_videos"] == []  # empty alone; good1


def test_known_bad_videos_are_not_reprobed_and_replacement_is_unchanged(data, tmp_path):
    order = ["good0"] + ["missing"] * 3 + ["good1"]
    ds = shared_video_dataset(data, tmp_path, order)
    loads = []
    original = ds.load
    ds.load = lambda index, epoch: loads.append(index) or original(index, epoch)
    first = [(ds[(0, i)]["source_index"], ds[(0, i)]["bad_videos"]) for i in range(len(order))]
    assert loads.count(1) == 1 and 2 not in loads and 3 not in loads  # 'missing' probed once per epoch
    fresh = shared_video_dataset(data, tmp_path, order)  # an empty cache: another worker, or a restart
    assert [(fresh[(0, i)]["source_index"], fresh[(0, i)]["bad_videos"]) for i in range(len(order))] == first
    ds[(1, 2)]
    assert loads.count(2) == 1  # a new epoch probes again: its clips differ


def test_replacement_wraps_around_and_all_bad_is_a_clear_error(data, tmp_path):
    ds = shared_video_dataset(data, tmp_path, ["good0", "missing", "missing"])
    assert ds[(0, 2)]["source_index"] == 0 and len(ds[(0, 2)]["bad_videos"]) == 1
    # fewer distinct videos than max_bad_retries, all bad: an error at once, not a lap per retry
    ds = shared_video_dataset(data, tmp_path, ["missing", "missing", "empty"], max_bad_retries=8)
    with pytest.raises(DataError, match=r"msrvtt_qa/val: example 1: every example's video is bad"):
        ds[(0, 1)]


def test_two_files_for_one_video_id_are_a_bad_video_naming_both(tmp_path):
    # twin.mp4 and twin.webm: the id matched whichever the folder scan met last, silently
    videos, anns = tmp_path / "videos", tmp_path / "annotations"
    videos.mkdir()
    anns.mkdir()
    first = write_painted_video(videos / "twin", 10, codec="h264")
    second = write_painted_video(videos / "twin", 10, codec="vp9")
    write_painted_video(videos / "solo", 10, codec="h264")
    (anns / "msrvtt_qa_ans2label.json").write_text(json.dumps({"shape": 0}))
    with open(anns / "msrvtt_qa_val.jsonl", "w") as f:
        for name in ("twin", "solo"):
            f.write(json.dumps({"question": "what", "answer": "shape", "video_id": name}) + "\n")
    item = dataset(tmp_path)[(0, 0)]
    assert item["video_id"] == "solo" and item["source_index"] == 1
    assert item["bad_videos"] == [
        f"{videos / 'twin'}: ambiguous video id 'twin': {first} and {second} both match; keep one"
    ]


GOOD_LINES = {
    "tgif_action": {"question": "q", "options": ["a", "b"], "answer": 1, "gif_name": "g"},
    "msrvtt_mc": {"clip_name": "v", "options": ["a", "b"], "answer": 0},
    "msrvtt_ret": {"caption": "c", "clip_name": "v"},
    "didemo_ret": {"clip_name": "v", "sentences": ["s", "t"]},
    "msrvtt_qa": {"question": "q", "answer": "shape", "video_id": "v"},
}
GOOD_LINES["tgif_transition"] = GOOD_LINES["tgif_action"]


@pytest.mark.parametrize(
    "task, key, value, message",
    [
        ("tgif_action", "answer", None, "answer must be an integer, got null"),
        ("tgif_transition", "answer", "first", 'answer must be an integer, got "first"'),
        ("msrvtt_mc", "options", "one option", 'options must be a list of strings, got "one option"'),
        ("msrvtt_ret", "caption", None, "caption must be a string, got null"),
        ("didemo_ret", "sentences", "a b c", 'sentences must be a list of strings, got "a b c"'),
        ("msrvtt_qa", "answer", True, "answer must be a string, got true"),
    ],
)
def test_malformed_annotation_values_name_file_and_line(tmp_path, task, key, value, message):
    # They crashed mid-epoch without a file or line (int(None)), or were coerced: str(None) became the
    # caption "None", and a string of sentences was joined character by character.
    lines = [json.dumps(GOOD_LINES[task]), "", json.dumps({**GOOD_LINES[task], key: value})]
    (tmp_path / f"{task}_train.jsonl").write_text("\n".join(lines) + "\n")  # the blank line counts
    (tmp_path / f"{task}_ans2label.json").write_text(json.dumps({"shape": 0}))
    cfg = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path))
    with pytest.raises(AnnotationError, match=rf"{task}_train\.jsonl:3: {re.escape(message)}"):
        build_dataset(task, "train", cfg, build_tokenizer(), IMAGENET_RGB)


def test_tracker_counts_across_worker_processes_and_warns_once(data, caplog):
    cfg = make_cfg(data, num_workers=2)
    ds = build_dataset("msrvtt_qa", "val", cfg, build_tokenizer(), IMAGENET_RGB)
    loader = build_loader(ds, cfg, 2, False, rank=0, world_size=1)
    tracker = BadInputTracker()
    summaries = []
    with caplog.at_level(logging.WARNING, logger="clipbert.data.bad_input"):
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            for batch in loader:
                tracker.update(batch)
            summaries.append(tracker.summary(epoch))
    # each bad file is reached from itself and from the examples before it: missing 1, empty 2, ...
    assert summaries[0]["files"] == {
        str(data / "videos" / "missing.mp4"): 1,
        str(data / "videos" / "empty.mp4"): 2,
        str(data / "videos" / "truncated.avi"): 1,
        str(data / "videos" / "garbage.mp4"): 2,
    }
    assert summaries[1]["hits"] == summaries[0]["hits"] == 6  # times met: 4 samples were replaced
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bad input")]
    assert len(warnings) == 4  # once per file, not once per replacement or per epoch
    assert sum("epoch 1: 4 bad file(s), met 6 time(s)" in r.getMessage() for r in caplog.records) == 1


def test_corrupt_frame_store_entry_counts_as_bad_video(data, tmp_path):
    store = tmp_path / "frames.h5"
    build_frame_store(data / "videos", store, fps=5.0, workers=0, progress=False)
    with h5py.File(store, "a") as h5:
        jpeg = h5["videos/good1/jpeg"]
        for i in range(len(jpeg)):
            jpeg[i] = np.frombuffer(b"\xff\xd8\xff\xe0broken", dtype=np.uint8)
    ds = dataset(data, backend="frame_store", frame_store=str(store))
    item = ds[(0, 3)]  # good1 is corrupt now -> truncated/garbage are absent from the store -> good2
    assert item["video_id"] == "good2"
    assert item["bad_videos"][0].startswith("good1: corrupt frame store entry")
    assert [e.split(":")[0] for e in item["bad_videos"]] == ["good1", "truncated", "garbage"]


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ['{"caption": "a", "clip_name": "v"}', '{"caption": "b", "clip_name": '],
            r"msrvtt_ret_train\.jsonl:2: malformed",
        ),
        (
            ['{"caption": "a", "clip_name": "v"}', "", '["list"]'],
            r"msrvtt_ret_train\.jsonl:3: expected a JSON object",
        ),
        (['{"caption": "a"}'], r"msrvtt_ret_train\.jsonl:1: missing key\(s\) clip_name"),
    ],
)
def test_malformed_annotation_line_names_file_and_line(tmp_path, lines, message):
    path = tmp_path / "msrvtt_ret_train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=message):
        read_jsonl(path, ("caption", "clip_name"))
    cfg = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path))
    with pytest.raises(AnnotationError, match=message):
        build_dataset("msrvtt_ret", "train", cfg, build_tokenizer(), IMAGENET_RGB)


def test_missing_annotation_file_is_named(tmp_path):
    cfg = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="msrvtt_mc_train.jsonl"):
        build_dataset("msrvtt_mc", "train", cfg, build_tokenizer(), IMAGENET_RGB)
