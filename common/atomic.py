"""Atomic outputs: write beside the destination, then rename, so readers never see half an artefact."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import uuid


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(final: str) -> None:
    """Removes temporaries of crashed runs; restores a previous output a crash left set aside."""
    for tmp in glob.glob(glob.escape(final) + ".tmp-*"):
        pid = tmp.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if not (pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid()):
            shutil.rmtree(tmp, ignore_errors=True) if os.path.isdir(tmp) else os.unlink(tmp)
    for old in glob.glob(glob.escape(final) + ".old-*"):
        if os.path.exists(final):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, final)


def temp_path(final: str) -> str:
    return f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


MARKER = ".deep_rnn-output"  # in every directory atomic_directory writes: proof that replacing it loses nothing


def check_replaceable(final: str) -> None:
    """UserError unless `final` is absent, an empty directory, or a directory this project wrote (marker inside)."""
    from common.cli import UserError

    if not os.path.lexists(final):
        return
    if not os.path.isdir(final) or os.path.islink(final):
        raise UserError(f"{final}: exists and is not a directory; refusing to replace it")
    if os.listdir(final) and not os.path.isfile(os.path.join(final, MARKER)):
        raise UserError(f"{final}: is a non-empty directory this pipeline did not write; refusing to replace it "
                        f"(choose a new output directory, or empty this one)")


@contextlib.contextmanager
def atomic_directory(final: str, stage: str = "output"):
    """Yields a fresh sibling directory that replaces `final` only if the block succeeds.

    An existing `final` is replaced only when this project wrote it (its MARKER file), so a mistyped
    --output can never delete a user's files."""
    final = os.path.abspath(final)
    check_replaceable(final)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    clean_stale(final)
    tmp = temp_path(final)
    os.makedirs(tmp)
    try:
        with open(os.path.join(tmp, MARKER), "w") as f:
            f.write(f"{stage}\n")
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    check_replaceable(final)  # again: something may have appeared there while the block ran
    if os.path.exists(final):
        old = f"{final}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


@contextlib.contextmanager
def replacing(path: str, suffix: str = ""):
    """Yields a temporary sibling path for a writer that needs a file name (savefig, model.save); it
    replaces `path` when the block succeeds and is removed when it fails. `suffix` keeps the extension
    that such writers read the format from."""
    tmp = temp_path(path) + suffix
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
