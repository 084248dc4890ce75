"""VQA training against the original ClipBERT (run_vqa.py, dataset_vqa.py, modeling.py): the loss and its
reduction, the soft targets and the answer vocabulary normalized alike, and answer lines the trainer must
refuse or flag rather than silently train on all-zero targets."""

import json
import logging

import pytest
import torch

from clipbert.data.annotations import AnnotationError
from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.data.vqa_answers import build_ans2label
from clipbert.train.tasks import vqa_loss


def build(tmp_path, tokenizer, split, rows, ans2label):
    (tmp_path / f"vqa_{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "vqa_ans2label.json").write_text(json.dumps(ans2label))
    config = DataConfig(ann_dir=str(tmp_path), video_dir=str(tmp_path))
    return build_dataset("vqa", split, config, tokenizer, IMAGENET_RGB)


def line(qid=1, **answers):
    return {"question_id": qid, "question": "how many dogs?", "file": "a.jpg", **answers}


def test_loss_is_the_originals_mean_bce_times_the_number_of_answers():
    # modeling.py: instance_bce_with_logits(reduction="none"); run_vqa.py: loss.mean() * num_labels
    b, k = 3, 7
    logits = torch.randn(b, k)
    labels = torch.tensor([[2, 5], [0, -100], [-100, -100]])  # the last question: no vocabulary answer
    scores = torch.tensor([[1.0, 0.3], [0.6, 0.0], [0.0, 0.0]])
    dense = torch.zeros(b, k)
    dense[0, 2], dense[0, 5], dense[1, 0] = 1.0, 0.3, 0.6  # the original's _get_vqa_targets
    original = torch.nn.functional.binary_cross_entropy_with_logits(logits, dense, reduction="none")
    got = vqa_loss(logits[:, None, None], labels, scores)
    torch.testing.assert_close(got, original.mean() * k)


def test_ten_human_answers_give_the_releases_soft_scores_and_unknown_answers_keep_the_question(
    tmp_path, tokenizer
):
    # dataset_vqa.py's example labels: {"down": 1, "at table": 0.3, ...}: 0.3 / 0.6 / 0.9 / 1 per 1-4+ humans
    answers = ["2"] * 4 + ["three"] * 3 + ["1"] * 2 + ["four"]
    rows = [line(answers=answers), line(2, answers=["a cat"] * 10)]
    data = build(tmp_path, tokenizer, "train", rows, {"2": 0, "3": 1, "1": 2, "4": 3})
    assert data.targets(data.examples[0]) == ([0, 1, 2, 3], [1.0, 0.9, 0.6, 0.3])
    # no answer in the vocabulary: trained with all-zero targets (kept, as in the usual VQA training)
    assert data.targets(data.examples[1]) == ([], [])


def test_the_vocabulary_and_the_targets_normalize_an_answer_alike(tmp_path, tokenizer):
    vocab = build_ans2label([["Two."]] * 9 + [["T-Shirt"]] * 9)
    assert vocab == {"2": 0, "t shirt": 1}
    rows = [line(answers=["two"] * 5 + ["2."] * 5), line(2, answers=["t-shirt"] * 10)]
    data = build(tmp_path, tokenizer, "train", rows, vocab)
    assert [data.targets(e) for e in data.examples] == [([0], [1.0]), ([1], [1.0])]


@pytest.mark.parametrize(
    "answers",
    [
        # the official annotation file's form: each answer a dict; str() of it matched no answer
        [{"answer": "2", "answer_confidence": "yes", "answer_id": i} for i in range(1, 11)],
        ["2"] * 9 + [None],  # a null answer read as the string "None", then as the number "0"
    ],
)
def test_answers_that_are_not_strings_are_refused_naming_the_line(tmp_path, tokenizer, answers):
    rows = [line(answers=["2"] * 10), line(2, answers=answers)]
    with pytest.raises(AnnotationError, match=r"vqa_train\.jsonl:2: answers must be a list of strings"):
        build(tmp_path, tokenizer, "train", rows, {"2": 0, "0": 1})


@pytest.mark.parametrize(
    ("given", "pattern"),
    [
        # a list under labels passed the check as "a list of strings", then failed .items() in a worker
        ({"labels": ["2"]}, r".*labels a \{answer: score\} object, got labels as list"),
        # a dict under answers was read as its keys, one human each: {"2": 0.3} trained "2" at 1.0
        ({"answers": {"2": 0.3}}, r"answers must be a list of strings .*, got answers as dict"),
    ],
)
def test_answers_and_labels_are_each_checked_for_their_own_form(tmp_path, tokenizer, given, pattern):
    with pytest.raises(AnnotationError, match=r"vqa_train\.jsonl:2: " + pattern):
        build(tmp_path, tokenizer, "train", [line(answers=["2"] * 10), line(2, **given)], {"2": 0})


def test_training_lines_without_answers_are_refused_but_test_lines_are_predicted(tmp_path, tokenizer):
    # a test-dev line in the training file trained every answer towards 0; the original stops there too
    rows = [line(answers=["2"] * 10), line(2), line(3)]
    with pytest.raises(AnnotationError, match=r"vqa_train\.jsonl: 2 line\(s\) \(lines 2, 3\) have no"):
        build(tmp_path, tokenizer, "train", rows, {"2": 0})
    assert len(build(tmp_path, tokenizer, "test", rows, {"2": 0})) == 3


def test_vocabulary_answers_no_target_can_reach_are_reported(tmp_path, tokenizer, caplog):
    # targets are normalized, so a vocabulary entry "Two" is never a target: a class trained only towards 0
    with caplog.at_level(logging.WARNING, logger="clipbert.data.datasets"):
        data = build(tmp_path, tokenizer, "train", [line(answers=["two"] * 10)], {"Two": 0, "yes": 1})
    assert data.targets(data.examples[0]) == ([], [])
    assert "1 answer(s) not in normalized form" in caplog.text and "'Two' (reads as '2')" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clipbert.data.datasets"):
        build(tmp_path, tokenizer, "train", [line(answers=["two"] * 10)], {"2": 0, "yes": 1})
    assert "normalized form" not in caplog.text


def test_a_missing_image_in_evaluation_scores_its_own_question_not_the_replacements(tmp_path, tokenizer):
    # The replacement's question and answers were scored under the missing image's question id: its answer
    # went to the results file as this question's, and an unanswered replacement dropped it from vqa_acc.
    from torchvision.io import write_png

    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(tmp_path / "ok.png"))
    rows = [
        {"question_id": 1, "question": "what color is it?", "file": "gone.png", "answers": ["red"] * 10},
        {"question_id": 2, "question": "is it?", "file": "ok.png"},  # unanswered (test-dev form)
    ]
    (tmp_path / "vqa_val.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "vqa_ans2label.json").write_text('{"red": 0, "yes": 1}')
    config = DataConfig(ann_dir=str(tmp_path), image_root=str(tmp_path), image_size=8)
    val = build_dataset("vqa", "val", config, tokenizer, IMAGENET_RGB)
    item = val[(0, 0)]
    assert (item["question_id"], item["source_index"]) == (1, 1) and "gone.png" in item["bad_videos"][0]
    assert item["input_ids"] == tokenize_question(tokenizer, rows[0])
    assert (item["answer_labels"], item["answer_scores"], item["answered"]) == ([0], [1.0], True)
    # training keeps the replacement's whole example: a consistent (image, question, answers) triple
    (tmp_path / "vqa_train.jsonl").write_text(
        "".join(json.dumps({**row, "answers": ["yes"] * 10}) + "\n" for row in rows)
    )
    item = build_dataset("vqa", "train", config, tokenizer, IMAGENET_RGB)[(0, 0)]
    assert item["input_ids"] == tokenize_question(tokenizer, rows[1]) and item["answer_labels"] == [1]


def tokenize_question(tokenizer, row):
    from clipbert.data.text import tokenize

    return tokenize(tokenizer, [row["question"]], 40, literal=True)
