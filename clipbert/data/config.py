"""Validated data configuration: unknown keys and bad values raise ValueError naming the key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

TASKS = (
    "msrvtt_ret",
    "didemo_ret",
    "anet_ret",
    "msrvtt_qa",
    "tgif_frameqa",
    "tgif_action",
    "tgif_transition",
    "msrvtt_mc",
    "pretrain",
    "vqa",
)
SPLITS = ("train", "val", "test")
BACKENDS = ("pyav", "dali", "frame_store")
STRATEGIES = ("rand", "uniform", "middle")

# Token budgets per task, [CLS] and [SEP] included; the paper gives none but pre-training's. Texts are padded
# to the longest in their batch (the original padded to its budget), so a budget costs nothing until a text
# reaches it. MSRVTT takes the original release's max_txt_len (100); the others are longer than the
# original's, which cut texts: TGIF's 25 (a long question read with an option lost the option's words),
# VQA's 20 (a long question's end), and the 100 of paragraphs (didemo/anet: several sentences joined).
# docs/TRAINING.md ("The original release's configs") lists them; every task's dataset logs its cuts.
DEFAULT_MAX_TEXT_LEN = {
    "msrvtt_ret": 100,
    "didemo_ret": 120,
    "anet_ret": 150,
    "msrvtt_qa": 100,
    "tgif_frameqa": 40,
    "tgif_action": 60,
    "tgif_transition": 60,
    "msrvtt_mc": 100,
    "pretrain": 50,
    "vqa": 40,
}


@dataclass
class DataConfig:
    ann_dir: str = ""  # folder with the *.jsonl annotation files (DIR/annotations of the synthetic layout)
    video_dir: str = ""  # folder with <video_id>.{mp4|webm|avi|...}
    image_root: str = ""  # base folder of image tasks' "file" entries (pretrain, vqa); "" = ann_dir's parent
    backend: str = "pyav"  # pyav | dali | frame_store
    frame_store: str = ""  # path to frames.h5 (backend frame_store)
    frame_store_reader: str = "cpu"  # cpu: workers decode JPEGs | dali: workers read bytes, DALI decodes
    image_size: int = 448  # L: longer side after resize, then zero-padded to L x L
    # Image tasks: "stored" reads a photo's pixels as stored, as the original release (PIL) did and as COCO's
    # and Visual Genome's annotators saw them (browsers then ignored EXIF), so VQA's "on the left" holds;
    # "exif" turns a photo tagged with an EXIF orientation upright, as viewers now show it (phone photos).
    image_orientation: str = "stored"
    num_clips: int = 1  # Ntrain clips per video in training
    num_test_clips: int = 16  # Ntest clips per video in evaluation (the paper's main results use 16)
    frames_per_clip: int = 1  # T
    clip_seconds: float = 1.0  # length of one clip
    train_sampling: str = "rand"  # rand | uniform | middle
    test_sampling: str = "uniform"
    max_text_len: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_TEXT_LEN))
    itm_neg_size: int = 1  # negative captions per video in retrieval training (M = 1 + itm_neg_size)
    mlm_prob: float = 0.15  # pretrain: fraction of tokens masked
    itm_neg_prob: float = 0.5  # pretrain: probability that the caption is swapped for a random one
    # pretrain: the swapped caption's masked tokens are MLM targets too, as in the original release (its
    # collate masks every caption). Off: a caption that does not describe the image has nothing to predict
    # from it.
    mlm_on_swapped: bool = False
    num_workers: int = 2  # DataLoader worker processes
    # FFmpeg threads per PyAV decoder. 1: parallelism comes from the workers, and frame threading would
    # refill its pipeline after every seek of sparse sampling (16 workers x 17 threads stalled a 16-core
    # machine). 0: FFmpeg picks one per core, for a single worker on a laptop.
    pyav_threads: int = 1
    prefetch_factor: int = 2  # batches prefetched per worker
    seed: int = 42  # sampling randomness = f(seed, epoch, index)
    max_bad_retries: int = 8  # replacement tries after a bad video before giving up with an error
    # decoded videos kept per worker: texts reading a video's same frames (evaluation) decode them once
    frame_cache_size: int = 8
    dali_threads: int = 4  # CPU threads per DALI pipeline
    dali_pipelines: int = 1  # parallel DALI decoder pipelines (each has its own decoder instance)
    dali_order: str = "frames"  # none | frames: decode a sample's frames in ascending order, restore after
    dali_build_index: bool = True  # let fn.decoders.video index each file (exact, fast seeks; costs a scan)
    # Tie the GPU video decoder's threads to CPU cores (DALI's default). DALI takes the cores in the same
    # order in every pipeline and process, so parallel ones would share a few cores; off, the OS spreads
    # them. To be measured on the GPU: bench_data.py --dali-affine on,off.
    dali_affine: bool = False
    # Workers cut each video down to the packets its sampled frames need (dali_pipelines/trim.py), so DALI,
    # which decodes every sample from the start of its file (measured on its CPU decoder), decodes a few
    # key-frame runs instead.
    dali_trim: bool = True
    # Rows (samples) per DALI sample: the workers pack up to this many cut videos of one stream format
    # back to back (dali_pipelines/pack.py), so DALI's fixed cost per sample (about 9 ms on an H200,
    # whatever it decodes) is paid once per pack. 1: no packing. Needs dali_trim. Off by default until
    # bench_data.py --dali-pack measures it on the GPU.
    dali_pack: int = 1

    def __post_init__(self) -> None:
        self._check_types()
        if isinstance(self.max_text_len, int):
            self.max_text_len = {task: self.max_text_len for task in TASKS}
        else:
            self.max_text_len = {**DEFAULT_MAX_TEXT_LEN, **dict(self.max_text_len)}
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("train_sampling", self.train_sampling, STRATEGIES)
        _check_choice("test_sampling", self.test_sampling, STRATEGIES)
        _check_choice("dali_order", self.dali_order, ("none", "frames"))
        _check_choice("frame_store_reader", self.frame_store_reader, ("cpu", "dali"))
        _check_choice("image_orientation", self.image_orientation, ("stored", "exif"))
        for key in ("dali_build_index", "dali_affine", "dali_trim", "mlm_on_swapped"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")
        for task, length in self.max_text_len.items():
            _check_choice("max_text_len key", task, TASKS)
            if not isinstance(length, int) or length < 3:
                raise ValueError(f"max_text_len[{task!r}] must be an int >= 3, got {length!r}")
        for key in (
            "image_size",
            "num_clips",
            "num_test_clips",
            "frames_per_clip",
            "prefetch_factor",
            "dali_pack",
        ):
            _check_positive_int(key, getattr(self, key))
        if self.dali_pack > 1 and not self.dali_trim:
            raise ValueError(f"dali_pack={self.dali_pack} packs cut videos: it needs dali_trim=true")
        for key in (
            "itm_neg_size",
            "num_workers",
            "pyav_threads",
            "max_bad_retries",
            "frame_cache_size",
            "seed",
        ):
            _check_nonnegative_int(key, getattr(self, key))
        for key in ("dali_threads", "dali_pipelines"):
            _check_positive_int(key, getattr(self, key))
        if not 0 < self.clip_seconds < float("inf"):  # inf: every sample would fail in the workers
            raise ValueError(f"clip_seconds must be a finite number > 0, got {self.clip_seconds!r}")
        for key in ("mlm_prob", "itm_neg_prob"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {value!r}")
        if self.backend == "frame_store" and not self.frame_store:
            raise ValueError("frame_store must name an HDF5 file when backend is 'frame_store'")

    def _check_types(self) -> None:
        # Before the range checks: a JSON string ("2", "0.1") or true where a number belongs failed them with
        # a bare TypeError naming no key, and a number where a path belongs failed later in a worker.
        for key in ("ann_dir", "video_dir", "image_root", "frame_store"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"{key} must be a string (a path), got {getattr(self, key)!r}")
        for key in ("clip_seconds", "mlm_prob", "itm_neg_prob"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{key} must be a number, got {value!r}")
        length = self.max_text_len
        if isinstance(length, bool) or not isinstance(length, (int, dict)):
            raise ValueError(f"max_text_len must be an int or an object of task -> int, got {length!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        """Build from a JSON section; an unknown key raises ValueError listing the allowed keys."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in allowed:
                raise ValueError(f"unknown data config key {key!r}; allowed: {', '.join(allowed)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _check_positive_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key} must be a positive int, got {value!r}")


def _check_nonnegative_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative int, got {value!r}")
