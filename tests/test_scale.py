"""What the data pipeline does at the real datasets' sizes, checked by how it scales, not by timing.

Measured on 5.6M pre-training captions (COCO + Visual Genome's size) with 4 DataLoader workers, a list of
dicts was copied into each worker page by page as it read them: the workers' memory grew with every batch.
"""

import gc
import json
import pickle

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from clipbert.data.annotations import AnnotationError, PackedRecords
from clipbert.data.config import DataConfig
from clipbert.data.datasets import build_dataset
from clipbert.data.preprocess import IMAGENET_RGB
from clipbert.train.metrics import retrieval_metrics


def _reachable_objects(root) -> int:
    """How many Python objects the garbage collector can reach from `root` (itself included)."""
    seen, todo = {id(root)}, [root]
    while todo:
        for child in gc.get_referents(todo.pop()):
            if id(child) not in seen and not isinstance(child, type):
                seen.add(id(child))
                todo.append(child)
    return len(seen)


def _qa_set(root, n: int, split: str = "train") -> DataConfig:
    """An msrvtt_qa annotation file of `n` questions over n // 4 videos, every 7th answer outside
    ans2label (dropped from training); the videos are never read."""
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (root / "videos").mkdir(exist_ok=True)
    (ann / "msrvtt_qa_ans2label.json").write_text(json.dumps({"red": 0, "blue": 1}))
    lines = [
        {
            "question": f"what color is object {k}",
            "answer": "green" if k % 7 == 3 else ("red", "blue")[k % 2],
            "video_id": f"video{k // 4}",
        }
        for k in range(n)
    ]
    (ann / f"msrvtt_qa_{split}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return DataConfig(ann_dir=str(ann), video_dir=str(root / "videos"), num_workers=0)


def test_packed_records_read_as_the_list_they_were_made_of():
    records = [
        {"caption": f"a dog {k}", "clip_name": k, "sentences": ["a", "b"] * (k % 3)} for k in range(70)
    ]
    packed = PackedRecords(records)
    assert len(packed) == 70 and list(packed) == records and bool(packed)
    assert packed[0] == records[0] and packed[-1] == records[-1] and packed[np.int64(5)] == records[5]
    assert packed[3:9:2] == records[3:9:2]
    assert pickle.loads(pickle.dumps(packed))[69] == records[69]  # spawned workers get a copy
    with pytest.raises(IndexError, match="record 70 of 70"):
        packed[70]
    with pytest.raises(TypeError):
        packed[1.0]
    assert not PackedRecords([]) and list(PackedRecords([])) == []


def test_a_dataset_holds_no_python_object_per_example(tokenizer, tmp_path):
    # 4x the questions, the same number of Python objects behind dataset.examples: each one is a page that a
    # forked worker copies as soon as it reads (increments a reference count in) it. A list of dicts held
    # 5 objects a question (the dict, its 3 strings, the list's slot aside): 17 GB more for 4 workers at 5.6M.
    small = build_dataset("msrvtt_qa", "train", _qa_set(tmp_path / "small", 280), tokenizer, IMAGENET_RGB)
    large = build_dataset("msrvtt_qa", "train", _qa_set(tmp_path / "large", 1120), tokenizer, IMAGENET_RGB)
    assert len(large) == 4 * len(small) == 960  # every 7th question dropped: still packed afterwards
    assert _reachable_objects(large.examples) == _reachable_objects(small.examples)
    assert large.examples[1] == {"question": "what color is object 1", "answer": "blue", "video_id": "video0"}
    assert large.line_numbers[3] == 5  # line 4 (k = 3) was dropped


def test_the_clip_rank_table_is_built_before_the_workers_fork(tokenizer, tmp_path):
    # built lazily, each forked worker made its own (a pass over every question: 0.3 s and its own memory)
    data = build_dataset("msrvtt_qa", "train", _qa_set(tmp_path, 28), tokenizer, IMAGENET_RGB)
    table = vars(data).get("_clip_ranks")
    assert table is not None and table[0] is data.examples
    assert data.sample_key(5, 1) == 1 * 4 + 2  # question k=6 (k=3 dropped): video1's third; 4 a video


def test_a_file_is_read_a_line_at_a_time(tmp_path):
    # the datasets pack each record as it is read: a 5.6M-line file was first held whole as dicts (5.2 GB)
    from clipbert.data.datasets import iter_task_lines

    path = tmp_path / "msrvtt_ret_train.jsonl"
    path.write_text(
        '{"caption": "a dog", "clip_name": "v0"}\n\n{"caption": "a cat", "clip_name": "v1"}\n{oops\n'
    )
    lines = iter_task_lines(path, "msrvtt_ret")
    assert next(lines) == (1, {"caption": "a dog", "clip_name": "v0"})
    assert next(lines) == (3, {"caption": "a cat", "clip_name": "v1"})
    with pytest.raises(AnnotationError, match=r"msrvtt_ret_train\.jsonl:4: malformed JSON"):
        next(lines)


class _CountCompared(TorchFunctionMode):
    """Counts the elements of every comparison's result (>=, >, ==, !=, ...) run under it."""

    COMPARISONS = {
        "ge",
        "gt",
        "le",
        "lt",
        "eq",
        "ne",
        "__ge__",
        "__gt__",
        "__le__",
        "__lt__",
        "__eq__",
        "__ne__",
    }

    def __init__(self):
        super().__init__()
        self.compared = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in self.COMPARISONS and isinstance(out, torch.Tensor):
            self.compared += out.numel()
        return out


def test_video_to_text_ranks_compare_each_score_a_few_times_not_every_text_pair():
    # MSRVTT's full test split (59,800 texts, 2,990 videos): every text was compared with every text in each
    # video-to-text rank (3.6e9 pairs, 77 s); a video's best own text is all that needs ranking
    q, v = 2_000, 5
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 50, (q, v), generator=gen).double()  # [Q, V], ties included
    owner = torch.arange(q) % v
    with _CountCompared() as counter:
        got = retrieval_metrics(scores, owner)
    assert counter.compared <= 6 * q * v  # q * q = 4,000,000 before
    best = [max(scores[owner == k, k]) for k in range(v)]
    expected = [1 + int((scores[owner != k, k] >= best[k]).sum()) for k in range(v)]
    assert got["v2t_meanr"] == pytest.approx(sum(expected) / v)
