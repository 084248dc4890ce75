"""VQA v2 against the official formats and evaluation: the converter on files laid out as the official ones,
its answer vocabulary counted as the original counts it, and local scores equal to a brute-force
re-statement of the official accuracy (GT-Vision-Lab/VQA vqaEval.py, its current version)."""

import json

import pytest
from PIL import Image
from test_metrics_reference import official_vqa_accuracy

from clipbert.data.annotations import AnnotationError
from clipbert.data.config import DataConfig
from clipbert.data.convert_vqa import convert, main
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.data.tokenizer import build_tokenizer
from clipbert.data.vqa_answers import answer_scores, normalize_answer
from clipbert.train.evaluate import write_vqa_predictions

HUMANS = {  # question_id -> the ten raw human answers, as people typed them
    458752000: ["net"] * 4 + ["netting"] * 3 + ["mesh", "Net", "the net"],
    458752001: ["pitcher"] * 10,  # unanimous: the official script normalizes nothing
    458752002: ["2", "2", "two", "2", "3", "2", "2", "Two", "2", "2"],
    262148000: ["café"] * 6 + ["cafe", "coffee shop", "coffee shop", "restaurant"],
}
IMAGE_OF = {458752000: 458752, 458752001: 458752, 458752002: 458752, 262148000: 262148}
SUBTYPE_OF = {458752: "train2014", 262148: "val2014"}


def official_questions(path, subtype, qids):
    data = {
        "info": {},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "license": {},
        "data_subtype": subtype,
        "questions": [
            {"image_id": IMAGE_OF[q], "question": f"question {q}?", "question_id": q} for q in qids
        ],
    }
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def official_annotations(path, subtype, qids, majority=None):
    anns = [
        {
            "question_type": "what",
            "multiple_choice_answer": (majority or {}).get(q, normalize_answer(HUMANS[q][0])),
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(HUMANS[q])
            ],
            "image_id": IMAGE_OF[q],
            "answer_type": "number" if q == 458752002 else "other",
            "question_id": q,
        }
        for q in qids
    ]
    data = {"info": {}, "license": {}, "data_subtype": subtype, "annotations": anns}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


# the official per-question accuracy, transcribed once (tests/test_metrics_reference.py)
official_accuracy = official_vqa_accuracy


# --- the answer vocabulary ---------------------------------------------------------------------------------


def test_a_file_counted_twice_for_the_vocabulary_counts_each_question_once(tmp_path):
    """The original counts, per answer, the set of question ids whose majority answer it is. Train passed
    as --annotations and again in --ans2label-also counted every train question twice: with min_count 2,
    answers of one question each made a vocabulary instead of the error."""
    qids = [458752000, 458752001, 458752002]
    q_path = official_questions(tmp_path / "q.json", "train2014", qids)
    a_path = official_annotations(tmp_path / "a.json", "train2014", qids)
    args = ["--questions", str(q_path), "--annotations", str(a_path), "--image-dir", "train2014"]
    args += ["--out", str(tmp_path / "o.jsonl"), "--ans2label", str(tmp_path / "v.json"), "--min-count", "2"]
    assert main([*args, "--ans2label-also", str(a_path)]) == 2
    assert not (tmp_path / "v.json").exists()
    # val, whose questions are others, does count: its majority "net" reaches 2 with train's
    val = [262148000]
    val_a = official_annotations(tmp_path / "val_a.json", "val2014", val, majority={262148000: "net"})
    assert main([*args, "--ans2label-also", str(a_path), str(val_a)]) == 0
    assert json.loads((tmp_path / "v.json").read_text()) == {"net": 0}


def test_the_vocabulary_holds_the_normalized_majority_answers_of_train_and_val(tmp_path):
    train, val = [458752000, 458752001, 458752002], [262148000]
    q_path = official_questions(tmp_path / "q.json", "train2014", train)
    a_path = official_annotations(tmp_path / "a.json", "train2014", train, majority={458752000: "Net."})
    val_a = official_annotations(tmp_path / "val_a.json", "val2014", val)
    counts = convert(q_path, a_path, "train2014", tmp_path / "o.jsonl", tmp_path / "v.json", 1, (val_a,))
    assert counts == {"questions": 3, "answer_vocab": 4}
    assert json.loads((tmp_path / "v.json").read_text(encoding="utf-8")) == {
        "2": 0,
        "café": 1,
        "net": 2,
        "pitcher": 3,
    }


# --- the converter's lines through the dataset and the results file ---------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def write_coco_images(root):
    for image_id, subtype in SUBTYPE_OF.items():
        folder = root / subtype
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 14), (image_id % 251, 40, 90)).save(
            folder / f"COCO_{subtype}_{image_id:012d}.jpg"
        )


def test_converted_val_scores_the_official_accuracy_and_writes_the_submission_format(tmp_path, tokenizer):
    ann_dir, images = tmp_path / "annotations", tmp_path / "images"
    write_coco_images(images)
    train, val = [458752000, 458752001, 458752002], [262148000]
    q_train = official_questions(tmp_path / "q_train.json", "train2014", train)
    a_train = official_annotations(tmp_path / "a_train.json", "train2014", train)
    vocab = ann_dir / "vqa_ans2label.json"
    convert(q_train, a_train, "train2014", ann_dir / "vqa_train.jsonl", vocab, 1)
    # val with the train images' questions too, so every kind of answer set is scored
    q_val = official_questions(tmp_path / "q_val.json", "val2014", val + train)
    a_val = official_annotations(tmp_path / "a_val.json", "val2014", val + train)
    convert(q_val, a_val, "val2014", ann_dir / "vqa_val.jsonl")
    lines = [
        json.loads(line) for line in (ann_dir / "vqa_val.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert lines[0]["file"] == "val2014/COCO_val2014_000000262148.jpg" and lines[0]["answers"][0] == "café"
    for line in lines[1:]:  # image file names come from data_subtype, the folder from --image-dir
        line["file"] = line["file"].replace("val2014", "train2014")
    (ann_dir / "vqa_val.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")

    cfg = DataConfig(ann_dir=str(ann_dir), image_root=str(images), image_size=16, num_workers=0)
    dataset = build_dataset("vqa", "val", cfg, tokenizer, IMAGENET_RGB)
    ans2label = dataset.ans2label
    for index, qid in enumerate(val + train):
        item = dataset[(0, index)]
        assert item["question_id"] == qid and item["answered"]
        got = dict(zip(item["answer_labels"], item["answer_scores"]))
        for answer, label in ans2label.items():
            want = official_accuracy(answer, HUMANS[qid])
            assert got.get(label, 0.0) == pytest.approx(want, abs=1e-9), (qid, answer)

    records = [{"question_id": qid, "pred": ans2label["2"]} for qid in val + train]
    write_vqa_predictions(records, ans2label, tmp_path / "results.json")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == [{"question_id": qid, "answer": "2"} for qid in val + train]
    assert all(type(r["question_id"]) is int and type(r["answer"]) is str for r in results)


def test_test_dev_questions_convert_without_answers_and_name_the_test2015_images(tmp_path):
    q_path = official_questions(tmp_path / "q.json", "test-dev2015", [458752000, 262148000])
    assert convert(q_path, None, "test2015", tmp_path / "test.jsonl") == {
        "questions": 2,
        "answer_vocab": None,
    }
    lines = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert [line["file"] for line in lines] == [
        "test2015/COCO_test2015_000000458752.jpg",
        "test2015/COCO_test2015_000000262148.jpg",
    ]
    assert all("answers" not in line and type(line["question_id"]) is int for line in lines)


# --- normalization and accuracy against the official rules ------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1,000", "1000"),  # a digit-comma-digit deletes the punctuation instead of spacing it
        ("red,white", "red white"),
        ("red, white", "red white"),
        ("t-shirt", "t shirt"),
        ("2.5", "2.5"),  # a period before a digit stays
        ("yes.", "yes"),
        ("5.", "5"),
        ("Three", "3"),
        ("none", "0"),
        ("The Cat", "cat"),
        ("dont know", "don't know"),
        ("im", "im"),  # the official table's "Im" key never matches a lowercased word
        ("10:30", "10:30"),  # colons and apostrophes are kept
        ("girl's", "girl's"),
    ],
)
def test_normalization_follows_the_official_steps(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10])
def test_scores_with_fewer_humans_follow_the_leave_one_out_rule_but_one_answer_scores_1(n):
    answers = ["yes"] * (n // 2 + 1) + ["no"] * (n - n // 2 - 1)
    scores = answer_scores(answers, as_evaluated=True)
    for answer, score in scores.items():
        want = 1.0 if n == 1 else official_accuracy(answer, answers)  # n == 1: the documented choice
        assert score == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("n, expected", [(2, 1 / 3), (3, 2 / 3), (4, 1.0), (10, 1.0)])
def test_unanimous_humans_are_still_left_out_one_at_a_time(n, expected):
    """All humans typing one string skips normalization, not the leave-one-out rule: two agreeing humans
    score 1/3 (each left out leaves one match) officially and in training; evaluation gave 1.0."""
    assert answer_scores(["Yes"] * n, as_evaluated=True) == {"Yes": pytest.approx(expected, abs=1e-12)}
    assert answer_scores(["Yes"] * n) == {"yes": pytest.approx(expected, abs=1e-12)}
    assert official_accuracy("Yes", ["Yes"] * n) == pytest.approx(expected, abs=1e-12)


def test_an_image_id_written_as_digits_in_one_file_matches_the_number_in_the_other(tmp_path):
    """Digit-string image ids are accepted (they name the file); the pairing check compared 42 with "42" and
    refused the files with "has image_id 42, ... says 42"."""
    qids = [458752000]
    q_path = official_questions(tmp_path / "q.json", "train2014", qids)
    data = json.loads(q_path.read_text())
    data["questions"][0]["image_id"] = "458752"
    q_path.write_text(json.dumps(data))
    a_path = official_annotations(tmp_path / "a.json", "train2014", qids)
    assert convert(q_path, a_path, "train2014", tmp_path / "o.jsonl")["questions"] == 1
    line = json.loads((tmp_path / "o.jsonl").read_text())
    assert line["file"] == "train2014/COCO_train2014_000000458752.jpg"
    # a real mismatch is still refused, both ids shown as written
    data["questions"][0]["image_id"] = "458753"
    q_path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"has image_id 458752, .*q\.json says '458753'"):
        convert(q_path, a_path, "train2014", tmp_path / "o.jsonl")
