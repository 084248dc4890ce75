"""JSONL / JSON annotation readers: a malformed line raises an error naming the file and line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and line."""


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One JSON object per non-blank line; each must hold the `required` keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    records = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise AnnotationError(f"{path}:{line_no}: malformed JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise AnnotationError(
                    f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}"
                )
            missing = [key for key in required if key not in record]
            if missing:
                raise AnnotationError(f"{path}:{line_no}: missing key(s) {', '.join(missing)}")
            records.append(record)
    return records


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from err
