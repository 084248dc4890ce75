"""The visual-word vocabulary of a retrieval training set: which caption words each video's frames predict.

Used by `train.visual_word_loss` (clipbert/models/heads.py, VisualWordHead). A video's target is the set of
words in any of its training texts; the candidate words are the `max_words` most frequent (in videos) word
pieces of those texts, special tokens excluded. `prior` is each word's log-odds over the training videos, an
offset added to the head's logits, so the loss starts at the base rates and only what the frames add is
learned.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

MAX_WORDS = 2000  # bounds the head's cost on large vocabularies (MSRVTT has about 20k distinct words)


@dataclass
class WordVocab:
    word_ids: np.ndarray  # int64 [W] token ids, most frequent first
    prior: np.ndarray  # float32 [W] log-odds of a training video having the word
    targets: np.ndarray  # uint8 [V, W] multi-hot per training video (in dataset order)


def build_word_vocab(
    video_texts: list[list[list[int]]], special_ids: list[int], max_words: int = MAX_WORDS
) -> WordVocab:
    """video_texts[v] = the token id lists of video v's texts -> WordVocab."""
    if not video_texts:
        raise ValueError("build_word_vocab needs at least one video")
    special = set(special_ids)
    per_video = [{t for ids in texts for t in ids if t not in special} for texts in video_texts]
    counts = Counter(t for words in per_video for t in words)
    if not counts:
        raise ValueError("the training texts have no words besides special tokens")
    ranked = sorted(counts, key=lambda t: (-counts[t], t))[:max_words]
    column = {t: k for k, t in enumerate(ranked)}
    targets = np.zeros((len(per_video), len(ranked)), dtype=np.uint8)
    for v, words in enumerate(per_video):
        for t in words:
            if t in column:
                targets[v, column[t]] = 1
    # Clipped so a word in every (or no) video keeps a finite offset.
    rate = np.clip(targets.mean(0, dtype=np.float64), 1e-3, 1 - 1e-3)
    return WordVocab(
        word_ids=np.asarray(ranked, dtype=np.int64),
        prior=np.log(rate / (1 - rate)).astype(np.float32),
        targets=targets,
    )
