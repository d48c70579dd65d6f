"""The transformation itself, as plain functions shared by the Beam pipeline and the reference.

read_document → normalised text chunks; count → vocabulary; Encoder → ids; windows → shards.
"""
from __future__ import annotations

import codecs
import hashlib
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from pipeline import records, text

READ_BYTES = 8 << 20  # read and normalise documents in 8 MiB pieces
MAX_NUM_STEPS = 1 << 16  # window length; longer windows are no use to an RNN trained by truncated BPTT
MAX_VOCAB = 1 << 21      # ids are int32 one-hot rows: a larger vocabulary cannot be trained on one machine


class CorpusError(Exception):
    """A corpus file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class PreprocessConfig:
    normalize: str = "d2l"
    tokenizer: str = "char"
    num_steps: int = 32
    split: str = "holdout"         # holdout | d2l
    valid_fraction: float = 0.1    # holdout: last fraction of every document
    stride: int | None = None      # holdout: window stride (default num_steps)
    num_train: int = 10000         # d2l: first windows for training
    num_val: int = 5000            # d2l: next windows for validation
    min_freq: int = 1
    max_tokens: int | None = None
    decode_errors: str = "strict"  # strict | replace
    records_per_shard: int = 100_000

    def __post_init__(self):
        """ValueError naming the field for values no corpus can use (the CLI turns it into one line, exit 2)."""
        bounds = {"num_steps": (1, MAX_NUM_STEPS), "stride": (1, MAX_NUM_STEPS), "num_train": (1, 10**9),
                  "num_val": (1, 10**9), "min_freq": (1, 2**62), "max_tokens": (2, MAX_VOCAB),
                  "records_per_shard": (1, 10**8)}
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if value is None and name in ("stride", "max_tokens"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer in [{low}, {high}], got {value!r}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"--valid-fraction must be strictly between 0 and 1, got {self.valid_fraction}")

    @property
    def window_stride(self) -> int:
        return self.stride or self.num_steps

    def to_dict(self) -> dict:
        return asdict(self)


def read_document(path: str, cfg: PreprocessConfig, open_fn) -> Iterator[tuple[str, dict]]:
    """Yields ("chunk", normalised text) pieces, then ("source", {path, bytes, sha256}).

    Decodes UTF-8 incrementally (BOM dropped, CRLF → LF), cutting only where the normaliser
    and tokenizer give the same result on both sides, so chunks can be processed separately.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors=cfg.decode_errors)
    digest, size, carry, first = hashlib.sha256(), 0, "", True
    try:
        with open_fn(path) as f:
            while True:
                raw = f.read(READ_BYTES)
                final = not raw
                digest.update(raw)
                size += len(raw)
                try:
                    piece = decoder.decode(raw, final=final)
                except UnicodeDecodeError as err:
                    offset = size - len(raw) + max(err.start, 0)
                    raise CorpusError(f"{path}: invalid UTF-8 near byte {offset} ({err.reason}); "
                                      "pass --decode-errors replace to continue") from None
                if first and piece:
                    piece, first = piece.removeprefix("\ufeff"), False
                piece = carry + piece
                held = "\r" if piece.endswith("\r") and not final else ""  # maybe half a CRLF
                piece = piece[: len(piece) - len(held)].replace("\r\n", "\n")
                cut = len(piece) if final else text.safe_split_point(piece, cfg.normalize, cfg.tokenizer)
                piece, carry = piece[:cut], piece[cut:] + held
                if piece:
                    yield "chunk", text.normalize(piece, cfg.normalize)
                if final:
                    break
    except OSError as err:
        raise CorpusError(f"{path}: cannot read: {err.strerror or err}") from None
    yield "source", {"path": path, "bytes": size, "sha256": digest.hexdigest()}


def count_tokens(chunk: str, tokenizer: str) -> Counter:
    return Counter(chunk) if tokenizer == "char" else Counter(chunk.split())


def windows(ids: np.ndarray, num_steps: int, stride: int = 1) -> np.ndarray:
    """[n] ids → [m, num_steps + 1] windows starting every `stride` tokens (a view, no copy)."""
    if len(ids) < num_steps + 1:
        return np.zeros((0, num_steps + 1), dtype=np.int32)
    return np.lib.stride_tricks.sliding_window_view(ids, num_steps + 1)[::stride]


def holdout_windows(ids: np.ndarray, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """The last valid_fraction of a document validates; no window crosses the boundary."""
    num_valid = int(round(len(ids) * cfg.valid_fraction))
    boundary = len(ids) - num_valid
    return {"train": windows(ids[:boundary], cfg.num_steps, cfg.window_stride),
            "valid": windows(ids[boundary:], cfg.num_steps, cfg.window_stride)}


def d2l_windows(ids: np.ndarray, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """The book's protocol: windows at stride 1, the first num_train train, the next num_val validate."""
    every = windows(ids[: cfg.num_train + cfg.num_val + cfg.num_steps], cfg.num_steps)
    return {"train": every[: cfg.num_train], "valid": every[cfg.num_train: cfg.num_train + cfg.num_val]}


def shard_files(split: str, doc_index: int, split_windows: np.ndarray,
                cfg: PreprocessConfig) -> Iterator[tuple[str, int, bytes]]:
    """Yields (file name, number of records, TFRecord bytes) for one document's windows of a split."""
    for block, start in enumerate(range(0, len(split_windows), cfg.records_per_shard)):
        part = split_windows[start: start + cfg.records_per_shard]
        yield (f"{split}-{doc_index:05d}-{block:05d}.tfrecord", len(part),
               records.tfrecord_file(part))
