"""The trainer's view of the data pipeline (issue 5): datasets and loaders for a task and split.

`TaskData` is the seam the tests replace with an in-memory stand-in: `train()` and `eval(split)` return
(dataset, loader), and `num_answers()` sizes the QA head.
"""

from __future__ import annotations

import codecs
import gc
from pathlib import Path


class TaskData:
    """Datasets and loaders of clipbert.data for cfg.task.name; loaders shard by the distributed rank."""

    def __init__(self, cfg, model_cfg, device):
        from clipbert.data.preprocess import normalization_for
        from clipbert.data.tokenizer import build_tokenizer

        self.cfg, self.device = cfg, device
        self.tokenizer = build_tokenizer()
        if len(self.tokenizer) > model_cfg.vocab_size:
            # Why here: the model checks token ids on CPU only; on a GPU an id past its embedding table ends
            # in a device-side assert that names nothing, steps into training.
            from clipbert.train.config import ConfigError

            raise ConfigError(
                f"model.vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's vocabulary "
                f"({len(self.tokenizer)} tokens, clipbert/assets/bert-base-uncased-vocab.txt): drop "
                "model.vocab_size or set it to at least that"
            )
        self.norm = normalization_for(model_cfg)
        self._cache = {}

    def _dataset(self, split: str):
        from clipbert.data.datasets import build_dataset

        if split not in self._cache:
            check_ann_dir(self.cfg.data.ann_dir, f"{self.cfg.task.name}_{split}.jsonl")
            self._cache[split] = build_dataset(
                self.cfg.task.name, split, self.cfg.data, self.tokenizer, self.norm, check_source=True
            )
        return self._cache[split]

    def has_split(self, split: str) -> bool:
        """Whether the split's annotation file exists and holds an example (a non-blank line)."""
        path = Path(self.cfg.data.ann_dir) / f"{self.cfg.task.name}_{split}.jsonl"
        return path.is_file() and holds_a_line(path)

    def train(self):
        from clipbert.data.loader import build_loader

        dataset = self._dataset("train")
        self._read_eval_splits()
        if self.cfg.train.visual_word_loss and dataset.word_vocab is None:  # before any worker starts
            dataset.enable_visual_words()
        # The loader's workers fork from here on, sharing these datasets' pages until written. The workers
        # never touch the evaluation splits', but a worker's garbage collection would walk (write) every
        # object it inherited: frozen, the collector leaves them alone and the pages stay shared.
        gc.freeze()
        return dataset, build_loader(
            dataset, self.cfg.data, self.cfg.train.batch_size, True, device=str(self.device)
        )

    def _read_eval_splits(self) -> None:
        """Reads the annotations of the splits this training run will evaluate (kept for those evaluations).

        Why now: a missing, empty or malformed eval.split file stopped the run at its first evaluation, an
        epoch or train.eval_every steps in, and a malformed eval.test_split file after the whole training."""
        cfg = self.cfg
        if cfg.train.eval_every != -1:
            self._dataset(cfg.eval.split)
        if cfg.eval.final_eval and self.has_split(cfg.eval.test_split):
            self._dataset(cfg.eval.test_split)

    def visual_words(self, device):
        """The training set's visual-word vocabulary as tasks.VisualWords (retrieval with
        train.visual_word_loss and a train split), else None. Deterministic: the same words and base rates
        that training used, so an eval-only run scores with the vocabulary the head was trained on."""
        from clipbert.train.tasks import VisualWords

        wanted = self.cfg.task.kind == "retrieval" and self.cfg.train.visual_word_loss > 0
        if not wanted or not self.has_split("train"):
            return None
        dataset = self._dataset("train")
        vocab = dataset.word_vocab if dataset.word_vocab is not None else dataset.enable_visual_words()
        return VisualWords.from_vocab(vocab, self.cfg.train.visual_word_loss, device)

    def eval(self, split: str):
        """(dataset, loader); retrieval gives a RetrievalEvalData and a loader over its videos."""
        from clipbert.data.loader import build_loader

        dataset = self._dataset(split)
        videos = dataset.videos if self.cfg.task.kind == "retrieval" else dataset
        return dataset, build_loader(
            videos, self.cfg.data, self.cfg.eval.batch_size, False, device=str(self.device)
        )

    def num_answers(self) -> int:
        """Answer vocabulary size of an open-ended QA task (its ans2label file)."""
        from clipbert.data.annotations import read_json

        path = Path(self.cfg.data.ann_dir) / f"{self.cfg.task.name}_ans2label.json"
        check_ann_dir(self.cfg.data.ann_dir, path.name)  # read before any dataset: the same advice
        return len(read_json(path))


def holds_a_line(path: Path) -> bool:
    """Whether a JSON-lines file has a non-blank line (the datasets skip blank ones), reading up to it.

    Why: the synthetic generator writes an empty file for a split with no item (a small benchmark's
    tgif_transition test split, `null` in its meta.json), which the datasets refuse ("no examples"). A
    training run then stopped with exit 2 after all its steps, at the final evaluation, where a split
    without a file is skipped with a warning (docs/TRAINING.md)."""
    with path.open("rb") as f:
        return any(line.removeprefix(codecs.BOM_UTF8).strip() for line in f)


def check_ann_dir(ann_dir: str, file_name: str) -> None:
    """A FileNotFoundError that says what to do when data.ann_dir is not a directory.

    Why: the likeliest first mistakes (training before generating the benchmark, or from another directory
    than the one the relative data/... paths start in) otherwise end in "annotation file not found:
    data/synthetic/annotations/msrvtt_ret_train.jsonl", which says neither where it looked nor what to run."""
    path = Path(ann_dir)
    if path.is_dir():
        return
    where = "" if path.is_absolute() else f" (relative to the current directory {Path.cwd()})"
    out = path.parent if path.name == "annotations" else Path("DIR")
    raise FileNotFoundError(
        f"annotation file not found: {path / file_name}: data.ann_dir is not a directory{where}; run from "
        "the directory that holds it, --set data.ann_dir=... to your annotations, or generate the synthetic "
        f"benchmark there with `python -m clipbert.data.synthetic --out {out}`"
    )
