"""The original ClipBERT release's annotation files (its txt_db jsonl files, renamed <task>_<split>.jsonl),
line for line as its readers take them: the right video, texts, labels and answer index, or an error naming
the file, line and field. Fixture lines follow the original's field names and value types; no video is
decoded (`visual` is replaced), so each test reads annotations only."""

import json
import logging

import pytest

from clipbert.data.annotations import AnnotationError
from clipbert.data.config import DataConfig
from clipbert.data.datasets import RetrievalEvalData, build_dataset, read_task_annotations
from clipbert.data.preprocess import IMAGENET_RGB


def write_lines(path, rows, newline="\n"):
    path.write_bytes("".join(json.dumps(row) + newline for row in rows).encode())


def build(tmp_path, tokenizer, task, split, rows, ans2label=None, **cfg):
    write_lines(tmp_path / f"{task}_{split}.jsonl", rows)
    if ans2label is not None:
        (tmp_path / f"{task}_ans2label.json").write_text(json.dumps(ans2label))
    config = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path), itm_neg_size=1, seed=0, **cfg)
    data = build_dataset(task, split, config, tokenizer, IMAGENET_RGB)
    if not isinstance(data, RetrievalEvalData):
        data.visual = lambda video_id, epoch: {"video_id": video_id}  # annotations only: no decoding
    return data


def words(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def test_msrvtt_retrieval_lines_with_sen_id(tmp_path, tokenizer):
    rows = [
        {"caption": "a cartoon runs through an ice cave", "clip_name": "video2960", "sen_id": 0},
        {"caption": "a man talks", "clip_name": "video2960", "sen_id": 1},
        {"caption": "a dog swims", "clip_name": "video7", "sen_id": 2},
    ]
    train = build(tmp_path, tokenizer, "msrvtt_ret", "train", rows)
    assert [(v, len(t)) for v, t in train.videos] == [("video2960", 2), ("video7", 1)]
    test = build(tmp_path, tokenizer, "msrvtt_ret", "test", rows)
    assert test.video_ids == ["video2960", "video7"] and test.text_to_video.tolist() == [0, 0, 1]


@pytest.mark.parametrize("task", ["didemo_ret", "anet_ret"])
def test_paragraph_retrieval_reads_the_original_caption_paragraphs(tmp_path, tokenizer, task):
    # The original's run_video_retrieval.py reads "caption" (the whole paragraph) and "clip_name" for DiDeMo
    # and ActivityNet alike; other releases give the paragraph as a list of sentences. Both were refused
    # ("missing key(s) sentences").
    rows = [
        {"caption": "a man walks in. he sits down.", "clip_name": "v_abc", "sen_id": 0},
        {"caption": ["a girl sings.", " she waves. "], "clip_name": "10015567@N08_3655084291"},
        {"sentences": ["the dog runs.", "it stops."], "clip_name": "v_xyz", "timestamps": [[0, 5], [5, 9]]},
    ]
    train = build(tmp_path, tokenizer, task, "train", rows)
    assert train.videos == [
        ("v_abc", ["a man walks in. he sits down."]),
        ("10015567@N08_3655084291", ["a girl sings. she waves."]),
        ("v_xyz", ["the dog runs. it stops."]),
    ]
    assert read_task_annotations(tmp_path / f"{task}_train.jsonl", task) == rows  # clipbert.predict's reader
    test = build(tmp_path, tokenizer, task, "val", rows)
    assert test.video_ids == ["v_abc", "10015567@N08_3655084291", "v_xyz"]
    assert words(tokenizer, test.input_ids[1]) == "a girl sings. she waves."


def test_a_paragraph_line_without_text_names_file_line_and_keys(tmp_path, tokenizer):
    rows = [{"caption": "a man walks.", "clip_name": "a"}, {"clip_name": "b", "duration": 30.0}]
    with pytest.raises(AnnotationError, match=r"didemo_ret_train\.jsonl:2: missing key sentences.*caption"):
        build(tmp_path, tokenizer, "didemo_ret", "train", rows)
    rows[1]["caption"] = None
    with pytest.raises(
        AnnotationError, match=r"didemo_ret_train\.jsonl:2: caption must be a string or a list"
    ):
        build(tmp_path, tokenizer, "didemo_ret", "train", rows)


@pytest.mark.parametrize(
    ("task", "video_key", "answer_type"),
    [("msrvtt_qa", "video_id", "what"), ("tgif_frameqa", "gif_name", "object")],
)
def test_open_qa_lines_give_video_label_and_answer_type(tmp_path, tokenizer, task, video_key, answer_type):
    rows = [
        {
            "answer": "couch",
            "question": "what are three people sitting on?",
            video_key: "video6513",
            "answer_type": answer_type,
        },
        {
            "answer": "cookie",
            "question": "what is placed in the cone ?",
            video_key: 42,
            "answer_type": answer_type,
        },
    ]
    data = build(tmp_path, tokenizer, task, "val", rows, ans2label={"cookie": 0, "couch": 1})
    first, second = data.load(0, 0), data.load(1, 0)
    assert (first["video_id"], first["labels"], first["answer_type"]) == ("video6513", 1, answer_type)
    assert (second["video_id"], second["labels"]) == ("42", 0)  # an int id names the file 42.<ext>
    assert words(tokenizer, first["input_ids"][0]) == "what are three people sitting on?"


@pytest.mark.parametrize("task", ["tgif_action", "tgif_transition"])
def test_tgif_multiple_choice_lines_give_options_and_answer_index(tmp_path, tokenizer, task):
    options = ["stuff marshmallow", "holds a phone towards face", "fall over", "talk", "flap wings"]
    row = {
        "gif_name": "tumblr_nk172bbdPI1u1lr18o1_250",
        "question": "what does the butterfly do 10 times ?",
        "options": options,
        "answer": 4,
        "key": 7,
        "vid_id": "x",
    }  # extra fields are tolerated
    item = build(tmp_path, tokenizer, task, "test", [row]).load(0, 0)
    assert item["video_id"] == "tumblr_nk172bbdPI1u1lr18o1_250" and item["labels"] == 4
    assert len(item["input_ids"]) == 5
    assert words(tokenizer, item["input_ids"][4]) == "what does the butterfly do 10 times? flap wings"


def test_msrvtt_mc_lines_with_qid(tmp_path, tokenizer):
    row = {"qid": 0, "clip_name": "video7020", "options": [f"caption {k}" for k in range(5)], "answer": 3}
    item = build(tmp_path, tokenizer, "msrvtt_mc", "test", [row]).load(0, 0)
    assert item["video_id"] == "video7020" and item["labels"] == 3
    assert [words(tokenizer, ids) for ids in item["input_ids"]] == row["options"]


def test_crlf_line_ends_and_a_blank_trailing_line(tmp_path, tokenizer):
    rows = [{"caption": "a dog", "clip_name": "video1"}, {"caption": "a cat", "clip_name": "video2"}]
    path = tmp_path / "msrvtt_ret_train.jsonl"
    write_lines(path, rows, newline="\r\n")
    path.write_bytes(path.read_bytes() + b"\r\n")
    config = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path), itm_neg_size=1)
    data = build_dataset("msrvtt_ret", "train", config, tokenizer, IMAGENET_RGB)
    assert data.videos == [("video1", ["a dog"]), ("video2", ["a cat"])]


def _with_blank_lines(path, rows):
    """rows on lines 1, 3, 5, ...: a blank line after each (as a CRLF file read as two line ends can be)."""
    path.write_text("".join(json.dumps(row) + "\n\n" for row in rows))


def test_a_bad_answer_index_names_its_line_after_blank_lines(tmp_path, tokenizer):
    # Lines were counted among the non-blank ones, so the error named the wrong line of such a file.
    good = {"qid": 0, "clip_name": "v", "options": ["a", "b", "c", "d", "e"], "answer": 0}
    _with_blank_lines(tmp_path / "msrvtt_mc_test.jsonl", [good, {**good, "answer": 5}])
    config = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path))
    with pytest.raises(AnnotationError, match=r"msrvtt_mc_test\.jsonl:3: answer 5 is not an option index"):
        build_dataset("msrvtt_mc", "test", config, tokenizer, IMAGENET_RGB)
    _with_blank_lines(tmp_path / "msrvtt_mc_test.jsonl", [good, {**good, "options": ["a", "b"]}])
    with pytest.raises(AnnotationError, match=r"msrvtt_mc_test\.jsonl:3: 2 options"):
        build_dataset("msrvtt_mc", "test", config, tokenizer, IMAGENET_RGB)


def test_unknown_qa_answers_are_reported_by_their_file_line(tmp_path, tokenizer, caplog):
    rows = [
        {"answer": "couch", "question": "q1", "video_id": "v1", "answer_type": "what"},
        {"answer": "zebra", "question": "q2", "video_id": "v2", "answer_type": "what"},
    ]
    _with_blank_lines(tmp_path / "msrvtt_qa_val.jsonl", rows)
    (tmp_path / "msrvtt_qa_ans2label.json").write_text('{"couch": 0}')
    config = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="clipbert.data.datasets"):
        data = build_dataset("msrvtt_qa", "val", config, tokenizer, IMAGENET_RGB)
    assert "(lines 3)" in caplog.text and data.examples[1]["answer"] == "zebra"


def test_a_string_answer_index_names_file_line_and_field(tmp_path, tokenizer):
    row = {"gif_name": "g", "question": "what", "options": ["a", "b", "c", "d", "e"], "answer": "4"}
    with pytest.raises(
        AnnotationError, match=r"tgif_action_train\.jsonl:1: answer must be an integer, got \"4\""
    ):
        build(tmp_path, tokenizer, "tgif_action", "train", [row])


@pytest.mark.parametrize(
    ("task", "row", "missing"),
    [
        # the release kept images in an LMDB keyed by id: here each line names its image file
        (
            "vqa",
            {"question": "what?", "image_id": 262148, "question_id": 262148000, "labels": {"down": 1}},
            "file",
        ),
        ("pretrain", {"coco_id": 9, "caption": "a plate of food"}, "image_id, file"),
    ],
)
def test_image_lines_without_a_file_name_the_missing_keys(tmp_path, tokenizer, task, row, missing):
    with pytest.raises(AnnotationError, match=rf"{task}_train\.jsonl:1: missing key\(s\) {missing}$"):
        build(tmp_path, tokenizer, task, "train", [row], ans2label={"down": 0} if task == "vqa" else None)


def test_a_bad_vqa_answers_value_names_its_line_after_blank_lines(tmp_path, tokenizer):
    good = {"question_id": 1, "question": "what color?", "file": "a.jpg", "labels": {"red": 1.0}}
    _with_blank_lines(tmp_path / "vqa_val.jsonl", [good, {**good, "labels": "red"}])
    (tmp_path / "vqa_ans2label.json").write_text('{"red": 0}')
    config = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path))
    with pytest.raises(AnnotationError, match=r"vqa_val\.jsonl:3: answers must be a list"):
        build_dataset("vqa", "val", config, tokenizer, IMAGENET_RGB)


def test_vqa_label_scores_are_checked_by_line_and_merged_by_their_best(tmp_path, tokenizer):
    # a score that is not a number in [0, 1] failed float() in a worker, naming nothing; two keys that
    # normalize alike ("Two", "2") kept whichever came last
    good = {"question_id": 1, "question": "how many?", "file": "a.jpg", "labels": {"Two": 1.0, "2": 0.3}}
    (tmp_path / "vqa_ans2label.json").write_text('{"2": 0, "3": 1}')
    config = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path))
    for bad in ("high", None, 1.5, True):
        _with_blank_lines(tmp_path / "vqa_val.jsonl", [good, {**good, "labels": {"3": bad}}])
        with pytest.raises(
            AnnotationError, match=r"vqa_val\.jsonl:3: labels scores must be numbers in \[0, 1\]"
        ):
            build_dataset("vqa", "val", config, tokenizer, IMAGENET_RGB)
    _with_blank_lines(tmp_path / "vqa_val.jsonl", [good])
    data = build_dataset("vqa", "val", config, tokenizer, IMAGENET_RGB)
    assert data.targets(data.examples[0]) == ([0], [1.0])
