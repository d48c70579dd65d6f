"""Corpus sources: local paths, globs, Beam filesystem URLs, and named corpora.

Named corpora are downloaded once with `keras.utils.get_file`, verified by hash before use,
and cached under $DEEP_RNN_CACHE (default ~/.cache/deep_rnn); tests seed that cache. Offline
machines may point $DEEP_RNN_SEED_DIR at a folder holding <name>.txt: it is copied into the cache
and verified like a download.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import stat
from dataclasses import dataclass

from common.cli import UserError
from common.paths import cache_dir


@dataclass(frozen=True)
class NamedCorpus:
    url: str
    sha256: str
    sha1: str  # the hash the book's own loader checks
    size: int


NAMED_CORPORA = {
    "timemachine": NamedCorpus(
        url="http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
        sha256="8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
        sha1="090b5e7e70c295757f55df93cb0a180b9691891a",
        size=178979,
    ),
}


def cached_path(name: str) -> str:
    return os.path.join(cache_dir(), "datasets", f"{name}.txt")


def fetch_named(name: str) -> str:
    """Path of a verified local copy of a named corpus, downloading it on first use."""
    corpus = NAMED_CORPORA[name]
    import keras  # imported here: only named corpora need it

    os.makedirs(os.path.join(cache_dir(), "datasets"), exist_ok=True)  # else get_file uses /tmp/.keras
    seed = os.path.join(os.environ.get("DEEP_RNN_SEED_DIR", ""), f"{name}.txt")
    if os.environ.get("DEEP_RNN_SEED_DIR") and os.path.exists(seed) and not os.path.exists(cached_path(name)):
        shutil.copyfile(seed, cached_path(name))  # an offline mirror; get_file still checks the hash

    try:
        path = keras.utils.get_file(
            fname=f"{name}.txt", origin=corpus.url, file_hash=corpus.sha256,
            hash_algorithm="sha256", cache_dir=cache_dir(), cache_subdir="datasets")
    except Exception as err:  # network or hash failure: say where to put the file instead
        raise UserError(f"{name}: download from {corpus.url} failed ({err}); "
                        f"place the verified file at {cached_path(name)}") from None
    with open(path, "rb") as f:
        sha1 = hashlib.sha1(f.read()).hexdigest()
    if sha1 != corpus.sha1:
        raise UserError(f"{name}: {path} has SHA-1 {sha1}, expected {corpus.sha1}")
    return path


def _is_url(src: str) -> bool:
    return "://" in src


def _check_local_file(path: str, shown: str) -> None:
    if os.path.isdir(path):
        raise UserError(f"{shown}: is a directory, not a text file (use a glob such as {shown}/*.txt)")
    if not os.path.exists(path):
        raise UserError(f"{shown}: no such file")
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block forever, /dev/zero never ends
        raise UserError(f"{shown}: is not a regular file (a pipe, device or socket cannot be a corpus)")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise UserError(f"{shown}: cannot read: {err.strerror or err}") from None


def expand_glob(pattern: str, limit: int = 100_000) -> list[str]:
    """The files a local glob matches, sorted; `**` spans directories without following symbolic links to them
    (pathlib's rule), so a link loop cannot make it run for ever; more than `limit` matches is a UserError."""
    from pathlib import Path

    parts = pattern.split(os.sep)
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = os.sep.join(parts[:fixed]) or ("." if not pattern.startswith(os.sep) else os.sep)
    rest = os.sep.join(parts[fixed:])
    if not os.path.isdir(root) or not rest:
        return []
    matched = []
    for path in Path(root).glob(rest):
        if not path.is_dir():
            matched.append(str(path) if root != "." or pattern.startswith("./") else os.path.relpath(path))
            if len(matched) > limit:
                raise UserError(f"{pattern}: matches more than {limit:,} files")
    return sorted(matched)


def resolve_sources(sources: list[str]) -> list[str]:
    """Expands each SRC to files (sorted within a glob, order of SRCs kept), checking each one."""
    if not sources:
        raise UserError("no --corpus given")
    files: list[str] = []
    for src in sources:
        if src in NAMED_CORPORA:
            files.append(fetch_named(src))
        elif _is_url(src):
            from apache_beam.io.filesystems import FileSystems

            try:
                matched = FileSystems.match([src])[0].metadata_list
            except Exception as err:
                raise UserError(f"{src}: cannot list: {err}") from None
            if not matched:
                raise UserError(f"{src}: matches no file")
            files += sorted(m.path for m in matched)
        elif glob.has_magic(src) and not os.path.lexists(src):  # a file named book[1].txt is itself
            matched = expand_glob(src)
            if not matched:
                raise UserError(f"{src}: glob matches no file")
            for path in matched:
                _check_local_file(path, path)
            files += matched
        else:
            _check_local_file(src, src)
            files.append(os.path.abspath(src))
    local = [os.path.realpath(f) for f in files if not _is_url(f)]  # one file by path, glob or link is one file
    if len(set(local)) != len(local):
        twice = next(f for f in local if local.count(f) > 1)
        raise UserError(f"{twice}: named twice among --corpus sources (by path, glob or link)")
    return files
