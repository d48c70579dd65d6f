"""Vocabulary: built from token counts, stored as vocab.txt (one escaped token per line).

Order is descending frequency with ties broken by the token itself, `<unk>` at index 0, so the
same corpus always gives the same ids. Tokens may contain a newline (char tokenizer with
`--normalize none`), so backslash, newline and carriage return are escaped in the file.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

from common.text import UNK

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


def build_vocab(counts: Iterable[tuple[str, int]], min_freq: int = 1,
                max_tokens: int | None = None) -> list[str]:
    """Token list with `<unk>` first, then tokens with count >= min_freq by (-count, token)."""
    kept = sorted(((tok, n) for tok, n in counts if n >= min_freq and tok != UNK),
                  key=lambda item: (-item[1], item[0]))
    if max_tokens is not None:
        kept = kept[: max(0, max_tokens - 1)]
    return [UNK] + [tok for tok, _ in kept]


def escape(token: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in token)


def unescape(line: str) -> str:
    out, chars = [], iter(line)
    for ch in chars:
        out.append(_UNESCAPES.get(next(chars, "\\"), "\\") if ch == "\\" else ch)
    return "".join(out)


def vocab_to_text(vocab: list[str]) -> str:
    return "".join(escape(tok) + "\n" for tok in vocab)


def vocab_from_text(text: str) -> list[str]:
    return [unescape(line) for line in text.split("\n")[:-1]]


def vocab_sha256(vocab: list[str]) -> str:
    return hashlib.sha256(vocab_to_text(vocab).encode("utf-8")).hexdigest()


def read_vocab(path: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        vocab = vocab_from_text(f.read())
    if not vocab or vocab[0] != UNK:
        raise ValueError(f"{path}: not a vocabulary file (first token must be {UNK})")
    return vocab
