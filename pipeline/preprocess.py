"""Preprocessing stage entry point: corpora → RUN/data (TFRecords, vocab.txt, metadata.json).

    python -m pipeline.preprocess --corpus timemachine --output runs/x/data --split d2l
Any Beam pipeline option (--runner, --direct_num_workers, --temp_location, --setup_file …)
passes through to Beam; the runner is Beam's in-process FnApiRunner unless --runner names another.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import yaml

from common import cli, config
from common.cli import UserError
from pipeline import sources, transform
from pipeline.preprocessing import preprocess

EXAMPLES = """examples:
  python -m pipeline.preprocess --corpus timemachine --output runs/default/data --split d2l
  python -m pipeline.preprocess --corpus timemachine '../shared/data/books/*.txt' --output runs/books/data \\
      --normalize none --num-steps 64 --encoding auto --strip-boilerplate auto
  python -m pipeline.preprocess --corpus ../shared/data/tinyshakespeare.txt --output runs/shakespeare/data \\
      --direct_num_workers=2 --direct_running_mode=multi_processing

Unrecognised --flags are passed to Beam as pipeline options."""


SECTIONS = {"data": transform.PreprocessConfig}
OWN = ("--corpus", "--output")


def build_parser():
    p = config.make_parser("pipeline.preprocess", __doc__.split("\n")[0], EXAMPLES, SECTIONS)
    p.add_argument("--corpus", nargs="+", type=str, required=True, metavar="SRC",
                   help="paths, globs, Beam filesystem URLs, or a named corpus: " + ", ".join(sources.NAMED_CORPORA))
    p.add_argument("--output", type=str, required=True, metavar="DIR",
                   help="output directory: TFRecord shards, vocab.txt, metadata.json (replaced atomically)")
    return p


def parse_args(argv: Sequence[str] | None):
    """(paths, PreprocessConfig, Beam's options): every flag this stage does not know goes to Beam."""
    argv = config.translate(sys.argv[1:] if argv is None else argv, SECTIONS)
    _check_config_file(config.pop_value(list(argv), "--config"))
    mine, beam_args = config.split_unknown(argv, SECTIONS, OWN)
    args, sections = config.parse(build_parser(), mine, SECTIONS)
    return args, sections["data"], beam_args


def _check_config_file(path: str | None) -> None:
    """jsonargparse takes a --config file's `corpus` and `output` unchecked (`corpus: 5` was a traceback)."""
    if path is None:
        return
    try:
        with open(path) as f:
            values = yaml.safe_load(f.read(1 << 20))
    except (OSError, yaml.YAMLError):
        return  # jsonargparse reports a file it cannot read
    if not isinstance(values, dict):
        return
    corpus, output = values.get("corpus"), values.get("output")
    if corpus is not None and not (isinstance(corpus, list) and corpus and all(isinstance(c, str) for c in corpus)):
        raise UserError(f"--config {path}: corpus must be a list of paths, globs or corpus names, got "
                        f"{str(corpus)[:80]!r}")
    if output is not None and not isinstance(output, str):
        raise UserError(f"--config {path}: output must be a directory path, got {str(output)[:80]!r}")


def main(argv: Sequence[str] | None = None) -> None:
    args, cfg, beam_args = parse_args(argv)
    started = time.perf_counter()
    metadata = preprocess(args.corpus, args.output, cfg, beam_args)
    for source in metadata["sources"]:
        stripped = f", {source['stripped_chars']:,} characters of Gutenberg boilerplate removed" \
            if source["stripped_chars"] else ""
        print(f"read {source['path']}: {source['bytes']:,} bytes, {source['encoding']}{stripped}, "
              f"{source['tokens']:,} tokens, {source['windows']['train']:,} training and "
              f"{source['windows']['valid']:,} validation windows")
    windows, shards = metadata["windows"], metadata["shards"]
    print(f"preprocess: {metadata['total_tokens']:,} tokens, vocabulary {metadata['vocab_size']}, "
          f"{windows['train']:,} training and {windows['valid']:,} validation windows in {len(shards)} shards "
          f"→ {os.path.abspath(args.output)} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
