"""What `make pipeline` shows a person: each stage's own lines, without TensorFlow's C++ start-up chatter.

Every stage runs as a child process whose stdout and stderr go, unfiltered, to RUN_DIR/logs/<stage>.log;
the console gets the same lines less the ones `is_noise` recognises (absl-formatted C++ log lines such as
`I0000 ... oneDNN custom operations are on` or `E0000 ... failed call to cuInit`, and a few known library
warnings). When a stage fails, the console names its log and shows the log's last lines.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence

# absl's C++ log format: `E0000 00:00:1795456543.683160    4083 cuda_platform.cc:52] failed call to cuInit ...`
_ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+\s+[\w.\-/]+:\d+\] ")  # before absl's init the
# time field holds epoch seconds (00:00:1795456543.68), after it the time of day (17:56:23.052)
# TensorFlow's older C++ format: `2026-11-23 17:56:23.052000: I tensorflow/core/... ] ...`
_TF_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] (tensorflow|external|third_party|xla)/")
_KNOWN_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",  # second line of cpu_feature_guard's message
    "WARNING:root:apitools not found",        # Beam's GCP extras probe
)
TAIL_LINES = 12
RAW_STDERR = "DEEP_RNN_RAW_STDERR"  # set (to 1) for a child whose whole output a log keeps (run_logged)


def is_noise(line: str) -> bool:
    """True for a TensorFlow/absl C++ log line or a known start-up warning: kept in the log, not on the console."""
    return bool(_ABSL_LINE.match(line) or _TF_LINE.match(line)) or line.startswith(_KNOWN_NOISE)


def run_logged(command: Sequence[str], log_path: str, echo: Callable[[str], None] = print,
               preexec_fn=None) -> int:
    """Runs `command`, writing all its output to log_path and echoing the lines that are not noise; returns
    its exit code."""
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                encoding="utf-8", errors="replace", bufsize=1, preexec_fn=preexec_fn,
                                env={**os.environ, RAW_STDERR: "1"})  # the log keeps every line
        with proc.stdout:
            for line in proc.stdout:  # universal newlines: a progress bar's \r ends a line too
                log.write(line)
                log.flush()
                line = line.rstrip("\n")
                if line.strip() and not is_noise(line):
                    echo(line)
        return proc.wait()


def tail(path: str, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` lines of a log (fewer when it is shorter; none when it does not exist)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
    except OSError:
        return []


def print_failure(log_path: str, lines: int = TAIL_LINES) -> None:
    """The end of a failed step's log on stderr, so the cause is on the console without opening the file."""
    print(f"   last lines of {log_path}:", file=sys.stderr)
    for line in tail(log_path, lines):
        print("   | " + line, file=sys.stderr)


@contextlib.contextmanager
def stderr_to(log_path: str) -> Iterator[None]:
    """Sends this process's file descriptor 2 (where C++ libraries log) to log_path for the block.

    For in-process work that imports TensorFlow (the gRPC client's protos do): its start-up lines go to the
    stage's log instead of the console. Python's sys.stderr follows, since it writes to the same descriptor."""
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)



@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Passes this process's file descriptor 2 through a filter that drops the lines `is_noise` recognises.

    TensorFlow's C++ libraries log to the descriptor itself (not sys.stderr), some of it at error level
    (`E0000 ... failed call to cuInit` on a machine without a GPU), so TF_CPP_MIN_LOG_LEVEL alone cannot
    hide it. Everything else, Python's own stderr included, passes unchanged. Off when RAW_STDERR is set."""
    if os.environ.get(RAW_STDERR):
        yield
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    out_fd = os.dup(real)  # the pump's own copy, taken before `real` can be closed

    def pump():
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(out_fd, "wb", buffering=0) as out:
            for raw in pipe:
                if not is_noise(raw.decode("utf-8", "replace").rstrip("\n")):
                    out.write(raw)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's last write end in this process closes: the pump sees its end
        os.close(real)
        thread.join(timeout=2.0)  # a child process still holding the pipe must not hold up the exit
