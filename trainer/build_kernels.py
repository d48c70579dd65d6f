"""Builds the native form's kernels for this CPU and TensorFlow and prints the library's path (`make kernels`).

    python -m trainer.build_kernels [--force]
Training builds them on first use too; this only does it ahead of time.
"""
from __future__ import annotations

import argparse
import sys

from common import cli
from trainer.native import NativeUnavailable, build


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer.build_kernels", formatter_class=cli.HelpFormatter,
                                     description="Build the native RNN kernels for this CPU and print their path.",
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--force", action="store_true", help="rebuild even if a library for this CPU exists")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        print(build(force=args.force))
    except NativeUnavailable as err:
        print(f"error: trainer.build_kernels: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
