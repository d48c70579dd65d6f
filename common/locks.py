"""One process at a time per output directory: an advisory lock the kernel drops when the holder dies."""
from __future__ import annotations

import contextlib
import fcntl
import os

from common.cli import UserError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def exclusive(directory: str, what: str):
    """Holds DIRECTORY/.lock for the block; UserError at once if another process holds it.

    flock locks belong to the open file, so a SIGKILLed holder leaves no stale lock behind."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"{directory}: {what} is already running there (pid {holder}); "
                            f"wait for it or use another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def check_free(directory: str, what: str) -> None:
    """UserError naming the holder when a process holds DIRECTORY/.lock now; nothing when the directory or its
    lock file does not exist (a check only: the lock is not kept)."""
    path = os.path.join(directory, LOCK_FILE)
    if not os.path.isfile(path):
        return
    with exclusive(directory, what):
        pass
