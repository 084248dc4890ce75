"""Annotation files as other tools write them: a UTF-8 BOM, CRLF line ends and blank lines are read; text
that is not UTF-8 is an AnnotationError naming the file and line, like any other malformed line."""

import codecs
import json

import pytest

from clipbert.data.annotations import AnnotationError, read_json, read_jsonl

ROWS = [{"caption": "un café à Zürich", "clip_name": "video0"}, {"caption": "b", "clip_name": "video1"}]


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def test_a_bom_crlf_and_blank_lines_are_read(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + _jsonl(ROWS).replace(b"\n", b"\r\n\r\n"))
    assert read_jsonl(path, ("caption", "clip_name")) == ROWS


def test_a_bom_only_counts_at_the_start_of_the_file(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(_jsonl(ROWS[:1]) + codecs.BOM_UTF8 + _jsonl(ROWS[1:]))
    with pytest.raises(AnnotationError, match=r"a\.jsonl:2: malformed JSON"):
        read_jsonl(path)


def test_text_that_is_not_utf8_names_the_file_line_and_byte(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(_jsonl(ROWS[1:]) + json.dumps(ROWS[0], ensure_ascii=False).encode("latin-1") + b"\n")
    with pytest.raises(AnnotationError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9 at offset 19\)"):
        read_jsonl(path)


def test_read_json_takes_a_bom_and_names_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "ans2label.json"
    path.write_bytes(codecs.BOM_UTF8 + json.dumps({"café": 0}, ensure_ascii=False).encode("utf-8"))
    assert read_json(path) == {"café": 0}
    path.write_bytes(json.dumps({"café": 0}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"ans2label\.json: not UTF-8 text"):
        read_json(path)
