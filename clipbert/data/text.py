"""Tokenization without padding (the collate pads to the batch) and BERT MLM masking."""

from __future__ import annotations

import numpy as np


def tokenize(
    tokenizer, texts: list[str], max_len: int, pairs: list[str] | None = None, literal: bool = False
) -> list[list[int]]:
    """Token ids with [CLS]/[SEP], truncated to max_len; `pairs` gives a second segment per text.

    `literal`: "[SEP]", "[MASK]", "[CLS]", "[PAD]" written in a text are read as words ("[", "sep", "]"), as
    the original BERT tokenizer reads them. The datasets pass True: annotation text is data, and a caption
    saying "[MASK]" became a mask token the MLM never predicts, a "[SEP]" in a question moved the
    question/option boundary and a "[PAD]" put a padding token inside the text. False (the default) keeps
    them special tokens, for clipbert.predict's fill-in prompts ("a small [MASK] square")."""
    encoded = tokenizer(
        texts, pairs, truncation=True, max_length=max_len, padding=False, split_special_tokens=literal
    )
    return [list(ids) for ids in encoded["input_ids"]]


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
