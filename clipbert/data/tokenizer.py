"""The BERT WordPiece tokenizer, offline: the uncased vocabulary ships with the package."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import BertTokenizerFast

DEFAULT_VOCAB = Path(__file__).resolve().parents[1] / "assets" / "bert-base-uncased-vocab.txt"


def build_tokenizer(path: str | os.PathLike | None = None) -> BertTokenizerFast:
    """A fast uncased BERT tokenizer.

    `path` may be a vocab.txt file or a Hugging Face checkpoint directory; None uses the bundled vocab.
    """
    path = Path(path) if path is not None else DEFAULT_VOCAB
    if path.is_dir():
        return BertTokenizerFast.from_pretrained(str(path), local_files_only=True)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer: no vocab file or checkpoint directory at {path}")
    # transformers 5 takes `vocab` (a path or dict); `vocab_file` is silently ignored there.
    return BertTokenizerFast(vocab=str(path), do_lower_case=True)
