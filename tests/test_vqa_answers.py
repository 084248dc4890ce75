"""VQA answers: official normalization and accuracy, the answer vocabulary, the official-file converter."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipbert.data.annotations import AnnotationError
from clipbert.data.convert_vqa import convert, main
from clipbert.data.vqa_answers import answer_scores, build_ans2label, normalize_answer


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("yes.", "yes"),
        ("Yes", "yes"),
        ("Two", "2"),
        ("ten", "10"),
        ("none", "0"),
        ("the dog", "dog"),
        ("A man on an elephant", "man on elephant"),
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("im", "im"),  # the official key is "Im", which lowercased words never match
        ("lets", "lets"),  # the official entry is "let's" -> "let's"
        ("couldnt've", "couldn't've"),
        ("somebody'd", "somebodyd"),  # the official table maps this one backwards; the server scores so
        ("twas", "'twas"),
        ("whats that", "what's that"),
        ("shouldve", "should've"),
        ("don't", "don't"),  # already an apostrophe form: the apostrophe is not punctuation
        ("  red \t and\nblue  ", "red and blue"),
        ("2.5", "2.5"),  # decimal point: a digit follows
        ("5.", "5"),
        ("e.g.", "eg"),
        ("." * 40 + "x", "." * 8 + "x"),  # the official call removes at most 32 periods (re.UNICODE as count)
        ("1,000", "1000"),  # a digit-comma-digit deletes marks instead of spacing them
        ("t-shirt", "t shirt"),  # glued words stay apart
        ("red, white", "red white"),  # the mark touches a space: deleted
        ("hello,world", "hello world"),
        ("(yes)", "yes"),
        ("what?!", "what"),
        ("left/right", "left right"),
        ("the", ""),
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_is_idempotent_on_examples():
    for raw in ["Two dogs.", "t-shirt", "1,000", "dont know", "the   end", "twas", "somebody'd"]:
        once = normalize_answer(raw)
        assert normalize_answer(once) == once


@pytest.mark.parametrize("c, expected", [(1, 0.3), (2, 0.6), (3, 0.9)] + [(c, 1.0) for c in range(4, 11)])
def test_answer_scores_table_for_ten_humans(c, expected):
    answers = ["Yes."] * c + [f"other{i}" for i in range(10 - c)]
    assert answer_scores(answers)["yes"] == pytest.approx(expected, abs=1e-12)


def test_answer_scores_single_human_and_empty():
    assert answer_scores(["Two"]) == {"2": 1.0}
    assert answer_scores([]) == {}


def test_answer_scores_merges_spellings_and_drops_empty_candidates():
    scores = answer_scores(["two", "2", "Two.", "the", "three"] + ["3"] * 5)
    assert set(scores) == {"2", "3"}  # "the" normalizes to "" and is no candidate...
    assert scores["2"] == pytest.approx(0.9)  # ...but still counts among the 10 humans
    assert scores["3"] == pytest.approx(1.0)


def leave_one_out_accuracy(candidate: str, answers: list[str]) -> float:
    """The official definition, computed literally over the n subsets of n-1 humans."""
    normalized = [normalize_answer(a) for a in answers]
    accs = []
    for left_out in range(len(normalized)):
        others = normalized[:left_out] + normalized[left_out + 1 :]
        accs.append(min(1.0, sum(a == candidate for a in others) / 3))
    return sum(accs) / len(accs)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(["yes", "Yes.", "no", "two", "2", "red", "the", "dont", "don't"]), min_size=2)
)
def test_answer_scores_matches_brute_force_leave_one_out(answers):
    scores = answer_scores(answers)
    expected_keys = {normalize_answer(a) for a in answers} - {""}
    assert set(scores) == expected_keys
    for candidate, score in scores.items():
        assert score == pytest.approx(leave_one_out_accuracy(candidate, answers), abs=1e-12)


def test_build_ans2label_orders_by_count_then_alphabetically():
    questions = [["yes"]] * 3 + [["No."]] * 3 + [["two"]] * 4 + [["cat"]] * 1
    assert build_ans2label(questions, min_count=3) == {"2": 0, "no": 1, "yes": 2}
    assert build_ans2label(questions, min_count=1) == {"2": 0, "no": 1, "yes": 2, "cat": 3}


def test_build_ans2label_counts_only_each_questions_majority():
    # "red" is a minority answer of every question, so it is nobody's majority answer.
    questions = [["blue", "blue", "red"]] * 2 + [["green", "red", "green"]] * 2
    assert build_ans2label(questions, min_count=2) == {"blue": 0, "green": 1}


def test_build_ans2label_empty_result_names_min_count():
    with pytest.raises(ValueError, match="min_count=9"):
        build_ans2label([["yes"]] * 8, min_count=9)


# --- converter -------------------------------------------------------------------------------------------


def write_official(tmp_path, with_extra_annotation=False, drop_annotation_of=None):
    questions = {
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 42, "question": "What color is it?", "question_id": 420},
            {"image_id": 42, "question": "How many cats?", "question_id": 421},
            {"image_id": 7, "question": "Is it raining?", "question_id": 70},
        ],
    }
    answers = {420: ["Red"] * 7 + ["red."] * 3, 421: ["two"] * 6 + ["3"] * 4, 70: ["yes"] * 10}
    majority = {420: "red", 421: "2", 70: "yes"}
    image_of = {420: 42, 421: 42, 70: 7}
    anns = [
        {
            "question_id": qid,
            "image_id": image_of[qid],
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(ans)
            ],
            "multiple_choice_answer": majority[qid],
            "answer_type": "number" if qid == 421 else "other",
            "question_type": "what",
        }
        for qid, ans in answers.items()
        if qid != drop_annotation_of
    ]
    if with_extra_annotation:
        anns.append(dict(anns[0], question_id=999))
    q_path, a_path = tmp_path / "questions.json", tmp_path / "annotations.json"
    q_path.write_text(json.dumps(questions))
    a_path.write_text(json.dumps({"annotations": anns}))
    return q_path, a_path


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_convert_with_annotations_and_vocabulary(tmp_path):
    q_path, a_path = write_official(tmp_path)
    out, vocab_path = tmp_path / "out" / "vqa_val.jsonl", tmp_path / "vqa_ans2label.json"
    counts = convert(q_path, a_path, "val2014", out, vocab_path, min_count=1)
    assert counts == {"questions": 3, "answer_vocab": 3}
    lines = read_lines(out)
    assert [line["question_id"] for line in lines] == [420, 421, 70]
    assert lines[0] == {
        "question_id": 420,
        "image_id": 42,
        "question": "What color is it?",
        "file": "val2014/COCO_val2014_000000000042.jpg",
        "answers": ["Red"] * 7 + ["red."] * 3,  # raw: normalization happens where scores are made
        "answer_type": "other",
        "question_type": "what",
    }
    assert json.loads(vocab_path.read_text()) == {"2": 0, "red": 1, "yes": 2}


def test_convert_without_annotations_writes_no_answer_keys(tmp_path):
    q_path, _ = write_official(tmp_path)
    out = tmp_path / "vqa_test.jsonl"
    assert convert(q_path, None, "test2015", out) == {"questions": 3, "answer_vocab": None}
    lines = read_lines(out)
    assert lines[2] == {
        "question_id": 70,
        "image_id": 7,
        "question": "Is it raining?",
        "file": "test2015/COCO_val2014_000000000007.jpg",
    }


def test_convert_vocabulary_needs_annotations(tmp_path):
    q_path, _ = write_official(tmp_path)
    with pytest.raises(ValueError, match="annotations"):
        convert(q_path, None, "val2014", tmp_path / "o.jsonl", tmp_path / "v.json")


def test_convert_min_count_too_high_names_min_count(tmp_path):
    q_path, a_path = write_official(tmp_path)
    with pytest.raises(ValueError, match="min_count=2"):
        convert(q_path, a_path, "val2014", tmp_path / "o.jsonl", tmp_path / "v.json", min_count=2)


def test_convert_question_without_annotation_names_question_id(tmp_path):
    q_path, a_path = write_official(tmp_path, drop_annotation_of=421)
    out = tmp_path / "o.jsonl"
    with pytest.raises(AnnotationError, match=r"annotations\.json.*question_id 421"):
        convert(q_path, a_path, "val2014", out)
    assert not out.exists()  # checked before anything is written


def test_convert_annotation_for_unknown_question_names_it(tmp_path):
    q_path, a_path = write_official(tmp_path, with_extra_annotation=True)
    with pytest.raises(AnnotationError, match="question_id 999"):
        convert(q_path, a_path, "val2014", tmp_path / "o.jsonl")


def test_convert_malformed_json_names_file(tmp_path):
    q_path, a_path = write_official(tmp_path)
    a_path.write_text('{"annotations": [')
    with pytest.raises(AnnotationError, match=r"annotations\.json"):
        convert(q_path, a_path, "val2014", tmp_path / "o.jsonl")


def test_convert_missing_file_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        convert(tmp_path / "nowhere.json", None, "val2014", tmp_path / "o.jsonl")


def test_convert_questions_without_subtype_is_an_error(tmp_path):
    q_path, _ = write_official(tmp_path)
    q_path.write_text(json.dumps({"questions": []}))
    with pytest.raises(AnnotationError, match=r"questions\.json.*data_subtype"):
        convert(q_path, None, "val2014", tmp_path / "o.jsonl")


def test_cli_prints_summary(tmp_path, capsys):
    q_path, a_path = write_official(tmp_path)
    out, vocab_path = tmp_path / "o.jsonl", tmp_path / "v.json"
    args = ["--questions", str(q_path), "--annotations", str(a_path), "--image-dir", "val2014"]
    main([*args, "--out", str(out), "--ans2label", str(vocab_path), "--min-count", "1"])
    assert capsys.readouterr().out.strip() == f"wrote 3 questions to {out}; 3 answers"
    assert len(read_lines(out)) == 3


def test_the_vocabulary_can_count_more_annotation_files(tmp_path, capsys):
    q_path, a_path = write_official(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_anns = write_official(other)  # the same majority answers for other questions: each counts twice
    data = json.loads(other_anns.read_text())
    for ann in data["annotations"]:  # other questions: a question id counts once (see test_vqa_official.py)
        ann["question_id"] += 1000
    other_anns.write_text(json.dumps(data))
    out, vocab_path = tmp_path / "o.jsonl", tmp_path / "v.json"
    args = [
        "--questions",
        str(q_path),
        "--annotations",
        str(a_path),
        "--image-dir",
        "val2014",
        "--out",
        str(out),
    ]
    # once each: nothing reaches 2 (exit 2 with the message; was a ValueError traceback)
    assert main([*args, "--ans2label", str(vocab_path), "--min-count", "2"]) == 2
    assert "min_count=2" in capsys.readouterr().err
    main([*args, "--ans2label", str(vocab_path), "--min-count", "2", "--ans2label-also", str(other_anns)])
    assert json.loads(vocab_path.read_text()) == {"2": 0, "red": 1, "yes": 2}


def test_test_dev_questions_name_the_coco_test_images(tmp_path):
    q_path, _ = write_official(tmp_path)
    data = json.loads(q_path.read_text())
    q_path.write_text(json.dumps({**data, "data_subtype": "test-dev2015"}))
    convert(q_path, None, "test2015", tmp_path / "o.jsonl")
    assert read_lines(tmp_path / "o.jsonl")[0]["file"] == "test2015/COCO_test2015_000000000042.jpg"


@pytest.mark.parametrize(
    "field, value, pattern",
    [
        ("image_id", "abc", r"question #0 \(question_id 420\): image_id 'abc' is not an integer"),
        ("question_id", [1], r"question #0 \(question_id \[1\]\): question_id must be an int or a string"),
    ],
)
def test_converter_type_errors_name_the_file_and_question(tmp_path, field, value, pattern):
    q_path, _ = write_official(tmp_path)
    data = json.loads(q_path.read_text())
    data["questions"][0][field] = value
    q_path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"questions\.json: " + pattern):
        convert(q_path, None, "val2014", tmp_path / "o.jsonl")


def test_evaluation_scores_unanimous_answers_unnormalized_as_the_official_script():
    assert answer_scores(["none"] * 10) == {"0": 1.0}  # training target: normalized
    assert answer_scores(["none"] * 10, as_evaluated=True) == {"none": 1.0}  # the vocabulary's "0" scores 0
    assert answer_scores(["Yes"] * 10, as_evaluated=True) == {"Yes": 1.0}
    mixed = ["yes"] * 9 + ["Yes"]  # not unanimous as strings: normalized as usual
    assert answer_scores(mixed, as_evaluated=True) == answer_scores(mixed) == {"yes": 1.0}
