"""Shared command-line conventions: user errors are one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """A problem with the user's flags or inputs; reported as one line, exit code 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and epilog's line breaks (examples stay examples) and adds each option's default
    to its help text, unless the text already says it or there is none to say."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        default = action.default
        if ("%(default)" in help_text or "default" in help_text.lower() or default is None or default is False
                or default in ([], "") or default is argparse.SUPPRESS or not action.option_strings):
            return help_text
        return f"{help_text} (default: %(default)s)"


def examples_from(doc: str) -> str:
    """An --help epilog from a module docstring's `python -m ...` usage lines."""
    lines = [line.strip() for line in (doc or "").splitlines() if line.strip().startswith("python -m")]
    return "examples:\n" + "\n".join("  " + line for line in lines) if lines else ""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting, and shows defaults in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse hook
        raise UserError(f"{self.prog}: {message}")


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Runs a stage's main: UserError → one line + exit 2, Ctrl-C → exit 130; TensorFlow's C++ start-up lines
    are kept off the console (common.console.native_noise_filtered)."""
    from common import console

    quiet_tensorflow()
    try:
        with console.native_noise_filtered():
            main(argv)
    except UserError as err:
        message = " ".join(str(err).split())  # guarantee a single line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as err:
        if err.errno not in OUT_OF_ROOM:
            raise
        print(f"error: {err.filename or 'output'}: {err.strerror}", file=sys.stderr)  # no traceback for a full disk
        sys.exit(2)


OUT_OF_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # the user's disk, not a bug of ours


def quiet_tensorflow() -> None:
    """Silences TensorFlow's C++ start-up chatter unless the user asked for it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {value}")
    return value


def read_json(path: str, what: str, limit: int = 1 << 20):
    """A small JSON file's content; UserError naming the file when it is missing, larger than `limit` bytes
    (checked before reading, so /dev/zero or a huge file cannot exhaust memory), or not a JSON object."""
    import json

    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise UserError(f"{path}: cannot read {what}: {err.strerror or err}") from None
    if len(data) > limit:
        raise UserError(f"{path}: larger than {limit:,} bytes; not a file of {what}")
    try:
        loaded = json.loads(data)
    except (ValueError, RecursionError) as err:
        raise UserError(f"{path}: cannot read {what}: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: must hold a JSON object of {what}, not {type(loaded).__name__}")
    return loaded
