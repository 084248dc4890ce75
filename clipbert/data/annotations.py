"""JSONL / JSON annotation readers: a malformed line raises an error naming the file and line."""

from __future__ import annotations

import codecs
import json
import operator
import os
import pickle
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class DataError(ValueError):
    """Data that cannot be used at all (not one bad video, which is replaced and counted): a malformed
    annotation file, a split without examples, an unreadable frame store. The message names the file;
    train.py reports it without a traceback and exits 2, as it does a config error."""


class AnnotationError(DataError):
    """A malformed annotation file; the message names the file and line."""


# What a value may be (`kinds` of read_jsonl). Checked, not coerced: str(None) made a caption "None", and a
# string of options or sentences was read character by character.
TEXT = "a string"
TEXTS = "a list of strings"
INDEX = "an integer"
ID = "a string or an integer"
TEXT_OR_TEXTS = "a string or a list of strings"


def is_kind(value: Any, kind: str) -> bool:
    if kind == TEXT:
        return isinstance(value, str)
    if kind == TEXTS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == INDEX:  # bool is an int to Python, not to an annotation
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == ID:
        return isinstance(value, str) or is_kind(value, INDEX)
    if kind == TEXT_OR_TEXTS:
        return is_kind(value, TEXT) or is_kind(value, TEXTS)
    raise ValueError(f"unknown value kind {kind!r}")


class PackedRecords(Sequence):
    """Annotation records (JSON objects) kept pickled in one byte buffer, each unpickled when read: a fresh
    dict every time, so edit a copy and build a new PackedRecords (or a list) rather than the one read.

    Why: a list of dicts is millions of Python objects (pre-training's 5.6M captions: 4.4 GB), which the
    forked DataLoader workers share only until touched. Reading a record changes its reference counts, which
    copies its memory page into the reading worker, so every worker grew towards its own copy of the whole
    list as an epoch went on (4 workers: 17 GB more; gc.freeze() spares only the collector's writes). A byte
    buffer has no reference count per record: its pages stay shared, and it is about 6x smaller."""

    def __init__(self, records: Iterable[dict]):
        buffer, ends = bytearray(), [0]
        for record in records:
            buffer += pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
            ends.append(len(buffer))
        self._buffer = np.frombuffer(buffer, dtype=np.uint8)  # [bytes] every record, pickled, end to end
        self._ends = np.asarray(ends, dtype=np.int64)  # [n + 1]: record k is _buffer[_ends[k] : _ends[k + 1]]

    def __len__(self) -> int:
        return len(self._ends) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(len(self)))]
        k = operator.index(index)  # numpy integers too; a float or a string is a TypeError
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        return pickle.loads(self._buffer[self._ends[k] : self._ends[k + 1]])

    def __iter__(self) -> Iterator[dict]:
        view = memoryview(self._buffer)
        for first in range(0, len(self), 65_536):  # offsets as Python ints, a chunk at a time
            ends = self._ends[first : first + 65_537].tolist()
            for start, end in zip(ends, ends[1:]):
                yield pickle.loads(view[start:end])


def read_jsonl(
    path: str | os.PathLike, required: tuple[str, ...] = (), kinds: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """One JSON object per non-blank line; each must hold the `required` keys, and each key of `kinds`
    it holds must be of that kind (TEXT, TEXTS, INDEX, ID, TEXT_OR_TEXTS)."""
    return [record for _, record in iter_jsonl_numbered(path, required, kinds)]


def iter_jsonl_numbered(
    path: str | os.PathLike, required: tuple[str, ...] = (), kinds: dict[str, str] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """read_jsonl's records one at a time as the file is read, each with its line number (1-based).

    Why the numbers: checks made after reading (an answer index, the number of options) must name the line,
    and a record's place among the non-blank lines is not its line once the file holds a blank line. Why one
    at a time: packed as they come (PackedRecords), millions of records are never all held as dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with path.open("rb") as f:  # bytes: a line that is not UTF-8 is named by its number, as any other
        for line_no, raw in enumerate(f, start=1):
            line = _decode(raw.removeprefix(codecs.BOM_UTF8) if line_no == 1 else raw, f"{path}:{line_no}")
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
            for key, kind in (kinds or {}).items():
                if key in record and not is_kind(record[key], kind):
                    shown = json.dumps(record[key])
                    shown = shown if len(shown) <= 60 else shown[:57] + "..."
                    raise AnnotationError(f"{path}:{line_no}: {key} must be {kind}, got {shown}")
            yield line_no, record


def _decode(raw: bytes, where: str) -> str:
    """UTF-8 text of an annotation file's bytes, or an AnnotationError naming `where` and the bad byte.

    Why the BOM is dropped by the callers: editors on Windows (and pandas' to_json with utf-8-sig) start
    files with one; json.loads refuses it, which made a valid file fail on its first line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise AnnotationError(
            f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "re-save the file as UTF-8"
        ) from err


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return json.loads(_decode(raw, str(path)))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from err
