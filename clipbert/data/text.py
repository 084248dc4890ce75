"""Tokenization without padding (the collate pads to the batch) and BERT MLM masking."""

from __future__ import annotations

import numpy as np


def tokenize(
    tokenizer, texts: list[str], max_len: int, pairs: list[str] | None = None, literal: bool = False
) -> list[list[int]]:
    """Token ids with [CLS]/[SEP], truncated to max_len; `pairs` gives a second text per text, read after it
    in the same segment: [CLS] text pair [SEP] (a multiple-choice question and one of its options).

    Why one segment, not BERT's pair form ([CLS] text [SEP] pair [SEP]): the original ClipBERT encodes a
    question and a candidate answer as question + " " + option (run_video_qa.py's collator), so a converted
    original TGIF-QA model reads what it was trained on. A pair longer than max_len loses the end of its
    text first, then of its pair: the options of a question share its text, so cutting the text keeps them
    apart, where cutting the joined end (the original) could cut every option down to the same words.

    `literal`: "[SEP]", "[MASK]", "[CLS]", "[PAD]" written in a text are read as words ("[", "sep", "]"), as
    the original BERT tokenizer reads them. The datasets pass True: annotation text is data, and a caption
    saying "[MASK]" became a mask token the MLM never predicts, a "[SEP]" in a question moved the
    question/option boundary and a "[PAD]" put a padding token inside the text. False (the default) keeps
    them special tokens, for clipbert.predict's fill-in prompts ("a small [MASK] square")."""
    if pairs is None:
        encoded = tokenizer(
            texts, truncation=True, max_length=max_len, padding=False, split_special_tokens=literal
        )
        return [list(ids) for ids in encoded["input_ids"]]
    budget = max_len - 2  # words besides [CLS] and [SEP]
    rows = []
    for first, second in _word_id_pairs(tokenizer, texts, pairs, literal):
        second = second[:budget]
        rows.append([tokenizer.cls_token_id, *first[: budget - len(second)], *second, tokenizer.sep_token_id])
    return rows


def pair_lengths(tokenizer, texts: list[str], pairs: list[str], literal: bool = False) -> list[int]:
    """Each (text, pair)'s length in tokens as tokenize joins them ([CLS] and [SEP] in), before the cut."""
    return [
        len(first) + len(second) + 2 for first, second in _word_id_pairs(tokenizer, texts, pairs, literal)
    ]


def _word_id_pairs(tokenizer, texts: list[str], pairs: list[str], literal: bool):
    """(text ids, pair ids) without special tokens. Tokenized apart, they are the ids of text + " " + pair:
    BERT's tokenizer splits words at whitespace before WordPiece, so no word spans the join."""
    if len(texts) != len(pairs):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
    kw = dict(add_special_tokens=False, padding=False, split_special_tokens=literal, verbose=False)
    return zip(tokenizer(texts, **kw)["input_ids"], tokenizer(pairs, **kw)["input_ids"])


def tokenize_and_count_cuts(tokenizer, texts: list[str], max_len: int) -> tuple[list[list[int]], int]:
    """tokenize(..., literal=True) of single texts, and how many were longer than max_len (cut to it). One
    pass: each text is read whole, then cut as the tokenizer cuts ([CLS], the first max_len - 2 tokens,
    [SEP]). Why: paragraph retrieval's texts (DiDeMo, ActivityNet) run past max_text_len, and a silent
    cut hides that the model never reads their ends."""
    encoded = tokenizer(texts, truncation=False, padding=False, split_special_tokens=True, verbose=False)
    rows, cut = [], 0
    for ids in encoded["input_ids"]:
        if len(ids) > max_len:
            ids, cut = [*ids[: max_len - 1], ids[-1]], cut + 1
        rows.append(list(ids))
    return rows, cut


# Most texts count_cuts tokenizes (options included): about 2 s on 2 CPU cores, less than reading a file of
# 200k lines (VQA's training file has 650k).
CUT_SAMPLE = 50_000


def count_cuts(
    tokenizer,
    texts: list[str],
    max_len: int,
    options: list[list[str]] | None = None,
    sample: int | None = None,
) -> tuple[int, int]:
    """(cut, counted): how many of the texts tokenize(..., literal=True) cuts to max_len, and of how many.

    `options`: each text's options, each read after it as tokenize's `pairs` join them (a TGIF question and
    its options); then each (text, option) is one text, as the model reads it. Texts (options included)
    past `sample` (None: CUT_SAMPLE) are counted on evenly spaced texts with all their options, `sample`'s
    worth. Why a sample: VQA has 650k questions and pre-training millions of captions, whole passes that
    took 20 s and minutes on 2 cores at every build, only to say how many are cut."""
    sample = CUT_SAMPLE if sample is None else sample
    sizes = [1 + len(opts) for opts in options] if options is not None else [1] * len(texts)
    keep = len(texts) if sum(sizes) <= sample else max(1, len(texts) * sample // sum(sizes))
    picked = np.linspace(0, len(texts) - 1, keep).round().astype(np.int64) if texts else []  # [keep]
    # [CLS] + words + [SEP]: the length before tokenize's cut
    lengths = [len(ids) + 2 for ids in _word_ids(tokenizer, [texts[k] for k in picked])]
    if options is None:
        return sum(n > max_len for n in lengths), len(lengths)
    option_words = iter(_word_ids(tokenizer, [option for k in picked for option in options[k]]))
    pair_cuts = [n + len(next(option_words)) > max_len for k, n in zip(picked, lengths) for _ in options[k]]
    return sum(pair_cuts), len(pair_cuts)


def _word_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's token ids without special tokens, "[SEP]" read as words (tokenize's literal=True)."""
    if not texts:
        return []
    kw = dict(return_attention_mask=False, return_token_type_ids=False)
    kw.update(add_special_tokens=False, padding=False, split_special_tokens=True, verbose=False)
    return tokenizer(texts, **kw)["input_ids"]


def mask_tokens(
    ids: list[int], tokenizer, rng: np.random.Generator, prob: float = 0.15
) -> tuple[list[int], list[int]]:
    """BERT masking: each ordinary token is picked with `prob`; a picked token becomes [MASK] (80%), a
    random token (10%) or stays (10%). Returns (masked ids, labels with -100 where not picked)."""
    ids = np.asarray(ids, dtype=np.int64)
    special = np.isin(ids, tokenizer.all_special_ids)
    picked = (rng.random(len(ids)) < prob) & ~special
    labels = np.where(picked, ids, -100)
    action = rng.random(len(ids))
    masked = ids.copy()
    masked[picked & (action < 0.8)] = tokenizer.mask_token_id
    random_tokens = rng.integers(0, tokenizer.vocab_size, size=len(ids))
    swap = picked & (action >= 0.8) & (action < 0.9)
    masked[swap] = random_tokens[swap]
    return masked.tolist(), labels.tolist()
