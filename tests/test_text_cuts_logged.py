"""Every text task says, once per dataset build, how many of its texts data.max_text_len cuts: QA, multiple
choice (per question+option text, as the model reads it), VQA and pre-training, as retrieval always did."""

import json
import shutil

import pytest

from clipbert.data import text as text_module
from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.data.text import count_cuts, pair_lengths, tokenize

LONG = " ".join(["the small red circle slowly moves"] * 20)  # about 120 tokens: past every shipped budget


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from clipbert.data import synthetic

    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(out, 6, 0, size="tiny", workers=1)
    return out


@pytest.fixture
def ann(bench, tmp_path):
    """A copy of the benchmark's annotations to edit."""
    return shutil.copytree(bench / "annotations", tmp_path / "annotations")


def make_cfg(bench, ann, **overrides):
    values = dict(ann_dir=str(ann), video_dir=str(bench / "videos"), image_root=str(bench), image_size=16)
    values.update(num_clips=1, num_test_clips=1, frames_per_clip=1, num_workers=0, seed=0)
    values.update(overrides)
    return DataConfig(**values)


def edit_first_line(ann, name, key, value):
    path = ann / name
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records[0][key] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return len(records)


def cut_messages(caplog, task):
    return [r.getMessage() for r in caplog.records if f"longer than data.max_text_len[{task!r}]" in r.message]


# task, split, the key of its text
SINGLE_TEXT = [
    ("msrvtt_qa", "train", "question"),
    ("tgif_frameqa", "val", "question"),
    ("vqa", "train", "question"),
    ("pretrain", "train", "caption"),
]


@pytest.mark.parametrize("task, split, key", SINGLE_TEXT)
def test_a_text_past_its_budget_is_counted_once_naming_file_and_budget(
    bench, ann, tokenizer, caplog, task, split, key
):
    # these tasks cut long texts silently: the model read cut questions/captions and no one was told
    lines = edit_first_line(ann, f"{task}_{split}.jsonl", key, LONG)
    cfg = make_cfg(bench, ann)
    dataset = build_dataset(task, split, cfg, tokenizer, IMAGENET_RGB)
    budget = cfg.max_text_len[task]
    said = cut_messages(caplog, task)
    assert said == [
        f"{dataset.ann_path}: 1 of {lines} texts are longer than "
        f"data.max_text_len[{task!r}]={budget} tokens and are cut to it"
    ]


@pytest.mark.parametrize("task, split", [(t, s) for t, s, _ in SINGLE_TEXT] + [("msrvtt_mc", "test")])
def test_texts_within_their_budget_say_nothing(bench, ann, tokenizer, caplog, task, split):
    build_dataset(task, split, make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    assert "max_text_len" not in caplog.text


def test_msrvtt_mc_counts_each_option(bench, ann, tokenizer, caplog):
    # MSRVTT-MC reads each option alone: one long option of one line is 1 of every option of the file
    path = ann / "msrvtt_mc_test.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["options"][1] = LONG
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    build_dataset("msrvtt_mc", "test", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    total = sum(len(r["options"]) for r in records)
    assert cut_messages(caplog, "msrvtt_mc") == [
        f"{path}: 1 of {total} texts are longer than data.max_text_len['msrvtt_mc']=100 tokens and are cut "
        "to it"
    ]


@pytest.mark.parametrize("task", ["tgif_action", "tgif_transition"])
def test_tgif_counts_question_plus_option_texts_as_the_model_reads_them(bench, ann, tokenizer, caplog, task):
    # two options of one line that fit the budget alone, and so does the question, but not together
    path = ann / f"{task}_train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["options"][1:3] = ["move " * 15 + "up", "move " * 15 + "down"]  # 16 words: 18 tokens alone
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    budget = 20
    question_words = len(tokenize(tokenizer, [records[0]["question"]], 100, literal=True)[0]) - 2
    assert question_words + 2 <= budget < question_words + 16 + 2
    dataset = build_dataset(
        task, "train", make_cfg(bench, ann, max_text_len={task: budget}), tokenizer, IMAGENET_RGB
    )
    questions = [ex["question"] for ex in dataset.examples for _ in ex["options"]]
    options = [option for ex in dataset.examples for option in ex["options"]]
    lengths = pair_lengths(tokenizer, questions, options, literal=True)
    assert sum(n > budget for n in lengths) == 2
    # what text_ids gives the model: exactly those two are cut to the budget
    read = [row for k in range(len(dataset)) for row in dataset.text_ids(k)]
    assert [len(row) == budget for row in read] == [n > budget for n in lengths]
    assert cut_messages(caplog, task) == [
        f"{path}: 2 of {len(options)} question+option texts are longer than "
        f"data.max_text_len[{task!r}]={budget} tokens and are cut to it"
    ]


def test_qa_counts_only_the_questions_it_keeps(bench, ann, tokenizer, caplog):
    # a training question whose answer is not in ans2label is dropped: its length is no one's concern
    path = ann / "msrvtt_qa_train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0].update(question=LONG, answer="not an answer anywhere")
    records[1]["question"] = LONG
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    dataset = build_dataset("msrvtt_qa", "train", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    assert len(dataset) == len(records) - 1
    assert cut_messages(caplog, "msrvtt_qa") == [
        f"{path}: 1 of {len(dataset)} texts are longer than data.max_text_len['msrvtt_qa']=100 tokens and "
        "are cut to it"
    ]


def test_count_cuts_matches_tokenize_and_samples_evenly_past_its_limit(tokenizer):
    texts = [LONG if k % 2 else "a small blue square" for k in range(40)] + ["[SEP] " * 20]
    rows = tokenize(tokenizer, texts, 12, literal=True)
    whole = sum(len(row) == 12 for row in rows)  # "[SEP]" read as 3 words each: cut too
    assert count_cuts(tokenizer, texts, 12) == (whole, len(texts))
    assert count_cuts(tokenizer, texts[:40], 12, sample=10) == (5, 10)  # every other text, evenly spaced
    options = [["move up", LONG]] * 6
    assert count_cuts(tokenizer, ["what moves"] * 6, 12, options) == (6, 12)
    assert count_cuts(tokenizer, ["what moves"] * 6, 12, options, sample=9) == (3, 6)  # 3 lines of 3 texts
    assert count_cuts(tokenizer, [], 12) == (0, 0)


def test_a_large_file_is_counted_on_a_sample_and_says_so(bench, ann, tokenizer, caplog, monkeypatch):
    # VQA has 650k questions: a whole pass at every build is too slow, so past CUT_SAMPLE texts it samples
    monkeypatch.setattr(text_module, "CUT_SAMPLE", 8)
    path = ann / "vqa_train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records[::2]:
        record["question"] = LONG
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    build_dataset("vqa", "train", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    assert len(records) > 8 and records[-1]["question"] != LONG  # so half of an evenly spaced 8 is long
    assert cut_messages(caplog, "vqa") == [
        f"{path}: about 16 of {len(records)} texts (4 of an evenly spaced sample of 8) are longer than "
        "data.max_text_len['vqa']=40 tokens and are cut to it"
    ]
