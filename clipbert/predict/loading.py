"""An exported model directory, made ready to predict: the model, its run settings, tokenizer, vocabularies.

A training run's export (`<output_dir>/model`) holds the model config, the weights and `predict.json`
(clipbert/train/export.py): what the model was trained for (the task, Ntest and the clip sampling, the
aggregation, the word score), the answer vocabulary (open-ended QA) and the visual-word vocabulary (retrieval
with `eval.word_score_weight`), so the dir predicts on its own. Older exports have no predict.json: their
settings are the run's resolved `config.json`, one level up, and their vocabularies are read from the run's
annotation files, as the trainer's evaluation reads them. `--config` and `--ann-dir` replace either source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from clipbert.train import config as C
from clipbert.train.export import FORMAT, PREDICT_INFO, SECTIONS, answer_list, word_vocab_of

RUN_CONFIG = "config.json"  # the resolved config a training run writes next to its model/
IMAGE_KINDS = ("pretrain", "vqa")  # trained on images (one clip of one frame): they score --image inputs


class PredictError(Exception):
    """A bad model dir, run config or vocabulary file: exit status 2; the message names the file or key."""


@dataclass
class RunSettings:
    """The parts of a run's config that decide how it scores (the model section is the export's own)."""

    path: Path  # the config file they come from
    task: C.TaskConfig
    data: object  # clipbert.data.config.DataConfig: Ntest, T, L, clip_seconds, test_sampling, ann_dir
    eval: C.EvalConfig
    visual_word_loss: float  # > 0: the model has the visual-word head and eval adds its word score
    answers: list[str] | None = None  # label -> answer, from predict.json (None: from the annotations)
    word_vocab: object | None = None  # data.visual_words.WordVocab from predict.json (None: rebuilt)
    word_tokens: list[str] | None = None  # its words as tokens, when predict.json gives them (checked)

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def unit(self) -> str:
        """What the model scores: "image" (VQA, pre-training) or "video" (every other task)."""
        return "image" if self.kind in IMAGE_KINDS else "video"


@dataclass
class Predictor:
    model: torch.nn.Module  # a ClipBert in eval mode on `device`
    model_dir: Path
    run: RunSettings
    tokenizer: object
    norm: object  # clipbert.data.preprocess.Normalization of the model
    device: torch.device
    answers: list[str] | None = None  # label -> answer, for open-ended QA and VQA
    words: object | None = None  # tasks.VisualWords of the training set, when the word score is used
    word_score_weight: float = 0.0
    dtype: torch.dtype = torch.float32  # the autocast dtype of scoring (float32: none)

    @property
    def max_text_len(self) -> int:
        return self.run.data.max_text_len[self.run.task.name]


def find_model_dir(path: str | Path) -> Path:
    """The export dir itself, or `<output_dir>/model` when given a run's output dir; PredictError naming
    the missing file otherwise."""
    from clipbert.models.clipbert import CONFIG_NAME, WEIGHTS_NAME

    path = Path(path)
    if not path.is_dir():
        what = "is a file, not the export's directory" if path.exists() else "no such directory"
        raise PredictError(f"--model {path}: {what}")
    if not (path / CONFIG_NAME).is_file() and (path / "model" / CONFIG_NAME).is_file():
        path = path / "model"
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise PredictError(
                f"{path / name} not found: an exported model dir holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                "(a training run writes it to <output_dir>/model)"
            )
    return path


def find_run_config(model_dir: Path, given: str | None) -> Path:
    """--config, else the export's predict.json, else a config.json in the model dir, else the run's
    config.json one level up (exports from before predict.json)."""
    if given:
        if not Path(given).is_file():
            raise PredictError(f"--config {given}: no such file")
        return Path(given)
    candidates = (model_dir / PREDICT_INFO, model_dir / RUN_CONFIG, model_dir.parent / RUN_CONFIG)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise PredictError(
        f"no run config for {model_dir}: none of {', '.join(map(str, candidates))} exists. The run's "
        "config.json says the task, Ntest and the aggregation: pass it with --config"
    )


def read_run_settings(path: Path, ann_dir: str | None) -> RunSettings:
    """The task, data, eval and visual-word settings of a run's config.json (or of a shipped config), or
    of an export's predict.json with its vocabularies (unless --ann-dir asks for the annotations').

    Why not config.load: it also resolves the model section (init weights that need not exist here) and
    parses the deepspeed section through DeepSpeed, none of which prediction uses."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))  # UnicodeDecodeError is a ValueError
        if not isinstance(raw, dict):
            raise C.ConfigError("expected a JSON object with task, data and eval sections")
        _check_sections(raw, export="format" in raw or path.name == PREDICT_INFO)
        task = C.build_section("task", C.TaskConfig, raw.get("task", {}))
        data = C.build_data(raw.get("data", {}))
        evaluation = C.build_section("eval", C.EvalConfig, {**raw.get("eval", {}), "only": False})
        train = C.build_section("train", C.TrainConfig, raw.get("train", {}))
        run = RunSettings(path, task, data, evaluation, train.visual_word_loss)
        if not ann_dir:
            _exported_vocabularies(raw, run)
    except (ValueError, TypeError, KeyError, C.ConfigError) as err:  # JSONDecodeError is a ValueError
        raise PredictError(f"run config {path}: {err}") from err
    data.ann_dir = ann_dir or _resolve_relative(data.ann_dir, path, train.output_dir)
    return run


def _check_sections(raw: dict, export: bool) -> None:
    """Each section a JSON object; and an export's predict.json (`export`) holds every section it is
    written with. Why: a run's config.json may leave a section to its defaults, as the run did, but a
    predict.json without one was edited or damaged, and the defaults (task msrvtt_ret, Ntest, L, no word
    score) are not what the model was trained with."""
    for name in ("task", "data", "eval", "train"):
        if name in raw and not isinstance(raw[name], dict):
            raise C.ConfigError(f"{name}: expected a JSON object, got {type(raw[name]).__name__}")
    if export:
        missing = [name for name in (*SECTIONS, "train") if name not in raw]
        if "task" in raw and "name" not in raw["task"]:
            missing.append("task.name")
        if missing:
            raise C.ConfigError(
                f"missing {', '.join(missing)}: an export's {PREDICT_INFO} holds the run's task, data, eval "
                "and train settings (give the run's config.json with --config)"
            )


def _exported_vocabularies(raw: dict, run: RunSettings) -> None:
    """predict.json's answers and visual words into `run` (a run's config.json has neither key)."""
    if raw.get("format", FORMAT) != FORMAT:
        raise C.ConfigError(f"format {raw['format']!r}: this version reads {PREDICT_INFO} format {FORMAT}")
    if "answers" in raw:
        if not isinstance(raw["answers"], list) or not all(isinstance(a, str) for a in raw["answers"]):
            raise C.ConfigError("answers: expected a list of strings")
        run.answers = raw["answers"]
    if "visual_words" in raw:
        entry = raw["visual_words"]
        missing = [key for key in ("word_ids", "prior") if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise C.ConfigError(
                f"visual_words: expected an object with word_ids, prior and words; no {missing}"
            )
        run.word_vocab = word_vocab_of(entry)
        run.word_tokens = raw["visual_words"].get("words")  # exports from before they were written: none


def _resolve_relative(ann_dir: str, config_path: Path, output_dir: str) -> str:
    """A relative data.ann_dir, as the run saw it. Why: the run resolved it against its working directory,
    which is the config's folder less the (relative) train.output_dir it was written to."""
    if not ann_dir or Path(ann_dir).is_absolute() or Path(ann_dir).is_dir():
        return ann_dir
    folder, out = config_path.resolve().parent, Path(output_dir)
    if not out.is_absolute() and folder.parts[-len(out.parts) :] == out.parts:
        root = Path(*folder.parts[: -len(out.parts)])
        if (root / ann_dir).is_dir():
            return str(root / ann_dir)
    return ann_dir


def _check_model_fits(model_cfg, run: RunSettings) -> None:
    """The export and the run config must describe the same model (a --config of another run would
    sample other frames or read another head)."""
    expected = {
        "head": C.HEAD_OF_KIND[run.kind],
        "image_size": run.data.image_size,
        "frames_per_clip": run.data.frames_per_clip,
        "max_text_len": run.data.max_text_len[run.task.name],
    }
    wrong = [
        f"{key}: model {getattr(model_cfg, key)!r}, config {value!r}"
        for key, value in expected.items()
        if getattr(model_cfg, key) != value
    ]
    if wrong:
        raise PredictError(
            f"the model and the run config {run.path} (task {run.task.name}) disagree: {'; '.join(wrong)}"
        )


def _answers(run: RunSettings, num_answers: int) -> list[str]:
    """label -> answer: predict.json's, else the task's ans2label file, which sized the model's QA head."""
    if run.answers is not None:
        if len(run.answers) != num_answers:
            raise PredictError(
                f"{run.path}: {len(run.answers)} answers, but the model's head has {num_answers}"
            )
        return run.answers
    try:
        return answer_list(run.data.ann_dir, run.task.name, num_answers)
    except (FileNotFoundError, ValueError) as err:
        raise PredictError(f"answer vocabulary: {err} (give the run's annotations with --ann-dir)") from err


def _check_word_tokens(run: RunSettings, tokenizer) -> None:
    """predict.json's visual words are token ids of the training's tokenizer; under another vocabulary they
    would score other words, silently. Its tokens name the first difference."""
    if run.word_tokens is None:
        return
    ids = run.word_vocab.word_ids.tolist()
    here = tokenizer.convert_ids_to_tokens(ids)
    if len(run.word_tokens) != len(ids):
        raise PredictError(
            f"{run.path}: visual_words has {len(ids)} word_ids but {len(run.word_tokens)} words"
        )
    for token_id, trained, ours in zip(ids, run.word_tokens, here):
        if trained != ours:
            raise PredictError(
                f"{run.path}: visual word id {token_id} is {trained!r} in training but {ours!r} in this "
                "tokenizer: the export was trained with another vocabulary (--word-score-weight 0 scores "
                "with the matching head alone)"
            )


def _training_words(run: RunSettings, tokenizer, device):
    """The training set's visual-word vocabulary: predict.json's, else built as the trainer builds it
    (RetrievalTrainDataset.enable_visual_words, through TaskData.visual_words) from the texts alone, so the
    training videos need not be here."""
    from clipbert.data.datasets import caption_word_vocab, group_texts, read_task_annotations
    from clipbert.train.tasks import VisualWords

    if run.word_vocab is not None:  # predict.json's: the training set's, saved at export
        _check_word_tokens(run, tokenizer)
        return VisualWords.from_vocab(run.word_vocab, run.visual_word_loss, device)
    task = run.task.name
    path = Path(run.data.ann_dir) / f"{task}_train.jsonl"
    try:
        examples = read_task_annotations(path, task)  # as the trainer read them (a paragraph's two forms)
    except (FileNotFoundError, ValueError) as err:
        raise PredictError(
            f"the word score (eval.word_score_weight={run.eval.word_score_weight}) needs the training "
            f"captions: {err}. Give the run's annotations with --ann-dir, or --word-score-weight 0 for the "
            "matching head alone"
        ) from err
    vocab = caption_word_vocab(group_texts(task, examples), tokenizer, run.data.max_text_len[task])
    return VisualWords.from_vocab(vocab, run.visual_word_loss, device)


def load_predictor(run: RunSettings, model_dir: Path, device: torch.device, word_weight: float | None):
    """The model of `model_dir` on `device` with what scoring it needs; word_weight overrides the run's
    eval.word_score_weight (None keeps it)."""
    from safetensors import SafetensorError

    from clipbert.data.preprocess import normalization_for
    from clipbert.data.tokenizer import build_tokenizer
    from clipbert.models import ClipBert

    try:
        model = ClipBert.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as err:  # a cut file, key mismatch
        raise PredictError(f"model {model_dir}: {type(err).__name__}: {err}") from err
    _check_model_fits(model.config, run)
    model.to(device).eval()
    tokenizer = build_tokenizer()  # the trainer's (TaskData): the bundled uncased vocabulary
    predictor = Predictor(model, model_dir, run, tokenizer, normalization_for(model.config), device)
    if run.kind in C.ANSWER_KINDS:
        predictor.answers = _answers(run, model.config.num_answers)
    if run.kind == "pretrain" and model.cls is None:
        raise PredictError(
            f"model {model_dir}: a pretrain model needs its pre-training heads (pretrain_heads)"
        )
    weight = run.eval.word_score_weight if word_weight is None else word_weight
    # as evaluate_retrieval: the word score needs the word loss's vocabulary, the head and a weight
    uses_words = run.kind == "retrieval" and run.visual_word_loss > 0 and weight > 0
    if uses_words and getattr(model, "visual_words", None) is not None:
        predictor.words = _training_words(run, tokenizer, device)
        predictor.word_score_weight = float(weight)
    return predictor
