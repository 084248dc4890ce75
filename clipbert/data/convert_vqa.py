"""Convert the official VQA v2 question/annotation files into our JSONL (and the answer vocabulary).

    python -m clipbert.data.convert_vqa --questions v2_OpenEnded_mscoco_train2014_questions.json \\
        --annotations v2_mscoco_train2014_annotations.json --image-dir train2014 --out vqa_train.jsonl \\
        --ans2label vqa_ans2label.json --min-count 9

One line per question: question_id, image_id, question, file, and with annotations the 10 raw human
answers, answer_type and question_type. Answers stay raw so training and evaluation normalize them with the
same code (vqa_answers). Test splits have no annotations; their lines carry no answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from .annotations import AnnotationError, read_json
from .vqa_answers import build_ans2label, normalize_answer

QUESTION_KEYS = ("image_id", "question", "question_id")
ANNOTATION_KEYS = (
    "question_id",
    "image_id",
    "answers",
    "multiple_choice_answer",
    "answer_type",
    "question_type",
)


def _require(record: Any, keys: tuple[str, ...], path: Path, what: str) -> dict:
    if not isinstance(record, dict):
        raise AnnotationError(f"{path}: {what} must be a JSON object, got {type(record).__name__}")
    missing = [key for key in keys if key not in record]
    if missing:
        raise AnnotationError(f"{path}: {what} is missing key(s) {', '.join(missing)}")
    return record


def _list_under(data: Any, key: str, path: Path) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise AnnotationError(f"{path}: expected a JSON object with a {key!r} list")
    return data[key]


def _is_int(value: Any) -> bool:
    """COCO image ids are integers (an int, or a string of digits); they name the image file."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())


def _same_image(a: Any, b: Any) -> bool:
    return int(a) == int(b) if _is_int(a) and _is_int(b) else a == b


def read_questions(path: Path) -> tuple[str, list[dict]]:
    """(data_subtype, questions) of an official questions file; question ids must be unique."""
    data = read_json(path)
    questions = _list_under(data, "questions", path)
    subtype = data.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise AnnotationError(f"{path}: missing 'data_subtype' (e.g. \"train2014\"), needed for image names")
    seen = set()
    for index, question in enumerate(questions):
        what = f"question #{index}"
        if isinstance(question, dict) and "question_id" in question:
            what += f" (question_id {question['question_id']!r})"
        _require(question, QUESTION_KEYS, path, what)
        if not isinstance(question["question_id"], (int, str)) or isinstance(question["question_id"], bool):
            raise AnnotationError(f"{path}: {what}: question_id must be an int or a string")
        if not _is_int(question["image_id"]):
            raise AnnotationError(f"{path}: {what}: image_id {question['image_id']!r} is not an integer")
        if question["question_id"] in seen:
            raise AnnotationError(f"{path}: question_id {question['question_id']} appears twice")
        seen.add(question["question_id"])
    return subtype, questions


def read_annotations(path: Path, questions: list[dict], questions_path: Path) -> dict[Any, dict]:
    """{question_id: annotation}, checked to pair one-to-one with the questions."""
    by_id = {}
    image_of = {q["question_id"]: q["image_id"] for q in questions}
    for index, ann in enumerate(_list_under(read_json(path), "annotations", path)):
        qid = _require(ann, ANNOTATION_KEYS, path, f"annotation #{index}")["question_id"]
        if not isinstance(qid, (int, str)) or isinstance(qid, bool):
            raise AnnotationError(f"{path}: annotation #{index}: question_id must be an int or a string")
        if qid not in image_of:
            raise AnnotationError(f"{path}: annotation for question_id {qid}, which {questions_path} lacks")
        if qid in by_id:
            raise AnnotationError(f"{path}: question_id {qid} is annotated twice")
        # A mismatch means the two files are of different splits; every answer would be for another image.
        # Compared as numbers: image ids may be digit strings (_is_int), and 42 vs "42" is no mismatch.
        if not _same_image(ann["image_id"], image_of[qid]):
            raise AnnotationError(
                f"{path}: question_id {qid} has image_id {ann['image_id']!r}, "
                f"{questions_path} says {image_of[qid]!r}"
            )
        if not isinstance(ann["answers"], list):
            raise AnnotationError(f"{path}: question_id {qid}: 'answers' must be a list")
        for answer in ann["answers"]:
            _require(answer, ("answer",), path, f"an answer of question_id {qid}")
        by_id[qid] = ann
    unannotated = [q["question_id"] for q in questions if q["question_id"] not in by_id]
    if unannotated:
        raise AnnotationError(
            f"{path}: no annotation for question_id {unannotated[0]} of {questions_path}"
            f" ({len(unannotated)} question(s) unannotated)"
        )
    return by_id


def image_file(image_dir: str, subtype: str, image_id: int) -> str:
    """The official COCO file name under `image_dir`, kept relative so the dataset's image root applies.

    Test-dev ("test-dev2015") is a subset of the COCO test images, whose files are named "test2015".
    """
    images = subtype.replace("test-dev", "test")
    return (PurePosixPath(image_dir) / f"COCO_{images}_{int(image_id):012d}.jpg").as_posix()


def to_record(question: dict, subtype: str, image_dir: str, ann: dict | None) -> dict:
    record = {
        "question_id": question["question_id"],
        "image_id": question["image_id"],
        "question": question["question"],
        "file": image_file(image_dir, subtype, question["image_id"]),
    }
    if ann is not None:
        record["answers"] = [str(a["answer"]) for a in ann["answers"]]
        record["answer_type"] = str(ann["answer_type"])
        record["question_type"] = str(ann["question_type"])
    return record


def _majority_answers(questions: list[dict], anns: dict, vocab_also: tuple) -> list[list[str]]:
    """[[multiple_choice_answer]] per question of the annotations and the `vocab_also` files, each question
    counted once per answer, as the original counts a set of question ids per answer: a file passed twice
    (train as --annotations and again in --ans2label-also) counted every train question twice, silently
    growing the vocabulary past the usual 3,129 answers."""
    counted = set()  # (question_id, normalized answer)
    majority = []

    def count(qid, answer) -> None:
        key = (qid, normalize_answer(str(answer)))
        if key not in counted:
            counted.add(key)
            majority.append([str(answer)])

    for question in questions:
        count(question["question_id"], anns[question["question_id"]]["multiple_choice_answer"])
    for extra in vocab_also:
        for index, ann in enumerate(_list_under(read_json(extra), "annotations", Path(extra))):
            _require(ann, ("question_id", "multiple_choice_answer"), Path(extra), f"annotation #{index}")
            if not isinstance(ann["question_id"], (int, str)) or isinstance(ann["question_id"], bool):
                raise AnnotationError(f"{extra}: annotation #{index}: question_id must be an int or a string")
            count(ann["question_id"], ann["multiple_choice_answer"])
    return majority


def _write_atomically(path: Path, text: str) -> None:
    """A failed or interrupted run must not leave a truncated file that later reads as a smaller split."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # an --out that is a folder, Ctrl-C: the .tmp was left behind
        tmp.unlink(missing_ok=True)
        raise


def convert(
    questions_path: str | os.PathLike,
    annotations_path: str | os.PathLike | None,
    image_dir: str,
    out_path: str | os.PathLike,
    ans2label_path: str | os.PathLike | None = None,
    min_count: int = 9,
    vocab_also: tuple[str | os.PathLike, ...] = (),
) -> dict:
    """Write the JSONL (and the answer vocabulary); returns {"questions": N, "answer_vocab": K or None}.

    vocab_also: more official annotation files whose majority answers count toward the vocabulary (the
    usual 3,129-answer set counts train and val). Everything is read and checked before anything is
    written, so a bad input leaves no output behind.
    """
    if ans2label_path is not None and annotations_path is None:
        raise ValueError("an answer vocabulary (ans2label) needs annotations: pass annotations_path")
    questions_path = Path(questions_path)
    subtype, questions = read_questions(questions_path)
    anns = None
    if annotations_path is not None:
        anns = read_annotations(Path(annotations_path), questions, questions_path)
    vocab = None
    if ans2label_path is not None:
        vocab = build_ans2label(_majority_answers(questions, anns, vocab_also), min_count)
    # Both folders first: a vocabulary path under a file failed after the JSONL was written, leaving a split
    # without its vocabulary although "a bad input leaves no output behind".
    for path in (out_path, ans2label_path):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for question in questions:
        ann = None if anns is None else anns[question["question_id"]]
        lines.append(json.dumps(to_record(question, subtype, image_dir, ann), ensure_ascii=False) + "\n")
    _write_atomically(Path(out_path), "".join(lines))
    if vocab is not None:
        _write_atomically(Path(ans2label_path), json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    return {"questions": len(lines), "answer_vocab": None if vocab is None else len(vocab)}


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 written, 2 a bad flag or a missing, malformed or unwritable file, 130 stopped (Ctrl-C);
    nothing is written unless everything is."""
    parser = argparse.ArgumentParser(
        prog="python -m clipbert.data.convert_vqa", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--questions", required=True, help="official questions JSON (v2_OpenEnded_*)")
    parser.add_argument("--annotations", help="official annotations JSON; omit for test splits")
    parser.add_argument("--image-dir", required=True, help="written into 'file', relative to the image root")
    parser.add_argument("--out", required=True, help="output JSONL")
    parser.add_argument("--ans2label", help="also write the answer vocabulary JSON {answer: label}")
    parser.add_argument(
        "--min-count", type=int, default=9, help="questions an answer must be the majority of"
    )
    parser.add_argument(
        "--ans2label-also",
        nargs="+",
        default=[],
        metavar="ANNOTATIONS",
        help="more annotation files counted for the vocabulary (val, for the usual 3,129 answers)",
    )
    args = parser.parse_args(argv)
    if args.ans2label and not args.annotations:
        parser.error("--ans2label needs --annotations")
    if args.ans2label_also and not args.ans2label:
        parser.error("--ans2label-also needs --ans2label")
    if args.min_count < 1:  # was ignored without --ans2label and a ValueError traceback with it
        parser.error(f"argument --min-count: must be at least 1, got {args.min_count}")
    try:
        counts = convert(
            args.questions,
            args.annotations,
            args.image_dir,
            args.out,
            args.ans2label,
            args.min_count,
            tuple(args.ans2label_also),
        )
    # A missing or malformed input, an empty vocabulary (min_count too high), an --out under a file: each
    # message names the file; these were tracebacks.
    except (AnnotationError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # _write_atomically leaves no truncated output
        print("\ninterrupted: no file was left half-written; rerun to convert", file=sys.stderr)
        return 130
    vocab = "no answer vocabulary" if counts["answer_vocab"] is None else f"{counts['answer_vocab']} answers"
    print(f"wrote {counts['questions']} questions to {args.out}; {vocab}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
