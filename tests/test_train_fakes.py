"""In-memory stand-ins for the data pipeline (a helper module of the trainer tests; it holds no tests itself).

They keep the trainer tests fast (no video decoding) and let a test inject NaN frames or a SIGTERM at a
chosen example. Items are pure functions of (epoch, index), like the real datasets.
"""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import torch

from clipbert.data.loader import ShardedSampler
from clipbert.data.visual_words import build_word_vocab
from clipbert.models import ClipBertConfig
from clipbert.train import config as C

L = 64  # smallest image side the model accepts: one visual token per clip
VOCAB = 200  # token ids drawn in [1000, 1200): below the 1536-word table make_config gives the model


def _gen(*key: int) -> torch.Generator:
    seed = 0
    for k in key:
        seed = seed * 1_000_003 + k
    return torch.Generator().manual_seed(seed)


class FakeSet(torch.utils.data.Dataset):
    """kind: retrieval | qa | mc | mc_itm | video (retrieval eval videos)."""

    def __init__(
        self,
        kind,
        size,
        n_clips,
        m_texts=2,
        num_answers=5,
        nan_epoch=None,
        nan_indices=(),
        sigterm_at=None,
        delay_s=0.0,
        crash_epoch=None,
        bad_indices=(),
    ):
        self.kind, self.size, self.n, self.m = kind, size, n_clips, m_texts
        self.delay_s = delay_s  # a slow decoder: each example takes this long to load
        self.crash_epoch = crash_epoch  # every example of this epoch and later raises (a crashed run)
        self.num_answers = num_answers
        self.nan_epoch, self.nan_indices, self.sigterm_at = nan_epoch, set(nan_indices), sigterm_at
        self.word_vocab = None  # set by FakeData.train() for train.visual_word_loss
        self.bad_indices = set(bad_indices)  # examples whose video is reported bad (and stood in for)

    def enable_visual_words(self):
        texts = [self[(0, i)]["input_ids"] for i in range(self.size)]
        self.word_vocab = build_word_vocab(texts, special_ids=[0, 101, 102])

    def __len__(self):
        return self.size

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        time.sleep(self.delay_s)
        if self.crash_epoch is not None and epoch >= self.crash_epoch:
            raise RuntimeError(f"injected crash at epoch {epoch}")
        if self.sigterm_at is not None and (epoch, index) == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        g = _gen(epoch, index)
        frames = torch.randn(self.n, 1, 3, L, L, generator=_gen(index)) + 0.1 * index  # [N, T, 3, L, L]
        if index in self.nan_indices or (self.nan_epoch is not None and epoch >= self.nan_epoch):
            frames[:] = float("nan")
        bad = [f"bad{index}.mp4: missing file"] if index in self.bad_indices else []
        item = {"index": index, "video_id": f"v{index}", "bad_videos": bad, "frames": frames}
        if self.kind == "video":
            return item
        m = 1 if self.kind == "qa" else self.m
        lengths = torch.randint(3, 7, (m,), generator=g).tolist()
        item["input_ids"] = [
            [101] + torch.randint(1000, 1000 + VOCAB, (n,), generator=g).tolist() for n in lengths
        ]
        if self.kind == "retrieval":
            item["labels"] = [1] + [0] * (m - 1)
            if self.word_vocab is not None:
                item["word_targets"] = self.word_vocab.targets[index]
        elif self.kind == "qa":
            item["labels"] = -100 if index % 4 == 3 else index % self.num_answers
            item["answer_type"] = ["what", "who"][index % 2]
        else:
            item["labels"] = index % m
        return item


def collate(items: list[dict]) -> dict:
    """Items -> the batch of docs/ARCHITECTURE.md (texts right-padded with 0)."""
    batch = {
        "index": torch.tensor([it["index"] for it in items]),
        "video_ids": [it["video_id"] for it in items],
        "bad_videos": [entry for it in items for entry in it["bad_videos"]],
        "frames": torch.stack([it["frames"] for it in items]),  # [B, N, T, 3, L, L]
    }
    if "input_ids" in items[0]:
        rows = [row for it in items for row in it["input_ids"]]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.int64)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
        batch["input_ids"] = ids.view(len(items), -1, ids.shape[-1])  # [B, M, Lt]
        batch["attention_mask"] = (batch["input_ids"] != 0).long()
        batch["labels"] = torch.tensor([it["labels"] for it in items])
    if "answer_type" in items[0]:
        batch["answer_types"] = [it["answer_type"] for it in items]
    if "word_targets" in items[0]:
        batch["word_targets"] = torch.stack([torch.from_numpy(it["word_targets"]) for it in items])
    return batch


def collate_dropping(items: list[dict], dropped: set[int]) -> dict:
    """collate, then the rows of the `dropped` examples taken out as the DALI loader does (its drop_rows),
    named in `bad_videos` as dropped: a batch of such examples only has B = 0."""
    from clipbert.data.bad_input import DROPPED
    from dali_pipelines.loader import drop_rows

    batch = collate(items)
    rows = [r for r, i in enumerate(batch["index"].tolist()) if i in dropped]
    batch["bad_videos"] += [f"bad{batch['index'][r]}.mp4: undecodable; {DROPPED}" for r in rows]
    return drop_rows(batch, rows)


class FakeData:
    """The `TaskData` interface (clipbert/train/data.py) over FakeSet."""

    def __init__(self, cfg, model_cfg, device, *, train_size=8, eval_size=5, **fault):
        self.cfg, self.train_size, self.eval_size, self.fault = cfg, train_size, eval_size, fault

    def _loader(self, dataset, batch_size, train):
        # the real loader's sampler (rank sharding, set_epoch with mid-epoch resume) and collate
        sampler = ShardedSampler(len(dataset), batch_size, train, self.cfg.data.seed)
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, drop_last=train
        )

    def train(self):
        kind = self.cfg.task.kind
        ds = FakeSet(kind, self.train_size, self.cfg.data.num_clips, **self.fault)
        if self.cfg.train.visual_word_loss:
            ds.enable_visual_words()
        return ds, self._loader(ds, self.cfg.train.batch_size, True)

    def has_split(self, split):
        return True

    @property
    def tokenizer(self):
        # as TaskData.tokenizer: the export names the visual words' tokens with it (train/export.py)
        from clipbert.data.tokenizer import build_tokenizer

        return build_tokenizer()

    def visual_words(self, device):
        # as TaskData.visual_words: the training set's vocabulary, for retrieval with the word loss
        from clipbert.train.tasks import VisualWords

        if self.cfg.task.kind != "retrieval" or not self.cfg.train.visual_word_loss:
            return None
        dataset, _ = self.train()
        return VisualWords.from_vocab(dataset.word_vocab, self.cfg.train.visual_word_loss, device)

    def num_answers(self):
        return 5

    def eval(self, split):
        kind, n = self.cfg.task.kind, self.cfg.data.num_test_clips
        if kind != "retrieval":
            ds = FakeSet(kind, self.eval_size, n, m_texts=3)
            return ds, self._loader(ds, self.cfg.eval.batch_size, False)
        videos = FakeSet("video", self.eval_size, n)
        owner = torch.arange(self.eval_size).repeat_interleave(2)  # two texts per video
        g = _gen(7, self.eval_size)
        ids = torch.randint(1000, 1000 + VOCAB, (len(owner), 5), generator=g)
        data = SimpleNamespace(
            videos=videos,
            video_ids=[f"v{i}" for i in range(self.eval_size)],
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            text_to_video=owner,
        )
        return data, self._loader(videos, self.cfg.eval.batch_size, False)


def fake_factory(**kwargs):
    return lambda cfg, model_cfg, device: FakeData(cfg, model_cfg, device, **kwargs)


# the model's default table, the bundled tokenizer's vocabulary: for runs that read real annotations
REAL_TEXT = {"vocab_size": ClipBertConfig.__dataclass_fields__["vocab_size"].default}


def make_config(output_dir, task="msrvtt_ret", train=None, eval=None, deepspeed=None, data=None, model=None):
    """A tiny CPU config: tiny preset at L=64, 2 clips x 1 frame, fp32, ZeRO-0."""
    # The fakes draw token ids below 1200: a 1536-word table instead of the preset's 30522 cuts the model from
    # 5.4M to 1.7M parameters, and the suite writes and reads hundreds of its checkpoints. A run on real
    # annotations (data.ann_dir) tokenizes with the bundled vocabulary and keeps the full table.
    words = REAL_TEXT if "ann_dir" in (data or {}) else {"vocab_size": 1536}
    raw = {
        "task": {"name": task},
        "model": {
            "preset": "tiny",
            "backbone_layers": [1, 1, 1, 1],
            "num_layers": 1,
            **words,
            **(model or {}),
        },
        "data": {
            "image_size": L,
            "num_clips": 2,
            "num_test_clips": 3,
            "frames_per_clip": 1,
            "num_workers": 0,
            **(data or {}),
        },
        "train": {
            "output_dir": str(output_dir),
            "device": "cpu",
            "epochs": 2,
            "batch_size": 2,
            "grad_accum": 1,
            "lr": 1e-3,
            "cnn_lr": 1e-3,
            "log_every": 1,
            "progress_bar": False,
            "tensorboard": False,
            "plot": False,
            **(train or {}),
        },
        "eval": {"batch_size": 2, "video_batch": 2, "text_batch": 4, **(eval or {})},
        "deepspeed": {"zero_optimization": {"stage": 0}, **(deepspeed or {})},
    }
    return C.from_dict(raw)
