"""Atomic outputs: write beside the destination, then rename, so readers never see half an artefact."""
from __future__ import annotations

import contextlib
import os
import re
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


# what temp_path and atomic_directory name their files: FINAL.tmp-<pid>-<8 hex>[.ext] and FINAL.old-<8 hex>
_TEMP_NAME = re.compile(r"\.tmp-(\d+)-[0-9a-f]{8}(\.[A-Za-z0-9]{1,8})?")
_OLD_NAME = re.compile(r"\.old-[0-9a-f]{8}")


def _written_by_us(path: str) -> bool:
    """A leftover is ours only when its name is exactly one we make and, for a directory, it holds our MARKER
    (or nothing: a crash between mkdir and the marker); anything else beside an output is the user's."""
    if os.path.islink(path):
        return False
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, MARKER)) or not os.listdir(path)
    return os.path.isfile(path)


def clean_stale(final: str) -> None:
    """Removes temporaries of crashed runs and restores a previous output a crash left set aside; touches only
    what this project wrote (exact names, MARKER inside), never a user's `FINAL.tmp-notes/` or `FINAL.old-backup/`."""
    prefix = os.path.basename(final)
    parent = os.path.dirname(final) or "."
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        path, rest = os.path.join(parent, name), name[len(prefix):]
        temp = _TEMP_NAME.fullmatch(rest)
        if temp and _written_by_us(path):
            pid = int(temp.group(1))
            if _pid_alive(pid) and pid != os.getpid():
                continue  # another run's work in progress
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
        elif _OLD_NAME.fullmatch(rest) and os.path.isdir(path) and _written_by_us(path):
            if os.path.exists(final):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rename(path, final)


def check_space(directory: str, needed_bytes: int, what: str) -> None:
    """UserError unless `directory`'s filesystem has needed_bytes free: for writers that do not fail cleanly
    on a full disk (HDF5 under h5py dies with SIGSEGV on ENOSPC instead of raising)."""
    import shutil

    from common.cli import UserError

    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise UserError(f"no space left on device for {what}: it needs about {needed_bytes / 2**20:.1f} MiB and "
                        f"{directory} has {free / 2**20:.1f} MiB free")


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
