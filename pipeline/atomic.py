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


@contextlib.contextmanager
def atomic_directory(final: str):
    """Yields a fresh sibling directory that replaces `final` only if the block succeeds."""
    final = os.path.abspath(final)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    clean_stale(final)
    tmp = temp_path(final)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
