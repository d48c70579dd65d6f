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
