"""The transformation itself, as plain functions shared by the Beam pipeline and the reference.

read_document → normalised text chunks; count → vocabulary; Encoder → ids; windows → shards.
"""
from __future__ import annotations

import codecs
import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from common import text
from pipeline import boilerplate, charsets, records

READ_BYTES = 8 << 20  # read and normalise documents in 8 MiB pieces
MAX_NUM_STEPS = 1 << 16  # window length; longer windows are no use to an RNN trained by truncated BPTT
MAX_VOCAB = 1 << 21      # ids are int32 one-hot rows: a larger vocabulary cannot be trained on one machine


class CorpusError(Exception):
    """A corpus file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True, kw_only=True)
class ReadingConfig:
    """Reading: how files are decoded and what of them is text (preprocessing and evaluation alike)"""

    encoding: str = "auto"
    """text encoding: auto reads UTF-8 (a BOM dropped) when the bytes are valid UTF-8 and otherwise detects it per
    file (Windows-1252 preferred among equals); or a Python codec name such as cp1252, latin-1, utf-16"""
    decode_errors: Literal["strict", "replace"] = "strict"
    """bytes that do not decode: strict fails with the file and offset; replace uses U+FFFD"""
    strip_boilerplate: Literal["auto", "gutenberg", "none"] = "auto"
    """Project Gutenberg's licence header and footer: auto removes them where present; gutenberg requires them in
    every file; none keeps every character"""

    def __post_init__(self):
        """ValueError naming the field (the CLI turns it into one line, exit 2)."""
        if self.encoding != "auto":
            try:
                charsets.codec_name(self.encoding)
            except LookupError as err:
                reason = str(err) if "text encoding" in str(err) else "no such codec"
                raise ValueError(f"--encoding {self.encoding}: {reason} (e.g. utf-8, cp1252, latin-1, "
                                 "utf-16)") from None
        if self.strip_boilerplate not in boilerplate.MODES:
            raise ValueError(f"--strip-boilerplate must be one of {', '.join(boilerplate.MODES)}, "
                             f"got {self.strip_boilerplate!r}")
        if self.decode_errors not in ("strict", "replace"):
            raise ValueError(f"--decode-errors must be strict or replace, got {self.decode_errors!r}")


@dataclass(frozen=True, kw_only=True)
class PreprocessConfig(ReadingConfig):
    """Data: how corpora become vocabulary ids and training windows"""

    normalize: Literal["d2l", "none"] = "d2l"
    """text normaliser: d2l keeps letters as lower case and maps the rest to spaces (the book's)"""
    tokenizer: Literal["char", "word"] = "char"
    """token unit"""
    num_steps: int = 32
    """tokens of context per training window (each record holds num_steps + 1 tokens)"""
    split: Literal["holdout", "d2l"] = "holdout"
    """holdout: each source's last valid_fraction validates; d2l: the book's random windows"""
    valid_fraction: float = 0.1
    """share of each source held out for validation (holdout split)"""
    stride: int | None = None
    """tokens between window starts in the holdout split (default: num_steps, no overlap)"""
    num_train: int = 10000
    """training windows drawn by the d2l split"""
    num_val: int = 5000
    """validation windows drawn by the d2l split"""
    min_freq: int = 1
    """tokens seen fewer times than this map to <unk>"""
    max_tokens: int | None = None
    """keep at most this many vocabulary entries, most frequent first (default: no limit)"""
    records_per_shard: int = 100_000
    """windows per TFRecord file"""

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
        super().__post_init__()

    @property
    def window_stride(self) -> int:
        return self.stride or self.num_steps

    def to_dict(self) -> dict:
        return asdict(self)


def read_document(path: str, cfg: PreprocessConfig, open_fn) -> Iterator[tuple[str, object]]:
    """Yields ("chunk", normalised text) pieces, then ("source", facts about the file).

    The file is decoded (see `decoded_text`), Project Gutenberg's header and footer are removed
    (`boilerplate.strip`), and the text is cut only where the normaliser and tokenizer give the same
    result on both sides, so chunks can be processed separately. CorpusError names the file.
    """
    facts: dict = {"path": path}
    carry, kept = "", 0
    try:
        for piece in boilerplate.strip(decoded_text(path, cfg, open_fn, facts), cfg.strip_boilerplate, facts):
            piece = carry + piece
            cut = text.safe_split_point(piece, cfg.normalize, cfg.tokenizer)
            piece, carry = piece[:cut], piece[cut:]
            kept += len(piece)
            if piece:
                yield "chunk", text.normalize(piece, cfg.normalize)
    except boilerplate.BoilerplateError as err:
        raise CorpusError(f"{path}: {err}") from None
    if carry:
        kept += len(carry)
        yield "chunk", text.normalize(carry, cfg.normalize)
    if facts["stripped_chars"] and not kept:
        raise CorpusError(f"{path}: nothing is left after removing the Project Gutenberg header and footer")
    facts["chars"] = kept
    yield "source", facts


def choose_encoding(path: str, cfg: PreprocessConfig, open_fn) -> str:
    """The codec `decoded_text` uses: --encoding as given, or UTF-8 when the bytes are valid UTF-8, or
    the detected one (`charsets.detect`, on the file's start and the bytes around the first bad one)."""
    if cfg.encoding != "auto":
        return charsets.codec_name(cfg.encoding)
    bad = charsets.first_invalid_utf8(open_fn, path, READ_BYTES)
    if bad is None:
        return "utf-8"
    with open_fn(path) as f:
        sample = f.read(charsets.SAMPLE_BYTES // 2)
        if bad > len(sample):
            f.seek(max(len(sample), bad - charsets.SAMPLE_BYTES // 4))
            sample += f.read(charsets.SAMPLE_BYTES // 2)
    try:
        return charsets.detect(sample, bad)
    except charsets.EncodingError as err:
        if cfg.decode_errors == "replace":
            return "utf-8"  # asked to keep going: UTF-8 with U+FFFD for what does not decode
        raise CorpusError(f"{path}: {err}") from None


def decoded_text(path: str, cfg: PreprocessConfig, open_fn, facts: dict) -> Iterator[str]:
    """The file as text pieces (a leading BOM dropped, CRLF → LF); records bytes, sha256 and encoding."""
    try:
        encoding = choose_encoding(path, cfg, open_fn)
        decoder = codecs.getincrementaldecoder(encoding)(errors=cfg.decode_errors)
        digest, size, held, first = hashlib.sha256(), 0, "", True
        with open_fn(path) as f:
            while True:
                raw = f.read(READ_BYTES)
                final = not raw
                digest.update(raw)
                pending = len(_pending_bytes(decoder))
                try:
                    piece = decoder.decode(raw, final=final)
                except UnicodeDecodeError as err:
                    offset = size - pending + max(err.start, 0)
                    name = "UTF-8" if encoding == "utf-8" else encoding
                    raise CorpusError(f"{path}: invalid {name} near byte {offset} ({err.reason}); pass "
                                      "--decode-errors replace to continue, or --encoding CODEC") from None
                except UnicodeError as err:  # e.g. utf-16 without a byte order mark: the codec cannot start
                    raise CorpusError(f"{path}: cannot decode as {encoding}: {err}; name the encoding exactly "
                                      "(e.g. utf-16-le) or pass --encoding auto") from None
                size += len(raw)
                if first and piece:
                    facts["bom"] = piece.startswith("\ufeff")
                    piece, first = piece.removeprefix("\ufeff"), False
                piece = held + piece
                held = "\r" if piece.endswith("\r") and not final else ""  # maybe half a CRLF
                piece = piece[: len(piece) - len(held)].replace("\r\n", "\n")
                if piece:
                    yield piece
                if final:
                    break
    except OSError as err:
        raise CorpusError(f"{path}: cannot read: {err.strerror or err}") from None
    facts.update(bytes=size, sha256=digest.hexdigest(), encoding=encoding)
    facts.setdefault("bom", False)


def _pending_bytes(decoder) -> bytes:
    """Bytes an incremental decoder holds from earlier input (part of a multi-byte sequence)."""
    try:
        state = decoder.getstate()
    except (AttributeError, NotImplementedError):
        return b""
    return state[0] if isinstance(state, tuple) and isinstance(state[0], bytes) else b""


def count_tokens(chunk: str, tokenizer: str) -> Counter:
    return Counter(chunk) if tokenizer == "char" else Counter(chunk.split())


def windows(ids: np.ndarray, num_steps: int, stride: int = 1) -> np.ndarray:
    """[n] ids → [m, num_steps + 1] windows starting every `stride` tokens (a view, no copy)."""
    if len(ids) < num_steps + 1:
        return np.zeros((0, num_steps + 1), dtype=np.int32)
    return np.lib.stride_tricks.sliding_window_view(ids, num_steps + 1)[::stride]


def holdout_boundary(num_tokens: int, valid_fraction: float) -> int:
    """Where a document's validation part starts: its last valid_fraction (rounded) validates."""
    return num_tokens - int(round(num_tokens * valid_fraction))


def holdout_windows(ids: np.ndarray, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """The last valid_fraction of a document validates; no window crosses the boundary."""
    boundary = holdout_boundary(len(ids), cfg.valid_fraction)
    return {"train": windows(ids[:boundary], cfg.num_steps, cfg.window_stride),
            "valid": windows(ids[boundary:], cfg.num_steps, cfg.window_stride)}


def d2l_windows(ids: np.ndarray, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """The book's protocol: windows at stride 1, the first num_train train, the next num_val validate."""
    every = windows(ids[: cfg.num_train + cfg.num_val + cfg.num_steps], cfg.num_steps)
    return {"train": every[: cfg.num_train], "valid": every[cfg.num_train: cfg.num_train + cfg.num_val]}


def window_count(length: int, num_steps: int, stride: int = 1) -> int:
    """How many windows `windows` makes from `length` ids."""
    return 0 if length < num_steps + 1 else (length - num_steps - 1) // stride + 1


def source_windows(tokens: list[int], cfg: PreprocessConfig) -> list[dict[str, int]]:
    """Training and validation windows of each source, from the sources' token counts (in order).

    Holdout: each source's own windows. d2l: the sources are one sequence, and a window counts for the
    source it starts in. The totals equal the windows in the shards (tested).
    """
    if cfg.split == "holdout":
        out = []
        for n in tokens:
            boundary = holdout_boundary(n, cfg.valid_fraction)
            out.append({"train": window_count(boundary, cfg.num_steps, cfg.window_stride),
                        "valid": window_count(n - boundary, cfg.num_steps, cfg.window_stride)})
        return out
    made = min(window_count(sum(tokens), cfg.num_steps), cfg.num_train + cfg.num_val)
    ranges = {"train": (0, min(cfg.num_train, made)), "valid": (cfg.num_train, made)}
    out, start = [], 0
    for n in tokens:
        out.append({split: max(0, min(start + n, high) - max(start, low)) for split, (low, high) in ranges.items()})
        start += n
    return out


def shard_files(split: str, doc_index: int, split_windows: np.ndarray,
                cfg: PreprocessConfig) -> Iterator[tuple[str, int, bytes]]:
    """Yields (file name, number of records, TFRecord bytes) for one document's windows of a split."""
    for block, start in enumerate(range(0, len(split_windows), cfg.records_per_shard)):
        part = split_windows[start: start + cfg.records_per_shard]
        yield (f"{split}-{doc_index:05d}-{block:05d}.tfrecord", len(part),
               records.tfrecord_file(part))
