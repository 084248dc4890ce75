"""`python -m clipbert.predict`: score your own videos with an exported model (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import torch

from clipbert.predict import report
from clipbert.predict.inputs import (
    FileSource,
    clip_frames,
    expand_inputs,
    image_frames,
    iter_clips,
    read_texts,
)
from clipbert.predict.loading import (
    PredictError,
    find_model_dir,
    find_run_config,
    load_predictor,
    read_run_settings,
)
from clipbert.predict.scoring import score_answers, score_options, score_retrieval, token_counts

EPILOG = """examples:
  python -m clipbert.predict --model outputs/demo/retrieval/model --video clips/ \\
      --text "a red circle moves left" --text "a blue square grows" --json scores.json
  python -m clipbert.predict --model outputs/msrvtt_qa/model --video a.mp4 --question "what is moving?"
  python -m clipbert.predict --model outputs/tgif_action/model --video a.gif \\
      --question "what does the circle do?" --option "jumps" --option "spins" --option "waves"
  python -m clipbert.predict --model outputs/vqa/model --image photos/ --question "what color is the car?"
  python -m clipbert.predict --model outputs/pretrain/model --image a.jpg --text "a dog on a sofa" \\
      --text "a [MASK] on a sofa"                          # matching scores, and the MLM head's fillers

The export's predict.json gives the task, Ntest, the clip sampling, the aggregation and the vocabularies;
an older export without one uses its run's config.json (next to model/) and annotations.
Video models take --video; image models (vqa, pretrain) take --image, each image one clip of one frame.
exit codes: 0 done, 1 no usable video or image (or --json could not be written), 2 bad arguments, model dir,
run config or task."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MASK_WORD = re.compile(r"\[mask\]", re.IGNORECASE)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clipbert.predict",
        description="Score your own videos or images with an exported ClipBERT model (retrieval, QA, "
        "multiple choice, VQA, image-text matching).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--model", required=True, help="an exported model dir (<output_dir>/model) or a run's output dir")
    add("--config", help="the run's config.json (default: the model dir's predict.json, else the run's)")
    add("--ann-dir", help="the run's annotations, where its data.ann_dir is not (QA answers, word score)")
    # nargs="+": an unquoted glob (`--video clips/*.mp4`), expanded by the shell, was "unrecognized arguments"
    paths = {"action": "extend", "nargs": "+", "default": [], "metavar": "PATH"}
    add("--video", **paths, help="files, directories or quoted globs")
    add("--image", **paths, help="vqa, pretrain: as --video, for images")
    add("--text", action="append", default=[], help="retrieval, pretrain: a text scored against every input")
    add("--texts-file", metavar="FILE", help="retrieval, pretrain: texts, one per line")
    add("--question", action="append", default=[], help="QA, VQA: a question; multiple choice: the question")
    add("--option", action="append", default=[], help="multiple choice: an answer option")
    add(
        "--top-k",
        type=_positive_int,
        default=5,
        help="QA, VQA: answers shown per question; pretrain: tokens per [MASK] in a --text (default 5)",
    )
    add(
        "--word-score-weight",
        type=_non_negative_float,
        help="retrieval: replaces the run's eval.word_score_weight (0: the matching head alone)",
    )
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    add(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="float32 (default: the evaluation's numbers), or autocast to bfloat16/float16 (faster on a GPU)",
    )
    add("--json", metavar="OUT", help="write every result, the score table included, as JSON to OUT")
    return parser


def _flags_for(parser, args, run) -> list[str]:
    """Check the flags against the model's task kind; returns its texts (retrieval) or questions (QA)."""
    name = f"{run.task.name} ({run.kind})"
    allowed = {
        "retrieval": ("text", "texts_file"),
        "pretrain": ("text", "texts_file"),
        "qa": ("question",),
        "vqa": ("question",),
        "mc": ("question", "option"),
        "mc_itm": ("option",),
    }[run.kind]
    for flag in ("text", "texts_file", "question", "option"):
        if getattr(args, flag) and flag not in allowed:
            takes = " and ".join(f"--{a.replace('_', '-')}" for a in allowed)
            parser.error(f"--{flag.replace('_', '-')} is not used by a {name} model: it takes {takes}")
    _refuse_blank(parser, args)
    unit, other = (run.unit, "video" if run.unit == "image" else "image")
    if getattr(args, other):
        parser.error(f"--{other} is not used by a {name} model: it scores {unit}s, give --{unit}")
    if not getattr(args, unit):
        parser.error(f"a {name} model scores {unit}s: give --{unit} (a file, directory or quoted glob)")
    if run.kind in ("retrieval", "pretrain"):
        try:
            texts = read_texts(args.text, args.texts_file)
        except OSError as err:
            parser.error(f"--texts-file {args.texts_file}: {err.strerror or err}")
        except UnicodeDecodeError as err:  # a Latin-1 or UTF-16 file: say so, not a traceback
            parser.error(f"--texts-file {args.texts_file}: not UTF-8 text (byte {err.start}: {err.reason})")
        if not texts:
            parser.error(f"a {name} model scores texts: give --text or --texts-file (with a text)")
        if run.kind == "pretrain":  # the uncased tokenizer knows the special token in capitals only
            texts = [MASK_WORD.sub("[MASK]", text) for text in texts]
        return texts
    if run.kind in ("qa", "vqa") and not args.question:
        parser.error(f"a {name} model answers questions: give --question")
    if run.kind == "mc" and len(args.question) != 1:
        parser.error(f"--question: a {name} model takes one question, got {len(args.question)}")
    if run.kind in ("mc", "mc_itm") and len(args.option) < 2:
        parser.error(f"--option: a {name} model chooses among options, give at least 2")
    return args.question


def _refuse_blank(parser, args) -> None:
    """An empty --text, --question or --option (an unset shell variable, a stray "") is an argument error.
    Why: it would be scored as [CLS] [SEP] and could rank as the best text of every video, unsaid."""
    for flag in ("text", "question", "option"):
        for number, value in enumerate(getattr(args, flag), start=1):
            if not value.strip():
                parser.error(f"--{flag} number {number} is {'empty' if not value else 'blank'} ({value!r})")


def _check_json_out(parser, out: str | None) -> None:
    """--json OUT must be a file path whose folder exists or can be made: checked before any scoring, so a
    typo does not lose a long run's results to a traceback at the end."""
    if out is None:
        return
    if not out.strip():  # an unset shell variable: no file would be written, unsaid
        parser.error(f"--json {out!r}: an empty path; give a file path such as scores.json")
    path = Path(out)
    if path.is_dir():
        parser.error(f"--json {out}: is a directory; give a file path such as {path / 'scores.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        parser.error(f"--json {out}: cannot make its folder {path.parent} ({err.strerror or err})")
    if not path.parent.is_dir():
        parser.error(f"--json {out}: {path.parent} is not a folder")


def _device(parser, choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible (--device cpu runs here)")
    return torch.device(
        "cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu"
    )


def _loader(predictor):
    """path -> frames [1, N, T, 3, L, L] on the device, as the model's evaluation loads its inputs."""
    if predictor.run.unit == "image":
        data, norm, device = predictor.run.data, predictor.norm, predictor.device
        return lambda path: image_frames(path, data.image_size, norm, device, data.image_orientation)
    source = FileSource(predictor.run.data, predictor.norm)
    return lambda path: clip_frames(source, path, predictor.device)


def _predict(predictor, args, texts: list[str]) -> tuple[dict, list[str]]:
    """(the JSON results, the stdout lines) of every readable video or image."""
    unit = predictor.run.unit
    paths, skipped = expand_inputs(getattr(args, unit), unit)
    clips = iter_clips(_loader(predictor), paths, skipped, unit)
    kind = predictor.run.kind
    # autocast, not a cast of the weights: LayerNorm, softmax and the score aggregation stay float32
    low = predictor.dtype != torch.float32
    with torch.autocast(predictor.device.type, dtype=predictor.dtype, enabled=low):
        if kind in ("retrieval", "pretrain"):
            result = score_retrieval(predictor, clips, texts, args.top_k)
        elif kind in ("qa", "vqa"):
            result = score_answers(predictor, clips, texts)
        else:
            question = args.question[0] if args.question else None
            result = score_options(predictor, clips, question, args.option)
    if kind in ("retrieval", "pretrain"):
        out = report.retrieval_json(predictor, result, texts, skipped)
        body = report.format_retrieval(out)
    elif kind in ("qa", "vqa"):
        out = report.answers_json(predictor, result, texts, args.top_k, skipped)
        body = report.format_answers(out)
    else:
        out = report.options_json(predictor, result, question, args.option, skipped)
        body = report.format_options(out)
    _report_truncation(predictor, out, texts, args.option, kind)
    lines = report.format_header(out) + body + report.format_truncated(out) + report.format_skipped(out)
    return out, lines


def _report_truncation(predictor, out: dict, texts: list[str], options: list[str], kind: str) -> None:
    """out["truncated"]: the texts, questions or options (with the question, for multiple choice) that are
    longer than the model reads."""
    if kind in ("retrieval", "pretrain"):
        key, counts = "text", token_counts(predictor, texts, literal=kind != "pretrain")
    elif kind in ("qa", "vqa"):
        key, counts = "question", token_counts(predictor, texts)
    else:  # mc: the question and each option are one pair; mc_itm: the options alone
        key, question = "option", texts[0] if kind == "mc" else None
        pairs = (options, None) if question is None else ([question] * len(options), options)
        counts, texts = token_counts(predictor, *pairs), options
    report.add_truncated(out, key, texts, counts, predictor.max_text_len)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    from clipbert.train.engine import setup_environment

    setup_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_json_out(parser, args.json)
    try:
        model_dir = find_model_dir(args.model)
        run = read_run_settings(find_run_config(model_dir, args.config), args.ann_dir)
        texts = _flags_for(parser, args, run)
        predictor = load_predictor(run, model_dir, _device(parser, args.device), args.word_score_weight)
    except PredictError as err:
        return _fail(str(err), 2)
    predictor.dtype = DTYPES[args.dtype]
    out, lines = _predict(predictor, args, texts)
    unit = out["unit"]
    unwritten = _write_json(args.json, out)
    if out[f"{unit}s"]:
        _print_lines(lines)
    if unwritten:
        return _fail(unwritten, 1)
    if not out[f"{unit}s"]:
        listed = "; ".join(f"{s[unit]}: {s['reason']}" for s in out["skipped"])
        return _fail(f"no usable {unit} among {len(out['skipped'])} input(s): {listed}", 1)
    return 0


def _write_json(out_path: str | None, out: dict) -> str | None:
    """Writes --json (ASCII: json.dumps escapes every other character); the error to report, else None."""
    if out_path is None:
        return None
    try:
        Path(out_path).write_text(json.dumps(out, indent=1) + "\n")
    except OSError as err:  # a full disk, a folder removed meanwhile: the table is still printed
        return f"--json {out_path}: cannot write it ({err.strerror or err})"
    return None


def _print_lines(lines: list[str]) -> None:
    """Prints the tables in what stdout can encode. Why: a file name that is not UTF-8 (bytes kept as
    surrogates by os.listdir) or an emoji on a Latin-1 console raised UnicodeEncodeError after all the
    scoring; such characters are written as backslash escapes instead."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    text = "\n".join(lines).encode(encoding, errors="backslashreplace").decode(encoding)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `| head`: the reader took what it wanted; the --json file is written
        # as the Python docs advise: stdout to devnull, so the flush at exit does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
