"""Annotation files in the original ClipBERT release's formats, built from the scenes by templates.

Each task draws from its own generator seeded with (seed, task number), so adding a task never changes
the others' files.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from . import text, vqa
from .video import dump_json

SPLITS = ("train", "val", "test")
TRAIN_CAPTIONS_PER_VIDEO = 4
MC_OPTIONS = 5


def write_jsonl(path: Path, rows: list[dict]) -> int:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)


def _task_rng(seed: int, task_number: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1_000_000 + task_number])


def write_all(out: Path, scenes: dict[str, list[dict]], images: dict[str, list[dict]], seed: int) -> dict:
    """Write every task file under `out/annotations`; return {task: {split: number of lines}}."""
    ann = out / "annotations"
    counts: dict[str, dict[str, int]] = {}
    dump_json(ann / "splits.json", {s: [sc["video_id"] for sc in scenes[s]] for s in SPLITS})
    counts["msrvtt_ret"] = _retrieval(ann, scenes, _task_rng(seed, 1))
    counts["didemo_ret"] = _paragraphs(ann, "didemo_ret", scenes, with_speed=False)
    counts["anet_ret"] = _paragraphs(ann, "anet_ret", scenes, with_speed=True)
    qa_rows = {s: _qa_rows(scenes[s], text.open_questions, "video_id") for s in SPLITS}
    counts["msrvtt_qa"] = _open_qa(ann, "msrvtt_qa", qa_rows)
    frame_rows = {s: _qa_rows(scenes[s], text.frame_questions, "gif_name") for s in SPLITS}
    counts["tgif_frameqa"] = _open_qa(ann, "tgif_frameqa", frame_rows)
    counts["tgif_action"] = _action(ann, scenes, _task_rng(seed, 2))
    counts["tgif_transition"] = _transition(ann, scenes, _task_rng(seed, 3))
    mc_rows = _mc(scenes["test"], scenes["train"] + scenes["val"], _task_rng(seed, 4))
    counts["msrvtt_mc"] = {"test": write_jsonl(ann / "msrvtt_mc_test.jsonl", mc_rows)}
    counts["pretrain"] = {}
    for split in ("train", "val"):
        rows = [{k: r[k] for k in ("image_id", "caption", "file")} for r in images[split]]
        counts["pretrain"][split] = write_jsonl(ann / f"pretrain_{split}.jsonl", rows)
    vqa_rows, ans2label = vqa.vqa_splits(images, scenes, _task_rng(seed, 5))
    dump_json(ann / "vqa_ans2label.json", ans2label)
    counts["vqa"] = {split: write_jsonl(ann / f"vqa_{split}.jsonl", rows) for split, rows in vqa_rows.items()}
    return counts


def _retrieval(ann: Path, scenes: dict, rng: np.random.Generator) -> dict[str, int]:
    """MSRVTT style: several captions per training video, the one full caption per val/test video."""
    counts = {}
    for split in SPLITS:
        rows = []
        for sc in scenes[split]:
            caps = (
                text.train_captions(sc, rng, TRAIN_CAPTIONS_PER_VIDEO)
                if split == "train"
                else [text.full_caption(sc)]
            )
            rows += [{"caption": c, "clip_name": sc["video_id"]} for c in caps]
        counts[split] = write_jsonl(ann / f"msrvtt_ret_{split}.jsonl", rows)
    return counts


def _paragraphs(ann: Path, task: str, scenes: dict, with_speed: bool) -> dict[str, int]:
    counts = {}
    for split in SPLITS:
        rows = []
        for sc in scenes[split]:
            sentences, stamps = text.paragraph(sc)
            if not with_speed:  # DiDeMo's sentences are shorter than ActivityNet's
                sentences[0] = text.opening(sc["attributes"], with_speed=False)
            rows.append(
                {
                    "clip_name": sc["video_id"],
                    "duration": round(sc["duration"], 3),
                    "sentences": sentences,
                    "timestamps": stamps,
                }
            )
        counts[split] = write_jsonl(ann / f"{task}_{split}.jsonl", rows)
    return counts


def _qa_rows(scenes: list[dict], make_questions, video_key: str) -> list[dict]:
    rows = []
    for sc in scenes:
        for k, (question, answer, answer_type) in enumerate(make_questions(sc)):
            rows.append(
                {
                    "question": question,
                    "answer": answer,
                    video_key: sc["video_id"],
                    "answer_type": answer_type,
                    "question_id": f"{sc['video_id']}_q{k}",
                }
            )
    return rows


def _open_qa(ann: Path, task: str, rows: dict[str, list[dict]]) -> dict[str, int]:
    """Write splits plus ans2label (answers seen in training, sorted; others get label -100 downstream)."""
    answers = sorted({r["answer"] for r in rows["train"]})
    dump_json(ann / f"{task}_ans2label.json", {a: i for i, a in enumerate(answers)})
    return {split: write_jsonl(ann / f"{task}_{split}.jsonl", rows[split]) for split in SPLITS}


def _action(ann: Path, scenes: dict, rng: np.random.Generator) -> dict[str, int]:
    counts = {}
    for split in SPLITS:
        rows = []
        for sc in scenes[split]:
            a = sc["attributes"]
            options, answer = text.action_options(a, rng)
            rows.append(
                {
                    "question": f"what does the {a['color']} {a['shape']} do",
                    "options": options,
                    "answer": answer,
                    "gif_name": sc["video_id"],
                    "question_id": f"{sc['video_id']}_action",
                }
            )
        counts[split] = write_jsonl(ann / f"tgif_action_{split}.jsonl", rows)
    return counts


def _transition(ann: Path, scenes: dict, rng: np.random.Generator) -> dict[str, int]:
    counts = {}
    for split in SPLITS:
        rows = []
        for sc in scenes[split]:
            item = text.transition_item(sc, rng)
            if item is None:  # nothing happens in this video
                continue
            question, options, answer = item
            rows.append(
                {
                    "question": question,
                    "options": options,
                    "answer": answer,
                    "gif_name": sc["video_id"],
                    "question_id": f"{sc['video_id']}_transition",
                }
            )
        counts[split] = write_jsonl(ann / f"tgif_transition_{split}.jsonl", rows)
    return counts


def _mc(test_scenes: list[dict], other_scenes: list[dict], rng: np.random.Generator) -> list[dict]:
    """MSRVTT-MC: the true caption among 4 full captions of other test videos.

    A different full caption names at least one attribute or event the video lacks, so it is false
    (a paraphrase of the same video would be true, hence never used). Small benchmarks with fewer than
    5 test videos borrow captions of train/val videos, then captions with one attribute changed.
    """
    captions = [text.full_caption(sc) for sc in test_scenes]
    spare = [text.full_caption(sc) for sc in other_scenes]
    rows = []
    for i, sc in enumerate(test_scenes):
        others = sorted({c for j, c in enumerate(captions) if j != i} - {captions[i]})
        if len(others) < MC_OPTIONS - 1:
            others += sorted(set(spare) - set(others) - {captions[i]})
        if len(others) < MC_OPTIONS - 1:
            others += sorted(
                set(text.counterfactual_captions(sc["attributes"])) - set(others) - {captions[i]}
            )
        pool = [others[k] for k in rng.permutation(len(others))]
        wrong = pool[: MC_OPTIONS - 1]
        answer = int(rng.integers(MC_OPTIONS))
        wrong.insert(answer, captions[i])  # [5] options
        rows.append(
            {"qid": f"mc_{sc['video_id']}", "clip_name": sc["video_id"], "options": wrong, "answer": answer}
        )
    return rows


def chance_levels(out: Path, counts: dict, num_test: int, num_val: int) -> dict:
    """Chance per task: 1/N for retrieval R@1, 1/5 for multiple choice, majority answer for open QA; None for
    a split with no item (tgif_transition's test split of a small benchmark whose test videos have no event):
    a chance level of a split that does not exist read as a measured one."""
    chance = {}
    for task in ("msrvtt_ret", "didemo_ret", "anet_ret"):
        chance[task] = {"metric": "R@1", "val": 1.0 / num_val, "test": 1.0 / num_test}
    for task in ("tgif_action", "tgif_transition", "msrvtt_mc"):
        chance[task] = {"metric": "accuracy", "test": 1.0 / MC_OPTIONS if counts[task].get("test") else None}
    for task in ("msrvtt_qa", "tgif_frameqa"):
        chance[task] = _qa_chance(out / "annotations", task)
    chance["pretrain"] = {"metric": "itm accuracy", "val": 0.5}
    chance["vqa"] = _vqa_chance(out / "annotations")
    return chance


def _read_split(ann: Path, task: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (ann / f"{task}_{split}.jsonl").read_text().splitlines()]


def _vqa_chance(ann: Path) -> dict:
    """The prior baseline of VQA: each answer type's most common training answer, scored on val."""

    labels = json.loads((ann / "vqa_ans2label.json").read_text())
    return {
        "metric": "vqa accuracy",
        "uniform": 1.0 / max(len(labels), 1),
        "val": vqa.prior_accuracy(_read_split(ann, "vqa", "train"), _read_split(ann, "vqa", "val")),
        "note": "val = most common training answer per answer_type (the test split has no answers)",
    }


def _qa_chance(ann: Path, task: str) -> dict:
    """Uniform guess over ans2label, and the stronger prior baseline: the most common training answer
    per answer type, scored on the test split."""

    train, test = _read_split(ann, task, "train"), _read_split(ann, task, "test")
    labels = json.loads((ann / f"{task}_ans2label.json").read_text())
    by_type: dict[str, Counter] = {}
    for row in train:
        by_type.setdefault(row["answer_type"], Counter())[row["answer"]] += 1
    top = {t: max(sorted(c), key=c.__getitem__) for t, c in by_type.items()}
    hits = sum(top.get(r["answer_type"]) == r["answer"] for r in test)
    return {
        "metric": "accuracy",
        "uniform": 1.0 / max(len(labels), 1),
        "test": hits / len(test) if test else None,
        "note": "test = most common training answer per answer_type",
    }
