"""Text and annotation edge cases of the task datasets: special-token words in the data, truncation, odd
multiple-choice lines, ans2label files, empty captions, and the collate on odd batches."""

import json
import shutil

import numpy as np
import pytest
import torch

from clipbert.data.annotations import AnnotationError, DataError
from clipbert.data.collate import Collator, pad_token_lists
from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.data.text import mask_tokens, tokenize
from clipbert.data.tokenizer import build_tokenizer

CLS, SEP, PAD, MASK = 101, 102, 0, 103


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from clipbert.data import synthetic

    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(out, 6, 0, size="tiny", workers=1)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def ann(bench, tmp_path):
    """A copy of the benchmark's annotations to edit."""
    return shutil.copytree(bench / "annotations", tmp_path / "annotations")


def make_cfg(bench, ann, **overrides):
    values = dict(
        ann_dir=str(ann),
        video_dir=str(bench / "videos"),
        image_root=str(bench),
        image_size=16,
        num_clips=1,
        num_test_clips=1,
        frames_per_clip=1,
        num_workers=0,
        itm_neg_size=1,
        seed=0,
    )
    values.update(overrides)
    return DataConfig(**values)


def edit_lines(ann, name, edit):
    """Apply edit(records) to annotations/<name> (JSONL) in place."""
    path = ann / name
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    edit(records)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def inner(ids):
    """The ids between the leading [CLS] and the final [SEP]."""
    assert ids[0] == CLS and ids[-1] == SEP
    return ids[1:-1]


# --- tokenization -----------------------------------------------------------------------------------------


def test_special_token_words_in_data_are_plain_words(tokenizer):
    texts = ["the [SEP] red [MASK] circle [CLS] x [PAD]"]
    ids = tokenize(tokenizer, texts, 40, literal=True)[0]
    assert not set(inner(ids)) & set(tokenizer.all_special_ids)
    assert tokenizer.convert_ids_to_tokens(ids[2:5]) == ["[", "sep", "]"]
    # a question/option pair is one segment with its one final [SEP], whatever the words say
    pair = tokenize(tokenizer, ["what [SEP] is it"], 40, pairs=["a [SEP] b"], literal=True)[0]
    assert pair.count(SEP) == 1 and pair[-1] == SEP
    # clipbert.predict's fill-in prompts keep [MASK] a mask token (the default)
    assert MASK in tokenize(tokenizer, ["a small [MASK] square"], 40)[0]


def test_empty_whitespace_control_and_non_latin_texts(tokenizer):
    texts = ["", " \t\n ", "\u200b", "a\x00b", "猫 🐱 кошка"]
    rows = tokenize(tokenizer, texts, 20, literal=True)
    assert rows[0] == rows[1] == rows[2] == [CLS, SEP]
    assert len(inner(rows[3])) >= 1  # NUL dropped as BERT's cleaning drops control characters
    assert inner(rows[4]) and all(isinstance(t, int) for t in rows[4])


@pytest.mark.parametrize("pairs", [None, ["option " * 80]])
def test_truncation_keeps_cls_and_sep(tokenizer, pairs):
    rows = tokenize(tokenizer, ["word " * 300], 12, pairs=pairs, literal=True)
    assert len(rows[0]) == 12 and rows[0][0] == CLS and rows[0][-1] == SEP
    assert rows[0].count(SEP) == 1  # a pair is one segment (text.tokenize)
    ids, mask = pad_token_lists(rows + [[CLS, SEP]], PAD)
    assert mask.tolist()[0] == [1] * 12 and mask[1].sum() == 2 and (ids[1, 2:] == PAD).all()


def test_mask_tokens_masks_a_literal_mask_word(tokenizer):
    ids = tokenize(tokenizer, ["[MASK] [MASK] [MASK]"], 20, literal=True)[0]
    _, labels = mask_tokens(ids, tokenizer, np.random.default_rng(0), prob=1.0)
    assert all(label != -100 for label in labels[1:-1])  # every word of the text can be masked


# --- datasets ---------------------------------------------------------------------------------------------


def test_qa_question_with_special_token_words(bench, ann, tokenizer):
    def edit(records):
        records[0]["question"] = "what [SEP] color [MASK] is [PAD] it [CLS]"

    edit_lines(ann, "msrvtt_qa_train.jsonl", edit)
    dataset = build_dataset("msrvtt_qa", "train", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    ids = dataset[0]["input_ids"][0]
    assert not set(inner(ids)) & set(tokenizer.all_special_ids)


def test_tgif_pair_with_sep_in_the_question(bench, ann, tokenizer):
    def edit(records):
        records[0]["question"] = "what [SEP] does it do"

    edit_lines(ann, "tgif_action_train.jsonl", edit)
    dataset = build_dataset("tgif_action", "train", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    assert all(row.count(SEP) == 1 and row[-1] == SEP for row in dataset[0]["input_ids"])


def test_pretrain_caption_saying_mask(bench, ann, tokenizer):
    def edit(records):
        for record in records:
            record["caption"] = "a [MASK] circle"

    edit_lines(ann, "pretrain_train.jsonl", edit)
    cfg = make_cfg(bench, ann, mlm_prob=0.0, itm_neg_prob=0.0)
    item = build_dataset("pretrain", "train", cfg, tokenizer, IMAGENET_RGB)[0]
    assert MASK not in item["input_ids"][0]  # nothing masked (mlm_prob 0), and the word is not a mask


def test_retrieval_eval_long_empty_and_special_captions(bench, ann, tokenizer):
    def edit(records):
        records[0]["caption"] = "word " * 500
        records.append({"caption": "", "clip_name": records[0]["clip_name"]})
        records.append({"caption": "[PAD] [SEP]", "clip_name": records[0]["clip_name"]})

    edit_lines(ann, "msrvtt_ret_test.jsonl", edit)
    cfg = make_cfg(bench, ann)
    data = build_dataset("msrvtt_ret", "test", cfg, tokenizer, IMAGENET_RGB)
    ids, mask = data.input_ids, data.attention_mask
    assert ids.shape[1] == cfg.max_text_len["msrvtt_ret"] and ids[0, -1] == SEP and mask[0].all()
    assert mask[-2].sum() == 2 and ids[-2, :2].tolist() == [CLS, SEP]
    last = ids[-1, : mask[-1].sum()].tolist()
    assert not set(inner(last)) & set(tokenizer.all_special_ids)  # no [PAD] inside the attended text


def test_paragraphs_of_one_and_fifty_sentences(bench, ann, tokenizer):
    def edit(records):
        records[0]["sentences"] = records[0]["sentences"][:1]
        records.append(
            dict(records[0], clip_name="extra", sentences=[f"sentence {i} here" for i in range(50)])
        )

    edit_lines(ann, "didemo_ret_test.jsonl", edit)
    cfg = make_cfg(bench, ann, max_text_len={"didemo_ret": 30})
    data = build_dataset("didemo_ret", "test", cfg, tokenizer, IMAGENET_RGB)
    assert data.attention_mask[0].sum() < 30 and data.input_ids[1, -1] == SEP and data.attention_mask[1].all()


def test_mc_line_with_fewer_options_names_file_and_line(bench, ann, tokenizer):
    def edit(records):
        records[1]["options"] = records[1]["options"][:4]

    path = edit_lines(ann, "tgif_action_train.jsonl", edit)
    with pytest.raises(AnnotationError, match=f"{path}:2: 4 options, but the first line has 5"):
        build_dataset("tgif_action", "train", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)


def test_mc_file_with_four_options_everywhere_works(bench, ann, tokenizer):
    def edit(records):
        for record in records:
            answer = record["options"][record["answer"]]
            record["options"] = [answer] + [o for o in record["options"] if o != answer][:3]
            record["answer"] = 0

    edit_lines(ann, "msrvtt_mc_test.jsonl", edit)
    dataset = build_dataset("msrvtt_mc", "test", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    batch = Collator()([dataset[0]])  # a batch of one
    assert batch["input_ids"].shape[:2] == (1, 4) and batch["labels"].tolist() == [0]


def test_mc_answer_listed_twice_is_warned_naming_file_and_line(bench, ann, tokenizer, caplog):
    def edit(records):
        record = records[0]
        other = (record["answer"] + 1) % len(record["options"])
        record["options"][other] = " " + record["options"][record["answer"]].upper()

    path = edit_lines(ann, "tgif_transition_train.jsonl", edit)
    dataset = build_dataset("tgif_transition", "train", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    assert len(dataset.examples) > 1  # kept: one such line must not stop the file
    assert f"{path}: 1 line(s) list their answer twice (lines 1)" in caplog.text


def test_mc_repeated_wrong_options_are_kept(bench, ann, tokenizer):
    def edit(records):
        record = records[0]
        wrong = [k for k in range(len(record["options"])) if k != record["answer"]]
        record["options"][wrong[1]] = record["options"][wrong[0]]

    edit_lines(ann, "tgif_action_train.jsonl", edit)
    dataset = build_dataset("tgif_action", "train", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    assert len(dataset[0]["input_ids"]) == 5


@pytest.mark.parametrize(
    "ans2label, message",
    [
        ({"white": 0, "diamond": 7, "square": 100}, "labels reach 100 \\(none is 1\\)"),
        ({"white": 0, "diamond": 0, "square": 1}, "'white' and 'diamond' share label 0"),
        ({"white": -1, "diamond": 0}, "'white' has label -1"),
        ({"white": 0.5, "diamond": 0}, "'white' has label 0.5"),
        ({"white": True, "diamond": 0}, "'white' has label true"),
        ({"white": "1", "diamond": 0}, "'white' has label \"1\""),
        (["white", "diamond"], "got list"),
        ({}, "got an empty object"),
    ],
)
@pytest.mark.parametrize("task", ["msrvtt_qa", "vqa"])
def test_bad_ans2label_names_the_file(bench, ann, tokenizer, task, ans2label, message):
    path = ann / f"{task}_ans2label.json"
    path.write_text(json.dumps(ans2label))
    with pytest.raises(AnnotationError, match=f"{path}: .*{message}"):
        build_dataset(task, "train", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)


def test_qa_unknown_answer_and_missing_question_id(bench, ann, tokenizer):
    def edit(records):
        records[0]["answer"] = "zebra"
        del records[0]["question_id"]

    edit_lines(ann, "msrvtt_qa_test.jsonl", edit)
    dataset = build_dataset("msrvtt_qa", "test", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    assert dataset[0]["labels"] == -100  # evaluation counts it wrong (no prediction is -100)


def test_visual_words_of_empty_captions_name_the_file(bench, ann, tokenizer):
    def edit(records):
        for record in records:
            record["caption"] = " "

    path = edit_lines(ann, "msrvtt_ret_train.jsonl", edit)
    dataset = build_dataset("msrvtt_ret", "train", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    assert dataset[0]["input_ids"][0] == [CLS, SEP]  # empty captions themselves work
    with pytest.raises(DataError, match=f"{path}: no visual words"):
        dataset.enable_visual_words()


# --- collate ----------------------------------------------------------------------------------------------


def text_item(index, rows):
    return {"index": index, "video_id": f"v{index}", "bad_videos": [], "input_ids": rows, "labels": 0}


def test_collate_different_numbers_of_texts_is_an_error():
    items = [text_item(0, [[CLS, SEP]] * 5), text_item(1, [[CLS, SEP]] * 4)]
    with pytest.raises(ValueError, match="different numbers of texts M: \\[4, 5\\]"):
        Collator()(items)


def test_collate_pads_to_the_longest_text_and_a_batch_of_one():
    batch = Collator()([text_item(0, [[CLS, 7, 8, SEP], [CLS, SEP]])])
    assert batch["input_ids"].shape == (1, 2, 4)
    assert batch["attention_mask"][0].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    ids, mask = pad_token_lists([[], [CLS, SEP]], PAD)
    assert mask[0].sum() == 0 and ids.dtype == mask.dtype == torch.int64


def test_texts_cut_to_max_text_len_are_counted_once_per_file(bench, ann, tokenizer, caplog):
    # paragraph retrieval's texts run past max_text_len; they were cut with no word, train and eval alike
    from clipbert.data.text import tokenize_and_count_cuts

    texts = ["a red circle " * 30, "a small blue square", "[SEP] " * 20]
    rows, cut = tokenize_and_count_cuts(tokenizer, texts, 12)
    assert rows == tokenize(tokenizer, texts, 12, literal=True) and cut == 2  # the tokenizer's own cut
    cfg = make_cfg(bench, ann, max_text_len={"didemo_ret": 8})
    train = build_dataset("didemo_ret", "train", cfg, tokenizer, IMAGENET_RGB)
    build_dataset("didemo_ret", "test", cfg, tokenizer, IMAGENET_RGB)
    said = [
        r.getMessage() for r in caplog.records if "longer than data.max_text_len['didemo_ret']=8" in r.message
    ]
    assert len(said) == 2 and said[0].startswith(str(train.ann_path)), said  # one line per file
    caplog.clear()
    build_dataset("didemo_ret", "test", make_cfg(bench, ann), tokenizer, IMAGENET_RGB)
    assert "longer than data.max_text_len" not in caplog.text  # the shipped 120 tokens hold these
