"""predict.json: what `python -m clipbert.predict` needs besides the weights, written into an export.

Why: an export (`<output_dir>/model`) used to hold the model config and the weights only, so predicting
needed the run's config.json one level up and its annotation files (the answer vocabulary, the training
captions of the word score). With predict.json next to the weights, a model dir copied alone still
predicts; clipbert/predict/loading.py prefers it and falls back to the run's files for older exports.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from clipbert.train.config import ANSWER_KINDS
from clipbert.train.logging import get_logger

PREDICT_INFO = "predict.json"
FORMAT = 1  # bumped when a key changes meaning; a reader refuses formats it does not know
SECTIONS = ("task", "data", "eval")  # whole, as in the run's config.json, so one parser reads both


def answer_list(ann_dir: str | Path, task: str, num_answers: int) -> list[str]:
    """label -> answer from the task's ans2label file, which sized the model's QA head.

    Raises FileNotFoundError or ValueError naming the file."""
    from clipbert.data.datasets import read_ans2label

    path = Path(ann_dir) / f"{task}_ans2label.json"
    ans2label = read_ans2label(path)  # labels 0..K-1, each once: the datasets' check
    if len(ans2label) != num_answers:
        raise ValueError(f"{path}: {len(ans2label)} answers, but the model's head has {num_answers}")
    return sorted(ans2label, key=ans2label.get)


def word_vocab_of(entry: dict):
    """predict.json's `visual_words` -> a data.visual_words.WordVocab (without the training targets), as
    tasks.VisualWords.from_vocab takes it."""
    from clipbert.data.visual_words import WordVocab

    word_ids = np.asarray(entry["word_ids"], dtype=np.int64)
    prior = np.asarray(entry["prior"], dtype=np.float32)
    if word_ids.ndim != 1 or word_ids.shape != prior.shape:
        raise ValueError(f"visual_words: {word_ids.shape[0]} word_ids but {prior.shape} priors")
    return WordVocab(word_ids, prior, np.zeros((0, len(word_ids)), dtype=np.uint8))


def predict_info(cfg, model_cfg, data) -> dict:
    """The settings predict scores with and, where the run has them, its vocabularies. `data` is the run's
    TaskData: its visual words are the very ones the word head trained on."""
    sections = cfg.to_dict()
    info = {"format": FORMAT, **{name: sections[name] for name in SECTIONS}}
    if cfg.data.ann_dir:  # absolute: predict.json is read from another directory than the run's
        info["data"]["ann_dir"] = str(Path(cfg.data.ann_dir).resolve())
    info["train"] = {"visual_word_loss": cfg.train.visual_word_loss}
    if cfg.task.kind in ANSWER_KINDS:
        try:
            info["answers"] = answer_list(cfg.data.ann_dir, cfg.task.name, model_cfg.num_answers)
        except (FileNotFoundError, ValueError) as err:  # predict then reads it from the annotations
            get_logger().warning("%s: %s holds no answer list", err, PREDICT_INFO)
    words = data.visual_words(torch.device("cpu"))  # None unless retrieval with the word loss
    if words is not None:
        ids = words.word_ids.tolist()
        # the tokens too: predict checks them against its tokenizer, since the ids mean nothing under another
        info["visual_words"] = {"word_ids": ids, "words": data.tokenizer.convert_ids_to_tokens(ids)}
        info["visual_words"]["prior"] = words.prior.tolist()
    return info


def write_predict_info(directory: str | Path, info: dict) -> Path:
    """Atomic: a kill mid-write leaves no predict.json (predict falls back to the run's files), never a
    truncated one."""
    path = Path(directory) / PREDICT_INFO
    tmp = path.with_name(f"{PREDICT_INFO}.tmp")
    tmp.write_text(json.dumps(info, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def export_model(cfg, engine, model_cfg, data, directory: str | Path) -> None:
    """The engine's weights (ClipBert.save_pretrained; collective under ZeRO-3) and predict.json, so that the
    dir predicts without the run's files: the final model/ and the selected best_model/."""
    from clipbert.train import checkpoint as ckpt
    from clipbert.train.logging import is_rank0

    ckpt.export_pretrained(engine, directory)
    if is_rank0():
        write_predict_info(Path(directory), predict_info(cfg, model_cfg, data))
