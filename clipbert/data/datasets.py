"""Datasets of every paper task, reading the synthetic benchmark's (= the real datasets') annotation formats.

Items are fetched by `(epoch, index)` keys (the samplers of `loader.py` yield them), so all randomness is a
pure function of (seed, epoch, index) whatever the number of workers: text choices use `rng_for(seed, epoch,
index)`, clip sampling uses `(seed, epoch, video)` so that texts sharing a video share (and decode once) its
frames. A bad video replaces the example by the next one showing another video (at most max_bad_retries
replacements) and is reported, once per item, in `bad_videos`.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .annotations import (
    ID,
    INDEX,
    TEXT,
    TEXT_OR_TEXTS,
    TEXTS,
    AnnotationError,
    DataError,
    PackedRecords,
    is_kind,
    iter_jsonl_numbered,
    read_json,
)
from .collate import pad_token_lists
from .config import SPLITS, TASKS, DataConfig
from .decoders import VideoDecodeError
from .preprocess import Normalization
from .sampling import rng_for
from .text import count_cuts, mask_tokens, tokenize, tokenize_and_count_cuts
from .video_source import VideoSource, load_image, missing_images
from .visual_words import WordVocab, build_word_vocab
from .vqa_answers import answer_scores, normalize_answer

log = logging.getLogger(__name__)

RET_TASKS = ("msrvtt_ret", "didemo_ret", "anet_ret")
QA_TASKS = ("msrvtt_qa", "tgif_frameqa")
MC_TASKS = ("tgif_action", "tgif_transition", "msrvtt_mc")
IMAGE_TASKS = ("pretrain", "vqa")
# Every line's keys and the kind of value each must hold (annotations.py): a null caption or a string of
# options is a malformed line, named with its file and line, not a crash mid-epoch or a silent coercion.
_TGIF_MC = {"question": TEXT, "options": TEXTS, "answer": INDEX, "gif_name": ID}
REQUIRED_KEYS = {
    "msrvtt_ret": {"caption": TEXT, "clip_name": ID},
    "didemo_ret": {"clip_name": ID},  # and a paragraph: PARAGRAPH_KEYS
    "anet_ret": {"clip_name": ID},
    "msrvtt_qa": {"question": TEXT, "answer": TEXT, "video_id": ID},
    "tgif_frameqa": {"question": TEXT, "answer": TEXT, "gif_name": ID},
    "tgif_action": _TGIF_MC,
    "tgif_transition": _TGIF_MC,
    "msrvtt_mc": {"clip_name": ID, "options": TEXTS, "answer": INDEX},
    "pretrain": {"image_id": ID, "caption": TEXT, "file": TEXT},
    "vqa": {"question_id": ID, "question": TEXT, "file": TEXT},
}

# A DiDeMo / ActivityNet line's paragraph, under the first of these keys it holds: this benchmark's
# "sentences", or the original release's "caption". Why both: the original's run_video_retrieval.py reads
# every retrieval file's "caption" (there the whole paragraph as one string; later releases give it as a list
# of sentences), so its didemo_retrieval and anet_retrieval files had no "sentences" and were refused line 1.
PARAGRAPH_KEYS = ("sentences", "caption")
PARAGRAPH_KINDS = {"sentences": TEXTS, "caption": TEXT_OR_TEXTS}


def iter_task_lines(path: Path, task: str) -> Iterator[tuple[int, dict]]:
    """A task's lines with their line numbers, one at a time as the file is read; every line checked
    (REQUIRED_KEYS, PARAGRAPH_KEYS)."""
    paragraphs = task in ("didemo_ret", "anet_ret")
    kinds = {**REQUIRED_KEYS[task], **(PARAGRAPH_KINDS if paragraphs else {})}
    for line_no, record in iter_jsonl_numbered(path, tuple(REQUIRED_KEYS[task]), kinds):
        if paragraphs and not any(key in record for key in PARAGRAPH_KEYS):
            raise AnnotationError(
                f"{path}:{line_no}: missing key sentences (a list of strings) or caption (the paragraph, "
                "as the original release writes it)"
            )
        yield line_no, record


def _noting_line_numbers(lines: Iterable[tuple[int, dict]], line_numbers: list[int]) -> Iterator[dict]:
    """The records of (line number, record) pairs, each one's line number appended to `line_numbers`."""
    for line_no, record in lines:
        line_numbers.append(line_no)
        yield record


def read_task_annotations(path: Path, task: str) -> list[dict]:
    """A task's annotation lines, checked as the datasets check them (clipbert.predict reads them too)."""
    return [record for _, record in iter_task_lines(path, task)]


def _check_image_root(root: Path, configured: str) -> None:
    """A FileNotFoundError naming data.image_root when it is not a directory, at start-up, as VideoSource
    checks data.video_dir. Why: every image then failed as a "bad video" one by one, and the run stopped
    steps in with a worker's RuntimeError traceback ("too many bad videos"), naming no config key; likely
    when a shipped config's image_root is kept while data.ann_dir points at other data."""
    if root.is_dir():
        return
    where = (
        f"data.image_root={configured!r}"
        if configured
        else f"data.image_root (default: {root}, ann_dir's parent)"
    )
    relative = "" if root.is_absolute() else f" (relative to the current directory {Path.cwd()})"
    raise FileNotFoundError(
        f"{where} is not a directory{relative}: the image tasks read each line's file under it "
        "(--set data.image_root=DIR, or '' for the parent of data.ann_dir)"
    )


NEGATIVE_DRAWS = 8  # tries for a negative text unlike the positives (retrieval) or the image's captions (ITM)


def split_key(key) -> tuple[int, int]:
    """An item key is an index or an (epoch, index) pair; a bare index means epoch 0."""
    return (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (0, int(key))


class TaskDataset(Dataset):
    """Shared machinery: annotations, tokenizer, frames, bad-video replacement."""

    def __init__(self, task: str, split: str, cfg: DataConfig, tokenizer, norm: Normalization):
        self.task, self.split, self.cfg, self.tokenizer, self.norm = task, split, cfg, tokenizer, norm
        self.train = split == "train"
        self.max_len = cfg.max_text_len[task]
        self.ann_path = Path(cfg.ann_dir) / f"{task}_{split}.jsonl"
        self.line_numbers: list[int] = []  # of each example in ann_path, for messages
        # Packed as read, never a list of dicts: the loader's forked workers share it (PackedRecords), and the
        # dicts (about 6x the packed records' memory) are never all held at once.
        lines = iter_task_lines(self.ann_path, task)
        self.examples = PackedRecords(_noting_line_numbers(lines, self.line_numbers))
        if not self.examples:
            raise DataError(f"{self.ann_path}: no examples")
        self.source = VideoSource(cfg, norm, self.train) if task not in IMAGE_TASKS else None
        # image tasks: each line's "file" is relative to data.image_root ("" = the parent of ann_dir)
        self.image_root = Path(cfg.image_root) if cfg.image_root else Path(cfg.ann_dir).parent
        if task in IMAGE_TASKS:
            _check_image_root(self.image_root, cfg.image_root)
        self._bad_cache: dict[str, tuple[str, str]] = {}  # video id -> (key, reason), in epoch _bad_epoch
        self._bad_epoch: int | None = None
        self._image_cache: OrderedDict[str, tuple[torch.Tensor, tuple[int, int]]] = OrderedDict()  # image()'s

    def image(self, file: str) -> tuple[torch.Tensor, tuple[int, int]]:
        """load_image of `file` under data.image_root: uint8 [1, 1, 3, L, L] and its content (h, w). The
        last data.frame_cache_size images are kept per worker. Why: an image's questions (VQA: about 5 a COCO
        image) and captions are consecutive lines, so evaluation, which reads in order, decoded each image
        once per text; the videos' VideoSource keeps its frames the same way."""
        cached = self._image_cache.get(file)
        if cached is not None:
            self._image_cache.move_to_end(file)
            return cached
        result = load_image(self.image_root / file, self.cfg.image_size, self.cfg.image_orientation)
        if self.cfg.frame_cache_size:
            self._image_cache[file] = result
            while len(self._image_cache) > self.cfg.frame_cache_size:
                self._image_cache.popitem(last=False)
        return result

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key) -> dict:
        epoch, index = split_key(key)
        bad: list[str] = []  # 'file: reason' of each bad video met for this item, once each
        bad_ids: set[str] = set()  # their video ids: examples sharing one are skipped, not retried
        current = index
        # the requested example plus at most max_bad_retries replacements, each with a different video
        for _ in range(self.cfg.max_bad_retries + 1):
            try:
                item = self._load_known_good(current, epoch)
            except VideoDecodeError as err:
                bad.append(f"{err.key}: {err.reason}")
                bad_ids.add(self.video_of(current))
                current = self._next_other_video(current, bad_ids)
                if current is None:
                    break
                continue
            # `index` stays the requested example, so evaluation still counts every example exactly
            # once; `source_index` says whose content replaced it.
            item["index"], item["source_index"], item["bad_videos"] = index, current, bad
            return item
        why = "every example's video is bad" if current is None else "too many bad videos"
        # DataError: train.py names it in one line (each file's reason is in the message), not a traceback
        raise DataError(
            f"{self.task}/{self.split}: example {index}: {why} ({len(bad)} tried, "
            f"max_bad_retries={self.cfg.max_bad_retries}): {'; '.join(bad)}"
        )

    def _load_known_good(self, index: int, epoch: int) -> dict:
        """`load`, but a video already found bad in this epoch (by this worker) fails again at once, if it
        fails whatever its clips (its probe fails; an image) or for the same clips.

        Why: in QA/MC datasets up to ~10 consecutive examples share a video, and a bad one would be re-probed
        for each. Loading is a pure function of (seed, sample_key, video), so the cache changes no
        replacement, only skips work. Why not any failure of the video: each example draws its own clips
        (sample_key), and a partly corrupt video (truncated) fails for some only; one example's failure
        then replaced its video's other examples in this worker but not in another, or after a resume. It is
        cleared when the epoch changes, to stay small.
        """
        video_id = self.video_of(index)
        if self._bad_epoch != epoch:
            self._bad_cache, self._bad_epoch = {}, epoch
        sample = self.sample_key(index, epoch)
        known = self._bad_cache.get(video_id)
        if known is not None and known[0] in (None, sample):  # a fresh error: a cached one's traceback grows
            raise VideoDecodeError(*known[1:])
        try:
            return self.load(index, epoch)
        except VideoDecodeError as err:
            self._bad_cache[video_id] = (self._failing_clips(video_id, sample), err.key, err.reason)
            raise

    def sample_key(self, index: int, epoch: int) -> int:
        """The key example `index`'s clips are drawn with in `epoch` (VideoSource.indices): the epoch, where
        a video's examples share their clips in an epoch (evaluation's videos)."""
        return epoch

    def _failing_clips(self, video_id: str, sample: int) -> int | None:
        """The sample key a video failed for, or None if it fails whatever its clips: an image, clips not
        drawn at random (evaluation's uniform ones), or a probe that fails (a missing or unreadable file).
        Only asked after a failure: one probe more."""
        if self.source is None or self.source.strategy != "rand":
            return None
        try:
            self.source.info(video_id)
        except VideoDecodeError:
            return None
        return sample

    def _next_other_video(self, index: int, bad_ids: set[str]) -> int | None:
        """The next example after `index` (cyclically) whose video is not in `bad_ids`; None if none is."""
        for step in range(1, len(self)):
            candidate = (index + step) % len(self)
            if self.video_of(candidate) not in bad_ids:
                return candidate
        return None

    def video_of(self, index: int) -> str:
        """The id of the video (or image file) example `index` shows, read from its annotation alone."""
        raise NotImplementedError(f"{type(self).__name__} does not say which video an example shows")

    def load(self, index: int, epoch: int) -> dict:
        raise NotImplementedError

    def visual(self, video_id: str, epoch: int) -> dict:
        """uint8 frames [N, T, 3, L, L] (padded) and their content size, or what DALI will decode."""
        indices = self.source.indices(video_id, epoch)
        if self.cfg.backend == "frame_store" and self.cfg.frame_store_reader == "dali":
            info = self.source.info(video_id)
            jpegs = self.source.decoder.store.read_jpegs(video_id, indices.ravel())
            return {
                "video_id": video_id,
                "jpegs": jpegs,
                "frame_indices": indices,
                "video_hw": (info.height, info.width),
            }
        if self.cfg.backend == "dali":
            info, path = self.source.info(video_id), self.source.key(video_id)
            item = {
                "video_id": video_id,
                "video_path": path,
                "frame_indices": indices,  # [N, T] in the file: PyAV's, if DALI hands the file back
                "video_hw": (info.height, info.width),
                "video_codec": info.codec,
                "video_colorspace": info.colorspace,
                "video_rotation": info.rotation,  # DALI ignores it: such videos go to PyAV
            }
            if self.cfg.dali_trim:  # the packets DALI needs, and the same frames' indices in them
                from dali_pipelines.trim import trim_video  # PyAV only; dali_pipelines loads lazily

                item["video_bytes"], item["dali_indices"] = trim_video(path, indices)
            return item
        frames, hw = self.source.frames(video_id, indices)
        return {"video_id": video_id, "frames": frames, "frames_hw": hw}


def read_ans2label(path: Path) -> dict[str, int]:
    """A task's {answer: label} file, checked: the labels must be 0..K-1, each once.

    Why: the QA head has len(ans2label) classes (train/data.py), so a label past it (a gap: 0, 7, 100) crashed
    the loss at the first batch, a negative one likewise; two answers sharing a label were silently one class
    (predicting either counted right for both), and a float or bool label was truncated by int() into another
    answer's class. Checked once here, where the message can name the file."""
    ans2label = read_json(path)
    if not isinstance(ans2label, dict) or not ans2label:
        shown = "an empty object" if ans2label == {} else type(ans2label).__name__
        raise AnnotationError(f"{path}: expected a non-empty {{answer: label}} object, got {shown}")
    owners: dict[int, str] = {}
    for answer, label in ans2label.items():
        if not is_kind(label, INDEX) or label < 0:
            raise AnnotationError(
                f"{path}: answer {answer!r} has label {json.dumps(label)}, not an integer >= 0"
            )
        if label in owners:
            raise AnnotationError(f"{path}: answers {owners[label]!r} and {answer!r} share label {label}")
        owners[label] = answer
    if max(owners) != len(owners) - 1:
        missing = min(set(range(len(owners))) - set(owners))
        raise AnnotationError(
            f"{path}: {len(owners)} answers but labels reach {max(owners)} (none is {missing}); the head has "
            f"one class per answer, so the labels must be 0..{len(owners) - 1}"
        )
    return ans2label


def caption_word_vocab(videos: list[tuple[str, list[str]]], tokenizer, max_len: int) -> WordVocab:
    """The visual-word vocabulary of [(video_id, [texts])] as group_texts gives them: the training set's
    (enable_visual_words), and clipbert.predict's for an export without predict.json, built alike."""
    texts = [tokenize(tokenizer, video_texts, max_len, literal=True) for _, video_texts in videos]
    return build_word_vocab(texts, tokenizer.all_special_ids)


def _text_rounds(counts: list[int]) -> tuple[np.ndarray, int]:
    """Items of one text each, int64 [P, 2] of (video, text), in rounds: every video's text 0, then every
    video's text 1 that has one, and so on; and the number of rounds. Item v < len(counts) is video v's
    first text, so a set of one text per video keeps its item order."""
    counts_np = np.asarray(counts, dtype=np.int64)
    video = np.repeat(np.arange(len(counts_np)), counts_np)  # [P]
    text = np.arange(len(video)) - np.repeat(np.cumsum(counts_np) - counts_np, counts_np)  # rank in its video
    order = np.lexsort((video, text))  # by text rank, then video
    return np.stack([video[order], text[order]], axis=1), int(counts_np.max(initial=0))


class RetrievalTrainDataset(TaskDataset):
    """One item per annotated text: its video, the text as the positive (column 0) and itm_neg_size texts of
    other videos.

    Why per text, not per video: the original makes every caption an example (run_video_retrieval.py,
    max_n_example_per_group=1), so its epochs, the paper's (Table 10: 20 for MSRVTT), pass over every
    caption. One random caption per video made an MSRVTT epoch 1/20 of that (about 20 captions a video) and
    left captions unseen. Paragraph retrieval (one paragraph a video) is unchanged."""

    def __init__(self, task, split, cfg, tokenizer, norm):
        super().__init__(task, split, cfg, tokenizer, norm)
        self.videos = group_texts(task, self.examples)  # [(video_id, [texts])]
        self.pairs, self.rounds = _text_rounds([len(texts) for _, texts in self.videos])
        if len(self.videos) < 2 and cfg.itm_neg_size:
            raise DataError(f"{self.ann_path}: negatives need at least 2 videos, got {len(self.videos)}")
        # Each text's identity as the model reads it: the hash of its token ids. Why not the string: the
        # uncased tokenizer reads "A dog runs" and "a  dog runs" alike (and truncation can make longer texts
        # alike), so a string test let another video's copy of the positive in as a negative. A hash, not
        # the ids, keeps this at one int per text (MSRVTT has 180k captions; every worker holds a copy).
        self.text_keys, cut = [], 0
        for _, texts in self.videos:
            rows, n = tokenize_and_count_cuts(tokenizer, texts, self.max_len)
            self.text_keys.append([hash(tuple(ids)) for ids in rows])
            cut += n
        _say_cut(self.ann_path, cut, sum(map(len, self.text_keys)), task, self.max_len)
        if cfg.itm_neg_size:
            self._check_negatives_exist()
        else:  # every pair a match: the loss is met by answering "match" to anything, which ranks nothing
            log.warning(
                "%s: data.itm_neg_size=0: every training pair is a match, so the matching head learns no "
                "ranking (the paper's retrieval training draws negatives; set itm_neg_size >= 1)",
                self.ann_path,
            )
        self.word_vocab: WordVocab | None = None

    def _check_negatives_exist(self) -> None:
        """Say which videos have no negative: their texts include every distinct text of the set (a set where
        every caption is the same, or empty), so any draw is one of their own texts labelled "no match".
        Said, not refused, as multiple-choice lines listing their answer twice are: such a set still loads
        (its visual words, say, are checked later), and the draw then stands."""
        distinct = len({key for keys in self.text_keys for key in keys})
        stuck = [
            video_id for (video_id, _), keys in zip(self.videos, self.text_keys) if len(set(keys)) == distinct
        ]
        if stuck:
            log.warning(
                "%s: %d video(s) (%s%s) have no negative text: every other video's text reads the same as "
                "one of theirs, so their negatives (itm_neg_size=%d) repeat a positive labelled no-match",
                self.ann_path,
                len(stuck),
                ", ".join(map(repr, stuck[:5])),
                ", ..." if len(stuck) > 5 else "",
                self.cfg.itm_neg_size,
            )

    def enable_visual_words(self) -> WordVocab:
        """From now on every item carries `word_targets` (uint8 [W]) for train.visual_word_loss."""
        # Every caption empty (or [UNK] only) leaves no words: a DataError naming the file, not a traceback.
        try:
            self.word_vocab = caption_word_vocab(self.videos, self.tokenizer, self.max_len)
        except ValueError as err:
            raise DataError(f"{self.ann_path}: no visual words: {err}") from err
        return self.word_vocab

    def __len__(self) -> int:
        return len(self.pairs)

    def video_of(self, index: int) -> str:
        return self.videos[self.pairs[index, 0]][0]

    def sample_key(self, index: int, epoch: int) -> int:  # each text its own clips
        return epoch * self.rounds + int(self.pairs[index, 1])

    def load(self, index: int, epoch: int) -> dict:
        rng = rng_for(self.cfg.seed, epoch, index)
        video, text = (int(x) for x in self.pairs[index])
        video_id, texts = self.videos[video]
        chosen = [texts[text]]
        chosen += [
            self._negative(video, set(self.text_keys[video]), rng) for _ in range(self.cfg.itm_neg_size)
        ]
        # Clips drawn per item, as the original draws them per example: keyed by the epoch alone (the
        # source's key), all of a video's texts would see the same clips in an epoch
        item = self.visual(video_id, self.sample_key(index, epoch))
        item["input_ids"] = tokenize(self.tokenizer, chosen, self.max_len, literal=True)
        item["labels"] = [1] + [0] * self.cfg.itm_neg_size
        if self.word_vocab is not None:
            item["word_targets"] = self.word_vocab.targets[video]
        return item

    def _negative(self, index: int, positives: set[int], rng) -> str:
        """A text of another video that does not read as one of this video's own (`positives`: their
        text_keys): captions repeat across videos ("a man is talking"), and the same words labelled 0 teach
        the matching head to contradict itself. Drawn at random (NEGATIVE_DRAWS tries); should every try
        hit a copy (a set where most videos share one caption), drawn among all the texts that qualify, so the
        draw ends with a true negative whenever one exists (else the last draw stands: _check_negatives_exist
        said so)."""
        for _ in range(NEGATIVE_DRAWS):
            other = (index + 1 + rng.integers(len(self.videos) - 1)) % len(self.videos)  # never `index`
            k = rng.integers(len(self.videos[other][1]))
            text = self.videos[other][1][k]
            if self.text_keys[other][k] not in positives:
                return text
        pool = [
            text
            for other, (_, texts) in enumerate(self.videos)
            if other != index
            for text, key in zip(texts, self.text_keys[other])
            if key not in positives
        ]
        return pool[rng.integers(len(pool))] if pool else text


class VideoOnlyDataset(TaskDataset):
    """Retrieval evaluation videos: one item per distinct video, Ntest clips, no text."""

    def __init__(self, task, split, cfg, tokenizer, norm, video_ids: list[str]):
        super().__init__(task, split, cfg, tokenizer, norm)
        self.video_ids = video_ids

    def __len__(self) -> int:
        return len(self.video_ids)

    def video_of(self, index: int) -> str:
        return self.video_ids[index]

    def load(self, index: int, epoch: int) -> dict:
        return self.visual(self.video_ids[index], epoch)


@dataclass
class RetrievalEvalData:
    """Everything to score every text against every video."""

    videos: VideoOnlyDataset  # item i = video_ids[i]
    video_ids: list[str]
    input_ids: torch.Tensor  # int64 [Ntext, Lt]
    attention_mask: torch.Tensor  # int64 [Ntext, Lt]
    text_to_video: torch.Tensor  # int64 [Ntext]: index into video_ids of each text's true video


def _say_cut(
    path, cut: int, total: int, task: str, max_len: int, counted: int | None = None, what: str = "texts"
) -> None:
    """`counted`: how many of the `total` texts were looked at (count_cuts' sample), if not all."""
    if not cut:
        return
    # the model never reads those texts' ends: say so once per file, with the key that sets it
    of = f"{cut} of {total} {what}"
    if counted is not None and counted < total:  # count_cuts' sample, scaled to the file
        estimate = round(cut * total / counted)
        of = f"about {estimate} of {total} {what} ({cut} of an evenly spaced sample of {counted})"
    log.warning(
        "%s: %s are longer than data.max_text_len[%r]=%d tokens and are cut to it", path, of, task, max_len
    )


class _Field(Sequence):
    """One key of each record, read when indexed: what count_cuts samples from (50k texts) without a list of
    every text (pre-training's 5.6M captions: about 450 MB for the moment it took)."""

    def __init__(self, records: Sequence[dict], key: str):
        self.records, self.key = records, key

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index][self.key]


def _say_counted_cuts(
    dataset: TaskDataset, texts: Sequence[str], options: list[list[str]] | None = None
) -> None:
    """Count (count_cuts) and say how many of a dataset's texts, or (text, option) pairs, its budget cuts."""
    total = len(texts) if options is None else sum(map(len, options))
    cut, counted = count_cuts(dataset.tokenizer, texts, dataset.max_len, options)
    what = "texts" if options is None else "question+option texts"
    _say_cut(dataset.ann_path, cut, total, dataset.task, dataset.max_len, counted, what)


def build_retrieval_eval(task, split, cfg, tokenizer, norm) -> RetrievalEvalData:
    base = TaskDataset(task, split, cfg, tokenizer, norm)
    groups = group_texts(task, base.examples)
    video_ids = [video_id for video_id, _ in groups]
    texts, owner = [], []
    for video_index, (_, video_texts) in enumerate(groups):
        texts += video_texts
        owner += [video_index] * len(video_texts)
    rows, cut = tokenize_and_count_cuts(tokenizer, texts, cfg.max_text_len[task])
    _say_cut(base.ann_path, cut, len(texts), task, cfg.max_text_len[task])
    ids, mask = pad_token_lists(rows, tokenizer.pad_token_id)
    videos = VideoOnlyDataset(task, split, cfg, tokenizer, norm, video_ids)
    return RetrievalEvalData(videos, video_ids, ids, mask, torch.tensor(owner, dtype=torch.int64))


class PerExampleClips:
    """For TaskDatasets whose examples share videos (video QA, multiple choice): each example draws its own
    clips. sample_key: epoch x rounds + the example's rank among its video's examples (rounds: the most
    examples a video has). Why not the epoch alone: the original draws each example's clips apart
    (max_n_example_per_group 1), and keyed by the epoch every question of a video saw the same clips in an
    epoch (MSRVTT-QA: about 16 a video). A set of one example per video keeps the epoch as the key, as
    retrieval's items do (_text_rounds)."""

    _clip_ranks: tuple = (None,)  # (examples, rank [n] int64, rounds), per examples list

    def sample_key(self, index: int, epoch: int) -> int:
        rank, rounds = self.clip_ranks()
        return epoch * rounds + int(rank[index])

    def clip_ranks(self) -> tuple[np.ndarray, int]:
        """(each example's rank among its video's examples [n] int64, the most examples a video has). Built
        once, by the dataset's __init__: before the loader forks its workers, which then share one table
        instead of each building its own (a pass over every example); again for a test's edited list."""
        if self._clip_ranks[0] is not self.examples:
            seen: dict[str, int] = {}
            rank = np.empty(len(self.examples), dtype=np.int64)
            for k in range(len(self.examples)):
                video = self.video_of(k)
                rank[k] = seen.get(video, 0)
                seen[video] = rank[k] + 1
            self._clip_ranks = (self.examples, rank, max(seen.values(), default=1))
        return self._clip_ranks[1:]


class QADataset(PerExampleClips, TaskDataset):
    """Open-ended QA: one question per item; label = ans2label[answer]. Questions with an answer outside
    ans2label are dropped from training and labelled -100 (counted wrong) in evaluation."""

    def __init__(self, task, split, cfg, tokenizer, norm):
        super().__init__(task, split, cfg, tokenizer, norm)
        self.ans2label = read_ans2label(Path(cfg.ann_dir) / f"{task}_ans2label.json")
        self.video_key = "video_id" if task == "msrvtt_qa" else "gif_name"
        self._report_unknown_answers()
        _say_counted_cuts(self, _Field(self.examples, "question"))  # the kept ones
        self.clip_ranks()

    def _report_unknown_answers(self) -> None:
        """Questions whose answer is not in ans2label: counted and said; in training dropped, as the original
        does, in evaluation kept (label -100, counted wrong). Why dropped: kept, they cost a forward each and
        gave no loss, so a micro batch's mean ran over fewer questions and each of its questions weighed
        more than one of a full batch (accumulated micro batches no longer averaged like one big batch). Why
        said: it was silent, and a training file none of whose answers is in ans2label (another
        normalization, the wrong task's file) trained on a loss of exactly 0 for the whole run; refused."""
        unknown = [
            line for line, ex in zip(self.line_numbers, self.examples) if ex["answer"] not in self.ans2label
        ]
        if not unknown:
            return
        ans2label_path = Path(self.cfg.ann_dir) / f"{self.task}_ans2label.json"
        if self.train and len(unknown) == len(self.examples):
            raise DataError(
                f"{self.ann_path}: none of the {len(unknown)} answers is in {ans2label_path} (e.g. "
                f"{self.examples[0]['answer']!r}): there is nothing to train on"
            )
        log.warning(
            "%s: %d of %d question(s) have an answer not in %s (lines %s%s): %s",
            self.ann_path,
            len(unknown),
            len(self.examples),
            ans2label_path.name,
            ", ".join(map(str, unknown[:5])),
            ", ..." if len(unknown) > 5 else "",
            "dropped from training" if self.train else "they count as wrong",
        )
        if self.train:
            kept = [k for k, ex in enumerate(self.examples) if ex["answer"] in self.ans2label]
            self.examples = PackedRecords(self.examples[k] for k in kept)
            self.line_numbers = [self.line_numbers[k] for k in kept]

    def video_of(self, index: int) -> str:
        return str(self.examples[index][self.video_key])

    def __getitem__(self, key) -> dict:
        return _own_text_in_evaluation(self, super().__getitem__(key))

    def load(self, index: int, epoch: int) -> dict:
        item = self.visual(self.video_of(index), self.sample_key(index, epoch))
        item["input_ids"] = self.text_ids(index)
        item.update(self.eval_target(index))
        return item

    def text_ids(self, index: int) -> list[list[int]]:
        """Token ids [1][Lt] of example `index`'s question."""
        return tokenize(self.tokenizer, [self.examples[index]["question"]], self.max_len, literal=True)

    def eval_target(self, index: int) -> dict:
        """What evaluation scores example `index` against (its label, -100 outside ans2label, and its answer
        type), read from its annotation alone: evaluate.py counts an example the loader dropped as wrong."""
        example = self.examples[index]
        return {
            "labels": int(self.ans2label.get(example["answer"], -100)),
            "answer_type": str(example.get("answer_type", "unknown")),
        }


class MultipleChoiceDataset(PerExampleClips, TaskDataset):
    """M option texts per video (question + option for TGIF, the caption alone for MSRVTT-MC)."""

    def __init__(self, task, split, cfg, tokenizer, norm):
        super().__init__(task, split, cfg, tokenizer, norm)
        num_options = len(self.examples[0]["options"])
        twins = []  # lines listing their answer twice
        for line_no, example in zip(self.line_numbers, self.examples):
            options, answer = example["options"], example["answer"]
            if not 0 <= answer < len(options):
                raise AnnotationError(f"{self.ann_path}:{line_no}: answer {answer} is not an option index")
            # Why: the options of a batch are the M classes of one [B, M] score matrix, so a line with 4 of
            # them among lines with 5 crashed the collate mid-epoch, naming neither file nor line.
            if len(options) != num_options:
                raise AnnotationError(
                    f"{self.ann_path}:{line_no}: {len(options)} options, but the first line has "
                    f"{num_options} (every line of a multiple-choice file needs the same number)"
                )
            # Options the uncased tokenizer reads alike get equal scores, and a tie loses (train/tasks.py), so
            # a line listing its answer twice is always counted wrong. Said, not refused: a real set (MSRVTT's
            # generic captions drawn as distractors) may hold a few, and one must not stop the whole file.
            # Wrong options that repeat each other are harmless.
            read = [" ".join(option.lower().split()) for option in options]
            if any(k != answer and text == read[answer] for k, text in enumerate(read)):
                twins.append(line_no)
        if twins:
            log.warning(
                "%s: %d line(s) list their answer twice (lines %s%s): unanswerable, they count as wrong",
                self.ann_path,
                len(twins),
                ", ".join(map(str, twins[:5])),
                ", ..." if len(twins) > 5 else "",
            )
        self._say_cuts()
        self.clip_ranks()

    def _say_cuts(self) -> None:
        """Say the cuts of the texts as text_ids reads them: MSRVTT-MC's options, TGIF's question + option."""
        options = [[str(option) for option in example["options"]] for example in self.examples]
        if self.task == "msrvtt_mc":
            _say_counted_cuts(self, [option for line in options for option in line])
        else:
            _say_counted_cuts(self, [example["question"] for example in self.examples], options)

    def video_of(self, index: int) -> str:
        return str(self.examples[index]["clip_name" if self.task == "msrvtt_mc" else "gif_name"])

    def __getitem__(self, key) -> dict:
        return _own_text_in_evaluation(self, super().__getitem__(key))

    def load(self, index: int, epoch: int) -> dict:
        item = self.visual(self.video_of(index), self.sample_key(index, epoch))
        item["input_ids"] = self.text_ids(index)
        item.update(self.eval_target(index))
        return item

    def text_ids(self, index: int) -> list[list[int]]:
        """Token ids [M][Lt] of example `index`'s options (each after the question, for TGIF)."""
        example = self.examples[index]
        options = [str(option) for option in example["options"]]
        if self.task == "msrvtt_mc":
            return tokenize(self.tokenizer, options, self.max_len, literal=True)
        questions = [example["question"]] * len(options)
        return tokenize(self.tokenizer, questions, self.max_len, pairs=options, literal=True)

    def eval_target(self, index: int) -> dict:
        """The true option of example `index`, read from its annotation alone (QADataset.eval_target)."""
        return {"labels": int(self.examples[index]["answer"])}


def _own_text_in_evaluation(dataset: QADataset | MultipleChoiceDataset | VQADataset, item: dict) -> dict:
    """An evaluation item whose video was bad, with the requested example's own text and label again.

    Why: TaskDataset.__getitem__ loads a whole replacement example (a valid training pair), so in evaluation
    the bad video's example was scored with the replacement's question and label: the replacement counted
    twice and the example never. Evaluation scores the example itself, shown the replacement's video, as
    docs/TRAINING.md says; the bad file is reported all the same (bad_videos)."""
    index = item["index"]
    if dataset.train or item["source_index"] == index:
        return item
    item["input_ids"] = dataset.text_ids(index)
    item.update(dataset.eval_target(index))
    return item


class PretrainDataset(TaskDataset):
    """Image-caption pairs as one-frame clips, with MLM masking and ITM negatives (probability itm_neg_prob).

    MLM labels are kept only for matching pairs (a swapped caption does not describe the image), but the
    swapped caption is masked all the same: were only matching pairs masked, a [MASK] token would give the
    match away (the matching head reached 88% on held-out images from that alone).
    """

    def __init__(self, task, split, cfg, tokenizer, norm):
        super().__init__(task, split, cfg, tokenizer, norm)
        self._grouped = (self.examples, *_group_by_image(self.examples))
        self._keys: tuple = (None,)  # (examples, hash [n] int64, computed [n] bool): _text_keys
        # Why said: with one image no caption is another image's, so no pair is a negative and the matching
        # head learns to answer "match" whatever it sees.
        self.one_image = len(self._grouped[3]) == 2  # starts: one per image, and the end
        if self.one_image and cfg.itm_neg_prob > 0:
            log.warning(
                "%s: every caption is of one image (%s): image-text matching gets no negative pair "
                "(itm_neg_prob=%g is not met)",
                self.ann_path,
                self.examples[0]["file"],
                cfg.itm_neg_prob,
            )
        _say_counted_cuts(self, _Field(self.examples, "caption"))

    def video_of(self, index: int) -> str:
        # the image file, not image_id: what is decoded (and can be bad) is the file
        return str(self.examples[index]["file"])

    def _negative_caption(self, index: int, rng) -> str | None:
        """A caption of another image that reads unlike every caption of this one; None if there is none.

        Why not any caption of another image: one of the same image (COCO has 5, Visual Genome dozens) is a
        true match labelled 0, and so is another image's copy of one of them, as the model reads it (token
        ids: the uncased tokenizer reads "A dog  runs" as "a dog runs"). COCO repeats captions across images,
        Visual Genome's short region captions far more, and the synthetic benchmark gives every frame of a
        video its caption. Drawn at random (NEGATIVE_DRAWS tries); should every try miss (an image holding
        most captions), drawn among the other images' captions. Why not give up then: the negative rate fell
        with the image's share (an image with 30 of 31 captions got 12% negatives, not itm_neg_prob's 50%)."""
        image_of, by_image, starts = self._images()
        image = image_of[index]
        own = set(self._text_keys(by_image[starts[image] : starts[image + 1]]))

        def unlike(other: int) -> bool:
            return image_of[other] != image and self._text_keys([other])[0] not in own

        for _ in range(NEGATIVE_DRAWS):
            other = (index + 1 + rng.integers(len(self) - 1)) % len(self)
            if unlike(other):
                return self.examples[other]["caption"]
        # The first in a random order of the other images' captions that qualifies: uniform among those that
        # do, and only the ones looked at are tokenized.
        pool = np.flatnonzero(image_of != image)
        return next(
            (self.examples[k]["caption"] for k in pool[rng.permutation(len(pool))] if unlike(k)), None
        )

    def _images(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """_group_by_image of the examples, regrouped should the list be replaced (a test's edited set)."""
        if self._grouped[0] is not self.examples:
            self._grouped = (self.examples, *_group_by_image(self.examples))
        return self._grouped[1:]

    def _text_keys(self, indices) -> list[int]:
        """Each caption's identity as the model reads it: the hash of its token ids, computed once per
        caption and worker. Why kept: every item of an image compares against all its captions (Visual
        Genome: dozens), which were tokenized again for each of them. In arrays, not a dict: 5.4M captions
        take 48 MB."""
        if self._keys[0] is not self.examples:  # a test's edited set: its own keys
            n = len(self.examples)
            self._keys = (self.examples, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool))
        _, keys, known = self._keys
        indices = [int(k) for k in indices]
        todo = sorted({k for k in indices if not known[k]})
        if todo:
            captions = [self.examples[k]["caption"] for k in todo]
            for k, ids in zip(todo, tokenize(self.tokenizer, captions, self.max_len, literal=True)):
                keys[k], known[k] = hash(tuple(ids)), True
        return [int(keys[k]) for k in indices]

    def load(self, index: int, epoch: int) -> dict:
        rng = rng_for(self.cfg.seed, epoch, index)
        example = self.examples[index]
        caption, match = example["caption"], 1
        if not self.one_image and rng.random() < self.cfg.itm_neg_prob:
            negative = self._negative_caption(index, rng)
            if negative is not None:  # None: every other caption reads as one of this image's
                caption, match = negative, 0
        ids = tokenize(self.tokenizer, [caption], self.max_len, literal=True)[0]
        masked, mlm_labels = mask_tokens(ids, self.tokenizer, rng, self.cfg.mlm_prob)
        if not match and not self.cfg.mlm_on_swapped:  # data.mlm_on_swapped: the original's targets
            mlm_labels = [-100] * len(ids)
        frames, hw = self.image(example["file"])
        return {
            "frames": frames,
            "frames_hw": hw,
            "video_id": str(example["image_id"]),
            "input_ids": [masked],
            "mlm_labels": [mlm_labels],
            "itm_labels": match,
        }


class VQADataset(TaskDataset):
    """Image QA (VQA 2.0): a question about one image, shown as one clip of one frame.

    Targets are soft, as in the usual VQA recipe (and the original ClipBERT's): every vocabulary answer the
    human answers give carries its VQA accuracy (vqa_answers.answer_scores: 0.3, 0.6, 0.9 or 1 for 1, 2, 3
    or 4+ of 10 humans), and the head is trained with binary cross-entropy against them. A line gives the
    raw human answers ("answers", as clipbert.data.convert_vqa writes them from the official files) or
    precomputed scores ("labels": {answer: score}, the original release's form, plus a "file" key: the
    release kept its images in an LMDB); test-dev/test-std lines give neither and are only predicted.
    """

    def __init__(self, task, split, cfg, tokenizer, norm):
        super().__init__(task, split, cfg, tokenizer, norm)
        ans2label_path = Path(cfg.ann_dir) / f"{task}_ans2label.json"
        self.ans2label = read_ans2label(ans2label_path)
        _warn_unreachable_answers(ans2label_path, self.ans2label)
        unanswered = []  # line numbers of lines with neither answers nor labels (test-dev/test-std form)
        for line_no, example in zip(self.line_numbers, self.examples):
            _check_vqa_answers(self.ann_path, line_no, example)
            if "answers" not in example and "labels" not in example:
                unanswered.append(line_no)
        # Why refused: such a line trains every answer towards 0 (all-zero targets), as if no human had
        # answered in the vocabulary; the original's collate fails on it. A test file given as training data.
        if self.train and unanswered:
            shown = ", ".join(map(str, unanswered[:5])) + (", ..." if len(unanswered) > 5 else "")
            raise AnnotationError(
                f"{self.ann_path}: {len(unanswered)} line(s) (lines {shown}) have no answers (the human "
                "answers) and no labels ({answer: score}); a training line needs one of them"
            )
        _say_counted_cuts(self, _Field(self.examples, "question"))

    def video_of(self, index: int) -> str:
        return str(self.examples[index]["file"])  # the image file: what is decoded (and can be bad)

    def __getitem__(self, key) -> dict:
        # A bad image's example is shown a replacement's image (reported in bad_videos). In evaluation it
        # keeps its own question and answers, filed under its own question id: the results file has every
        # question exactly once, each answered for itself (it was the replacement's question and answers).
        item = _own_text_in_evaluation(self, super().__getitem__(key))
        item["question_id"] = self.examples[item["index"]]["question_id"]
        return item

    def targets(self, example: dict) -> tuple[list[int], list[float]]:
        """(labels, scores) of the vocabulary answers the example's humans gave; others can't be predicted."""
        if "answers" in example:  # evaluation scores as the official evaluation does (its quirk included)
            scores = answer_scores([str(a) for a in example["answers"]], as_evaluated=not self.train)
        else:
            scores = {}
            for answer, score in example.get("labels", {}).items():
                key = normalize_answer(
                    str(answer)
                )  # "Two" and "2" are one answer: its best score, not the last
                scores[key] = max(float(score), scores.get(key, 0.0))
        known = sorted((self.ans2label[a], s) for a, s in scores.items() if a in self.ans2label and s > 0)
        return [label for label, _ in known], [score for _, score in known]

    def load(self, index: int, epoch: int) -> dict:
        example = self.examples[index]
        frames, hw = self.image(example["file"])
        return {
            "frames": frames,  # uint8 [1, 1, 3, L, L]
            "frames_hw": hw,
            "video_id": str(example.get("image_id", example["file"])),
            "input_ids": self.text_ids(index),
            **self.eval_target(index),
        }  # __getitem__ adds the question_id

    def text_ids(self, index: int) -> list[list[int]]:
        """Token ids [1][Lt] of example `index`'s question."""
        return tokenize(self.tokenizer, [self.examples[index]["question"]], self.max_len, literal=True)

    def eval_target(self, index: int) -> dict:
        """Example `index`'s soft targets and answer type, read from its annotation alone."""
        example = self.examples[index]
        labels, scores = self.targets(example)
        return {
            "answer_labels": labels,
            "answer_scores": scores,
            "answered": "answers" in example or "labels" in example,
            "answer_type": str(example.get("answer_type", "unknown")),
        }


def _check_vqa_answers(path: Path, line_no: int, example: dict) -> None:
    """A VQA line's answers (a list of strings) or labels ({answer: score in [0, 1]}), checked by line.

    Why each key for its own form: a list under labels failed .items() in a worker, and a dict under answers
    was read as its keys, one human answer each ({"2": 0.3} trained "2" at 1.0). Why each answer: targets()
    reads str(answer), so the official annotation file's answer dicts ({"answer": "2", "answer_id": 1, ...})
    matched no vocabulary answer and the question trained on all-zero targets, and a null answer read as
    "None", which normalizes to the count "0"."""
    key = "answers" if "answers" in example else "labels"
    given = example.get(key, {})
    if not isinstance(given, list if key == "answers" else dict):
        raise AnnotationError(
            f"{path}:{line_no}: answers must be a list of strings and labels a "
            f"{{answer: score}} object, got {key} as {type(given).__name__}"
        )
    if key == "answers":
        bad = [answer for answer in given if not isinstance(answer, str)]
        if bad:
            raise AnnotationError(
                f"{path}:{line_no}: answers must be a list of strings (the raw human answers, as "
                f"clipbert.data.convert_vqa writes them), got {json.dumps(bad[0])}"
            )
    else:  # checked here: a bad score failed float() in a worker, unnamed
        bad = {a: v for a, v in given.items() if not _is_score(v)}
        if bad:
            raise AnnotationError(f"{path}:{line_no}: labels scores must be numbers in [0, 1], got {bad}")


def _warn_unreachable_answers(path: Path, ans2label: dict[str, int]) -> None:
    """Say which vocabulary answers are not in the normalized form that every target takes.

    Why: targets() looks answers up normalized ("Two" -> "2"), so an entry "Two" (a vocabulary made by
    other code) is never a target: its class only learns to say no, silently. Said, not refused: the
    prediction is still written out as the entry, which the official evaluation normalizes."""
    normalized = {answer: normalize_answer(answer) for answer in ans2label}
    odd = {answer: read for answer, read in normalized.items() if read != answer}
    if odd:
        shown = ", ".join(f"{a!r} (reads as {n!r})" for a, n in list(odd.items())[:5])
        log.warning(
            "%s: %d answer(s) not in normalized form, so no training target can reach them: %s%s "
            "(build the vocabulary with clipbert.data.convert_vqa --ans2label)",
            path,
            len(odd),
            shown,
            ", ..." if len(odd) > 5 else "",
        )


def _group_by_image(examples: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each example's image (its "file") as a number, the example indices sorted by image, and where each
    image's run starts in them: image g's examples are by_image[starts[g] : starts[g + 1]]. Arrays, not a
    dict of lists: Visual Genome has 5M captions, and every loader worker holds a copy."""
    numbers: dict[str, int] = {}
    image_of = np.fromiter(
        (numbers.setdefault(str(example["file"]), len(numbers)) for example in examples),
        np.int64,
        len(examples),
    )  # [N]
    by_image = np.argsort(image_of, kind="stable")  # [N]
    starts = np.searchsorted(image_of[by_image], np.arange(len(numbers) + 1))  # [G + 1]
    return image_of, by_image, starts


def group_texts(task: str, examples: list[dict]) -> list[tuple[str, list[str]]]:
    """[(video_id, texts)] in first-seen order; a didemo/anet line's text is its paragraph (_paragraph)."""
    groups: dict[str, list[str]] = {}
    for example in examples:
        video_id = str(example["clip_name"])
        text = str(example["caption"]) if task == "msrvtt_ret" else _paragraph(example)
        groups.setdefault(video_id, []).append(text)
    return list(groups.items())


def _paragraph(example: dict) -> str:
    """A DiDeMo / ActivityNet line's paragraph: its sentences (PARAGRAPH_KEYS) joined, or its one string."""
    text = next(example[key] for key in PARAGRAPH_KEYS if key in example)
    return " ".join(s.strip() for s in ([text] if isinstance(text, str) else text))


def build_dataset(
    task: str,
    split: str,
    data_cfg: DataConfig,
    tokenizer,
    model_norm: Normalization,
    check_source: bool = False,
):
    """The dataset of a task and split; retrieval val/test gives a RetrievalEvalData instead.

    `check_source`: say which of the split's videos (images) the source lacks, and refuse a source that
    holds none (check_source_coverage). The trainer's TaskData asks for it; off by default for datasets
    whose frames are never read (a text-only test, a tool reading annotations)."""
    dataset = _build_dataset(task, split, data_cfg, tokenizer, model_norm)
    if check_source:
        check_source_coverage(dataset.videos if isinstance(dataset, RetrievalEvalData) else dataset)
    return dataset


def _build_dataset(task: str, split: str, data_cfg: DataConfig, tokenizer, model_norm: Normalization):
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if task in RET_TASKS:
        if split == "train":
            return RetrievalTrainDataset(task, split, data_cfg, tokenizer, model_norm)
        return build_retrieval_eval(task, split, data_cfg, tokenizer, model_norm)
    if task in QA_TASKS:
        return QADataset(task, split, data_cfg, tokenizer, model_norm)
    if task in MC_TASKS:
        return MultipleChoiceDataset(task, split, data_cfg, tokenizer, model_norm)
    if task == "vqa":
        return VQADataset(task, split, data_cfg, tokenizer, model_norm)
    return PretrainDataset(task, split, data_cfg, tokenizer, model_norm)


def check_source_coverage(dataset: TaskDataset) -> None:
    """Say at start-up how many of the split's distinct videos (images) its source lacks: a warning naming
    the key, the count and a few ids if some; a DataError if all.

    Why: a data.video_dir pointed at another dataset's folder or a half-finished download, or a frame store
    built from another split's videos, made each missing video a bad input replaced by another example's;
    the run trained on the few that exist, said only by per-video warnings and the epoch summary, and with
    none at all stopped steps in with "too many bad videos". One listing, not a probe of each file."""
    wanted = {dataset.video_of(i) for i in range(len(dataset))}
    cfg = dataset.cfg
    if dataset.source is None:  # an image task
        missing = missing_images(dataset.image_root, wanted)
        what, where = "images", f"data.image_root={str(dataset.image_root)!r}"
    else:
        missing = dataset.source.missing(wanted)
        what = "videos"
        where = (
            f"data.frame_store={cfg.frame_store!r}"
            if cfg.backend == "frame_store"
            else f"data.video_dir={cfg.video_dir!r}"
        )
    if not missing:
        return
    name = f"{dataset.task}/{dataset.split}"
    if len(missing) == len(wanted):
        raise DataError(
            f"none of the {len(wanted):,} {what} of {name} ({dataset.ann_path}) is in {where}, e.g. "
            f"{missing[0]!r}: point the key at the split's {what}"
        )
    examples = ", ".join(repr(v) for v in missing[:3])
    log.warning(
        "%s of %s %s of %s are not in %s (e.g. %s): their examples are bad inputs, each replaced by "
        "another example's",
        f"{len(missing):,}",
        f"{len(wanted):,}",
        what,
        name,
        where,
        examples,
    )


def _is_score(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
