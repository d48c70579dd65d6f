"""Normalisers and tokenizers: one definition, used by Beam (Python) and by the exported graph (TF).

Both implementations read the same table, and tests check they agree, so the text a served
model sees is processed exactly as the training corpus was.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

UNK = "<unk>"


@dataclass(frozen=True)
class Normalizer:
    pattern: str | None  # regex whose matches are replaced
    replacement: str
    lowercase: bool


NORMALIZERS = {
    # The book's TimeMachine._preprocess: re.sub('[^A-Za-z]+', ' ', text).lower()
    "d2l": Normalizer(pattern="[^A-Za-z]+", replacement=" ", lowercase=True),
    "none": Normalizer(pattern=None, replacement="", lowercase=False),
}
TOKENIZERS = ("char", "word")


def normalize(text: str, name: str) -> str:
    spec = NORMALIZERS[name]
    if spec.pattern is not None:
        text = re.sub(spec.pattern, spec.replacement, text)
    return text.lower() if spec.lowercase else text


def tokenize(text: str, tokenizer: str) -> list[str]:
    return list(text) if tokenizer == "char" else text.split()


def safe_split_point(raw: str, normalizer: str, tokenizer: str) -> int:
    """Largest index p with process(raw[:p]) + process(raw[p:]) == process(raw), or 0.

    Lets Beam normalise and tokenize a long document in independent chunks: a cut never
    falls inside a run the normaliser collapses or inside a word.
    """
    if tokenizer == "word":
        match = re.search(r"\s(?=\S*\Z)", raw)  # last whitespace character
        return match.end() if match else 0
    if normalizer == "d2l":
        # cut between two letters, so no run of non-letters spans the cut; scan back in blocks
        end = len(raw)
        while end > 0:
            start = max(0, end - 65536)
            cuts = [m.start() for m in re.finditer(r"(?<=[A-Za-z])(?=[A-Za-z])", raw[start:end])]
            if cuts:
                return start + cuts[-1]
            end = start + 1 if start > 0 else 0
        return 0
    return len(raw)


class Encoder:
    """Maps normalised text to int32 token ids (0 = <unk>) in bulk, with numpy for chars."""

    def __init__(self, vocab: list[str], tokenizer: str):
        self.tokenizer = tokenizer
        self.index = {tok: i for i, tok in enumerate(vocab)}
        if tokenizer == "char":
            singles = [(ord(t), i) for t, i in self.index.items() if len(t) == 1]
            size = max((cp for cp, _ in singles), default=0) + 1
            self.table = np.zeros(size, dtype=np.int32)
            for cp, i in singles:
                self.table[cp] = i

    def encode(self, text: str) -> np.ndarray:
        if self.tokenizer == "char":
            cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
            inside = cps < len(self.table)
            return np.where(inside, self.table[np.where(inside, cps, 0)], 0).astype(np.int32)
        return np.fromiter((self.index.get(w, 0) for w in text.split()), dtype=np.int32)


# ---- TensorFlow side (imported lazily so Beam workers need not load TF) ----

def tf_normalize(texts, name: str):
    """The same normaliser as `normalize`, as TF string ops (for the exported graph)."""
    import tensorflow as tf

    spec = NORMALIZERS[name]
    if spec.pattern is not None:
        texts = tf.strings.regex_replace(texts, spec.pattern, spec.replacement)
    return tf.strings.lower(texts) if spec.lowercase else texts


def tf_tokenize(texts, tokenizer: str):
    """[batch] strings → ragged [batch, None] tokens, splitting as `tokenize` does."""
    import tensorflow as tf

    if tokenizer == "char":
        return tf.strings.unicode_split(texts, "UTF-8", errors="replace")
    return tf.strings.split(texts)
