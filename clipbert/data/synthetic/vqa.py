"""VQA 2.0-style questions about the pre-training stills, each with ten noisy human answers.

A still answers four questions: the main object's colour and its shape (type "other"), whether a named
object is in view ("yes/no"), and how many gray shapes there are ("number"). Ten simulated annotators
answer each one. Most give the truth in varied surface forms ("Red", "red.", "a circle", "two" for 2), so
the evaluation's answer normalization matters. A few give another answer of the same kind, each at most
twice, so the truth stays the clear majority and the soft targets include partial scores (0.3, 0.6).
Questions are written without "?", as the benchmark's other questions, so every word is one BERT token.
"""

from __future__ import annotations

import numpy as np

from ..vqa_answers import answer_scores, build_ans2label
from .scene import PALETTE, SHAPES, color_at, fully_visible, object_by_id
from .text import _num_distractors

HUMANS = 10
DISSENT = (0, 0, 0, 1, 1, 2, 3, 5, 7)  # annotators who answer wrongly; 7 leaves the truth 3 votes (0.9)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SPLIT_BASE = {"train": 1_000_000, "val": 2_000_000}  # question ids: split base + running number


def still_questions(scene: dict, frame: int, rng: np.random.Generator) -> list[tuple[str, str, str, list]]:
    """(question, truth, answer type, wrong answers to draw from) for one still of `scene`."""
    t = frame / scene["fps"]
    main = object_by_id(scene, "main")
    color = color_at(main, t)
    second = next((o for o in scene["objects"] if o["role"] == "second"), None)
    visible = second is not None and bool(fully_visible(second, scene, np.array([t]))[0])
    shown = {(color, main["shape"])}
    if visible:
        shown.add((color_at(second, t), second["shape"]))
    other_colors = [c for c in PALETTE if c != color]
    qs = [(f"what color is the {main['shape']}", color, "other", other_colors)]
    if not (visible and color_at(second, t) == color):  # a colour change can give both objects one colour
        other_shapes = [s for s in SHAPES if s != main["shape"]]
        qs.append((f"what shape is the {color} object", main["shape"], "other", other_shapes))
    if visible and rng.random() < 0.5:
        asked, truth = (color_at(second, t), second["shape"]), "yes"
    else:  # a colour and shape that no coloured object in view has
        absent = [(c, s) for c in PALETTE for s in SHAPES if (c, s) not in shown]
        asked, truth = absent[rng.integers(len(absent))], "no"
    qs.append((f"is there a {asked[0]} {asked[1]}", truth, "yes/no", ["no" if truth == "yes" else "yes"]))
    count = _num_distractors(scene)
    near = [str(n) for n in (count - 1, count + 1, count + 2) if n >= 0]
    qs.append(("how many gray shapes are there", str(count), "number", near))
    return qs


def human_answers(truth: str, wrong: list[str], rng: np.random.Generator) -> list[str]:
    """Ten answers: the truth in varied forms, and up to 7 wrong ones (each wrong answer at most twice)."""
    pool = wrong * 2
    dissent = min(int(DISSENT[rng.integers(len(DISSENT))]), len(pool))
    forms = [truth, truth.capitalize(), f"{truth}.", f" {truth} "]
    if truth.isdigit() and int(truth) < len(NUMBER_WORDS):
        forms.append(NUMBER_WORDS[int(truth)])
    elif truth in SHAPES:
        forms.append(f"a {truth}")
    answers = [forms[rng.integers(len(forms))] for _ in range(HUMANS - dissent)]
    answers += [pool[k] for k in rng.permutation(len(pool))[:dissent]]
    return [answers[k] for k in rng.permutation(len(answers))]


def vqa_rows(stills: list[dict], scenes: dict[str, dict], split: str, rng: np.random.Generator) -> list[dict]:
    """One line per question about each still, in convert_vqa's format (file relative to the data root)."""
    rows = []
    for still in stills:
        scene = scenes[still["video_id"]]
        for question, truth, answer_type, wrong in still_questions(scene, still["frame"], rng):
            rows.append(
                {
                    "question_id": SPLIT_BASE[split] + len(rows),
                    "image_id": still["image_id"],
                    "question": question,
                    "file": still["file"],
                    "answers": human_answers(truth, wrong, rng),
                    "answer_type": answer_type,
                }
            )
    return rows


def vqa_splits(images: dict, scenes: dict, rng: np.random.Generator) -> tuple[dict, dict]:
    """({split: rows}, ans2label): vqa_train/val from the train/val stills, vqa_test the val questions
    without answers (as VQA's test-dev: predictions only), the answer vocabulary from the training
    questions' majority answers."""
    by_id = {sc["video_id"]: sc for split_scenes in scenes.values() for sc in split_scenes}
    rows = {split: vqa_rows(images[split], by_id, split, rng) for split in ("train", "val")}
    rows["test"] = [{k: v for k, v in r.items() if k not in ("answers", "answer_type")} for r in rows["val"]]
    return rows, build_ans2label([r["answers"] for r in rows["train"]], min_count=1)


def prior_accuracy(train: list[dict], val: list[dict]) -> float:
    """VQA accuracy on `val` of answering each question type's most common training answer."""
    votes: dict[str, dict[str, float]] = {}
    for row in train:
        for answer, score in answer_scores(row["answers"]).items():
            kind = votes.setdefault(row["answer_type"], {})
            kind[answer] = kind.get(answer, 0.0) + score
    best = {kind: max(sorted(scores), key=scores.__getitem__) for kind, scores in votes.items()}
    total = sum(answer_scores(r["answers"]).get(best.get(r["answer_type"], ""), 0.0) for r in val)
    return total / max(len(val), 1)
