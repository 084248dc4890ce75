"""The results as one JSON-ready dict (--json) and as readable tables (stdout).

The keys name what was scored: "videos"/"video" for video models, "images"/"image" for the image tasks'
(VQA, pre-training), so a results file says which it holds."""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import torch

from clipbert.train.tasks import NO_PREDICTION, checked_argmax


def _number(x: float) -> float | None:
    """JSON has no NaN or Infinity: a diverged model's scores are written as null."""
    return x if math.isfinite(x) else None


def _matrix(t: torch.Tensor | None) -> list[list[float | None]] | None:
    return None if t is None else [[_number(x) for x in row] for row in t.tolist()]


def header(predictor, skipped) -> dict:
    run = predictor.run
    data = run.data
    if run.unit == "image":  # one clip of one frame: no sampling, and aggregating one clip is the identity
        settings = {"image_size": data.image_size}
    else:
        settings = {
            # as VideoSource.indices samples: the middle strategy takes one clip whatever Ntest says
            "num_test_clips": 1 if data.test_sampling == "middle" else data.num_test_clips,
            "frames_per_clip": data.frames_per_clip,
            "clip_seconds": data.clip_seconds,
            "sampling": data.test_sampling,
            "image_size": data.image_size,
            "aggregation": run.task.aggregation,
        }
    return {
        "model": str(predictor.model_dir),
        "run_config": str(run.path),
        "task": run.task.name,
        "kind": run.kind,
        "unit": run.unit,
        "device": str(predictor.device),
        "dtype": str(predictor.dtype).removeprefix("torch."),
        "settings": settings,
        "skipped": [{run.unit: s.path, "reason": s.reason} for s in skipped],
    }


def retrieval_json(predictor, result, texts: list[str], skipped) -> dict:
    out = header(predictor, skipped)
    unit = predictor.run.unit
    out["settings"]["word_score_weight"] = predictor.word_score_weight if result.word is not None else 0.0
    score = result.score  # [V, Q]
    out.update(
        {
            f"{unit}s": result.videos,
            "texts": texts,
            "scores": _matrix(score),  # the table: videos (images) x texts, higher = better match
            "match_log_prob": _matrix(result.match),
            "word_score": _matrix(result.word),
            f"best_{unit}_per_text": [],
            f"best_text_per_{unit}": [],
        }
    )
    if result.fills:  # pretrain texts with a [MASK]: the MLM head's top tokens, per image
        out["fill_mask"] = [
            {
                unit: fill.video,
                "text": texts[fill.text],
                "masks": [
                    [{"token": t, "prob": _number(p)} for t, p in zip(words, probs)]
                    for words, probs in zip(fill.tokens, fill.probs)
                ],
            }
            for fill in result.fills
        ]
    if score.numel():
        for q, v in enumerate(score.argmax(0).tolist()):
            best = {"text": texts[q], unit: result.videos[v], "score": _number(score[v, q].item())}
            out[f"best_{unit}_per_text"].append(best)
        for v, q in enumerate(score.argmax(1).tolist()):
            best = {unit: result.videos[v], "text": texts[q], "score": _number(score[v, q].item())}
            out[f"best_text_per_{unit}"].append(best)
    return out


# what answers_json's "prob" is, per kind (VQA's head is trained per answer with binary cross-entropy)
ANSWER_PROBS = {
    "qa": "softmax over the answers of the clip-aggregated scores",
    "vqa": "sigmoid of each answer's logit: the predicted VQA accuracy of that answer, not a distribution",
}


def answers_json(predictor, result, questions: list[str], top_k: int, skipped) -> dict:
    out = header(predictor, skipped)
    unit = predictor.run.unit
    out.update({f"{unit}s": result.videos, "questions": questions, "prob": ANSWER_PROBS[predictor.run.kind]})
    out["results"] = []
    k = min(top_k, len(predictor.answers))
    for video, log_probs in zip(result.videos, result.log_probs):
        for q, question in enumerate(questions):
            top = log_probs[q].exp().topk(k)  # see ANSWER_PROBS
            answers = [
                {"answer": predictor.answers[i], "prob": _number(p)}
                for p, i in zip(top.values.tolist(), top.indices.tolist())
            ]
            out["results"].append({unit: video, "question": question, "top_answers": answers})
    return out


def options_json(predictor, result, question: str | None, options: list[str], skipped) -> dict:
    out = header(predictor, skipped)
    # mc: log p(option), a distribution over the options; mc_itm: each option's own log p(match)
    measure = "log_prob" if predictor.run.kind == "mc" else "match_log_prob"
    out.update(videos=result.videos, question=question, options=options, score=measure, results=[])
    for video, log_p in zip(result.videos, result.log_probs):
        scores = log_p[0]  # [O]
        row = {
            "video": video,
            "scores": [_number(x) for x in scores.tolist()],
            "probs": [_number(x) for x in scores.exp().tolist()],
        }
        row.update(_choice(scores, options))
        out["results"].append(row)
    return out


def _choice(scores: torch.Tensor, options: list[str]) -> dict:
    """scores [O] -> the chosen option as the evaluation counts it: none when the top score is tied between
    options or a score is NaN (tasks.checked_argmax: evaluation counts such a question wrong). Why: an argmax
    here showed the first tied option as the model's answer, where the evaluation scores no answer."""
    chosen = int(checked_argmax(scores[None], ties_lose=True)[0])
    if chosen != NO_PREDICTION:
        return {"chosen": chosen, "chosen_option": options[chosen]}
    why = "a NaN score" if bool(torch.isnan(scores).any()) else "the top score is tied between options"
    return {"chosen": None, "chosen_option": None, "no_choice": why}


def _names(videos: list[str]) -> dict[str, str]:
    """Short display names: the file names where they are unique, else the paths."""
    names = [Path(v).name for v in videos]
    return dict(zip(videos, names if len(set(names)) == len(names) else videos))


def _columns(text: str) -> int:
    """The terminal columns `text` takes: 2 for a wide (CJK) character, 0 for a combining accent."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def _pad(text: str, width: int) -> str:
    """`text` padded to `width` terminal columns. Why not f"{text:<{width}}": it counts characters, so a row
    named "数据 二.mp4" (or a macOS "e" + accent) pushed its scores out of their column."""
    return text + " " * max(0, width - _columns(text))


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_header(out: dict) -> list[str]:
    s = out["settings"]
    if out["unit"] == "image":
        inputs = f"each image as one clip of one frame, L={s['image_size']}, {out['device']}"
    else:
        inputs = (
            f"{s['num_test_clips']} clips x {s['frames_per_clip']} frame(s) per video, {s['sampling']} "
            f"sampling, L={s['image_size']}, {s['aggregation']} aggregation, {out['device']}"
        )
    if out["dtype"] != "float32":
        inputs += f", {out['dtype']} autocast"
    return [f"{out['task']} ({out['kind']}) model {out['model']}", inputs]


TABLE_TEXTS = 10  # text columns per block of the stdout table (10 characters each)


def _text_tags(count: int) -> list[str]:
    """t1 ... tN padded to one width, so that the texts and best videos after them line up past t9."""
    width = len(f"t{count}")
    return [f"{f't{q + 1}':<{width}}" for q in range(count)]


def format_retrieval(out: dict) -> list[str]:
    unit = out["unit"]
    weight = out["settings"]["word_score_weight"]
    words = f" + {weight:g} x word log-likelihood ratio" if out["word_score"] is not None else ""
    lines = [f"score = log p(match){words} (higher = better match)", "", "texts:"]
    tag = _text_tags(len(out["texts"]))
    lines += [f"  {tag[q]}  {_clip(t)}" for q, t in enumerate(out["texts"])]
    names = _names(out[f"{unit}s"])
    width = max([_columns(n) for n in names.values()] + [5])
    # Why blocks: one row of hundreds of texts is a line thousands of characters wide, which a terminal
    # wraps into an unreadable table; blocks of TABLE_TEXTS columns keep each line one screen wide.
    for q0 in range(0, len(out["texts"]), TABLE_TEXTS):
        columns = range(q0, min(q0 + TABLE_TEXTS, len(out["texts"])))
        lines += ["", f"{unit:<{width}}" + "".join(f"{f't{q + 1}':>10}" for q in columns)]
        for video, row in zip(out[f"{unit}s"], out["scores"]):
            lines.append(_pad(names[video], width) + "".join(_cell(row[q]) for q in columns))
    lines += ["", f"best {unit} per text:"]
    lines += [
        f"  {tag[q]}  {names[b[unit]]}  ({_cell(b['score']).strip()})"
        for q, b in enumerate(out[f"best_{unit}_per_text"])
    ]
    lines += [f"best text per {unit}:"]
    texts = {t: q for q, t in reversed(list(enumerate(out["texts"])))}
    lines += [
        f"  {_pad(names[b[unit]], width)}  t{texts[b['text']] + 1}  ({_cell(b['score']).strip()})"
        for b in out[f"best_text_per_{unit}"]
    ]
    if out.get("fill_mask"):
        lines += ["", "[MASK] fillers (the pre-training MLM head; p = softmax over the vocabulary):"]
        for fill in out["fill_mask"]:
            masks = "  |  ".join(
                ", ".join(
                    f"{c['token']} {'nan' if c['prob'] is None else format(c['prob'], '.3g')}"
                    for c in candidates
                )
                for candidates in fill["masks"]
            )
            lines.append(f"  {_pad(names[fill[unit]], width)}  t{texts[fill['text']] + 1}  {masks}")
    return lines


def _cell(x: float | None, digits: int = 3) -> str:
    return f"{'nan':>10}" if x is None else f"{x:>10.{digits}f}"


def format_answers(out: dict) -> list[str]:
    unit = out["unit"]
    names, lines = _names(out[f"{unit}s"]), []
    label = "p" if out["kind"] == "qa" else "score"  # VQA: a per-answer sigmoid (ANSWER_PROBS)
    if out["kind"] == "vqa":
        lines.append("score = the predicted VQA accuracy of the answer (a sigmoid per answer, not a softmax)")
    for r in out["results"]:
        lines += ["", f"{names[r[unit]]}  Q: {r['question']}"]
        width = max(_columns(a["answer"]) for a in r["top_answers"])
        lines += [
            f"  {i}. {_pad(a['answer'], width)}  {label}={_cell(a['prob']).strip()}"
            for i, a in enumerate(r["top_answers"], start=1)
        ]
    return lines


def format_options(out: dict) -> list[str]:
    names = _names(out["videos"])
    label = "p" if out["score"] == "log_prob" else "p(match)"
    lines = [] if out["question"] is None else ["", f"Q: {out['question']}"]
    width = max(_columns(_clip(text)) for text in out["options"])
    for r in out["results"]:
        lines += ["", names[r["video"]]]
        for o, (text, score, p) in enumerate(zip(out["options"], r["scores"], r["probs"])):
            mark = "*" if o == r["chosen"] else " "
            numbers = f"log {label}={_cell(score, 4).strip()}  {label}={_cell(p).strip()}"
            lines.append(f"  {mark} {o + 1}. {_pad(_clip(text), width)}  {numbers}")
        if r["chosen"] is None:
            lines.append(f"  no option chosen: {r['no_choice']} (the evaluation counts it wrong)")
    return lines


def add_truncated(out: dict, key: str, texts: list[str], counts: list[int], max_len: int) -> None:
    """The texts (questions, options) longer than the model's max_text_len tokens into out["truncated"]:
    the model reads their first max_len tokens only, as the evaluation does, so a user must be told."""
    out["max_text_len"] = max_len  # the model's, in tokens with [CLS] and [SEP]
    out["truncated"] = [{key: t, "tokens": n} for t, n in zip(texts, counts) if n > max_len]


def format_truncated(out: dict) -> list[str]:
    cut = out.get("truncated")
    if not cut:
        return []
    max_len = out["max_text_len"]
    lines = [
        "",
        f"truncated {len(cut)} text(s) to the model's max_text_len={max_len} tokens (the rest is not read):",
    ]
    for entry in cut:
        key = next(k for k in entry if k != "tokens")
        paired = " with the question" if key == "option" and out.get("question") else ""
        lines.append(f"  {_clip(entry[key])}  ({entry['tokens']} tokens{paired}, [CLS] and [SEP] included)")
    return lines


def format_skipped(out: dict) -> list[str]:
    if not out["skipped"]:
        return []
    unit = out["unit"]
    lines = ["", f"skipped {len(out['skipped'])} input(s), scored {len(out[f'{unit}s'])} {unit}(s):"]
    return lines + [f"  {s[unit]}: {s['reason']}" for s in out["skipped"]]
