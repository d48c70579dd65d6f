"""Where the project keeps what it downloads and builds outside a run directory."""
from __future__ import annotations

import os


def cache_dir() -> str:
    """$DEEP_RNN_CACHE, else ~/.cache/deep_rnn: named corpora (datasets/) and built kernels (native/)."""
    return os.environ.get("DEEP_RNN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "deep_rnn"))


def kernels_dir() -> str:
    """$DEEP_RNN_KERNELS_DIR, else cache_dir()/native: the native kernels built for each CPU and TensorFlow
    (never the package's own folder, which an installed wheel may not allow writing to)."""
    return os.environ.get("DEEP_RNN_KERNELS_DIR") or os.path.join(cache_dir(), "native")


def make_output_dir(path: str, flag: str) -> None:
    """Creates directory `path` (and its parents) for a stage's output and proves it takes a file; UserError
    naming `flag` and the cause (a file on the way, /proc, a read-only or full filesystem) instead of a
    traceback from deep inside the stage. Root passes permission bits, so only a real write tells."""
    from common.cli import UserError

    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{flag} {path}: exists and is not a directory") from None
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot create it: {err.strerror or err}"
                        f"{_blocker(path)}") from None
    probe = os.path.join(path, f".deep_rnn-probe-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot write there: {err.strerror or err}") from None


def _blocker(path: str) -> str:
    """' (X is a file)' for the first existing ancestor of path that is not a directory, else ''."""
    probe = os.path.abspath(path)
    while probe != os.path.dirname(probe):
        probe = os.path.dirname(probe)
        if os.path.exists(probe):
            return "" if os.path.isdir(probe) else f" ({probe} is a file)"
    return ""
