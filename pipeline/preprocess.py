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

from common import cli, text
from common.cli import UserError
from pipeline import boilerplate, sources, transform
from pipeline.preprocessing import preprocess

EXAMPLES = """examples:
  python -m pipeline.preprocess --corpus timemachine --output runs/default/data --split d2l
  python -m pipeline.preprocess --corpus timemachine '../shared/data/books/*.txt' --output runs/books/data \\
      --normalize none --num-steps 64 --encoding auto --strip-boilerplate auto
  python -m pipeline.preprocess --corpus ../shared/data/tinyshakespeare.txt --output runs/shakespeare/data \\
      --direct_num_workers=2 --direct_running_mode=multi_processing

Unrecognised --flags are passed to Beam as pipeline options."""


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="pipeline.preprocess", description=__doc__.split("\n")[0], epilog=EXAMPLES)
    p.add_argument("--corpus", nargs="+", required=True, metavar="SRC",
                   help="paths, globs, Beam filesystem URLs, or a named corpus: " + ", ".join(sources.NAMED_CORPORA))
    p.add_argument("--output", required=True, metavar="DIR",
                   help="output directory: TFRecord shards, vocab.txt, metadata.json (replaced atomically)")
    p.add_argument("--normalize", choices=sorted(text.NORMALIZERS), default="d2l",
                   help="text normaliser: d2l keeps letters as lower case and maps the rest to spaces (the book's)")
    p.add_argument("--tokenizer", choices=text.TOKENIZERS, default="char", help="token unit")
    p.add_argument("--num-steps", type=cli.positive_int, default=32, metavar="N",
                   help="tokens of context per training window (each record holds N + 1 tokens)")
    p.add_argument("--split", choices=("holdout", "d2l"), default="holdout",
                   help="holdout: each source's last --valid-fraction validates; d2l: the book's random windows")
    p.add_argument("--valid-fraction", type=cli.fraction, default=0.1, metavar="F",
                   help="share of each source held out for validation (holdout split)")
    p.add_argument("--stride", type=cli.positive_int, default=None, metavar="N",
                   help="tokens between window starts in the holdout split (default: --num-steps, no overlap)")
    p.add_argument("--num-train", type=cli.positive_int, default=10000, metavar="N",
                   help="training windows drawn by the d2l split")
    p.add_argument("--num-val", type=cli.positive_int, default=5000, metavar="N",
                   help="validation windows drawn by the d2l split")
    p.add_argument("--min-freq", type=cli.positive_int, default=1, metavar="N",
                   help="tokens seen fewer than N times map to <unk>")
    p.add_argument("--max-tokens", type=cli.positive_int, default=None, metavar="N",
                   help="keep at most N vocabulary entries, most frequent first (default: no limit)")
    p.add_argument("--encoding", default="auto", metavar="auto|CODEC",
                   help="text encoding of the inputs: auto reads UTF-8 (a BOM dropped) when the bytes are valid UTF-8 "
                        "and otherwise detects it per file (charset-normalizer; Windows-1252 preferred among equals); "
                        "or a Python codec name such as cp1252, latin-1, utf-16")
    p.add_argument("--decode-errors", choices=("strict", "replace"), default="strict",
                   help="bytes that do not decode: strict fails with the file and offset; replace uses U+FFFD")
    p.add_argument("--strip-boilerplate", choices=boilerplate.MODES, default="auto",
                   help="Project Gutenberg's licence header and footer: auto removes them where present; gutenberg "
                        "requires them in every file; none keeps every character")
    p.add_argument("--records-per-shard", type=cli.positive_int, default=100_000, metavar="N",
                   help="windows per TFRecord file")
    return p


def parse_args(argv: Sequence[str] | None):
    p = build_parser()
    args, beam_args = p.parse_known_args(argv)
    try:
        cfg = transform.PreprocessConfig(
            normalize=args.normalize, tokenizer=args.tokenizer, num_steps=args.num_steps, split=args.split,
            valid_fraction=args.valid_fraction, stride=args.stride, num_train=args.num_train,
            num_val=args.num_val, min_freq=args.min_freq, max_tokens=args.max_tokens,
            decode_errors=args.decode_errors, encoding=args.encoding, strip_boilerplate=args.strip_boilerplate,
            records_per_shard=args.records_per_shard)
    except ValueError as err:
        raise UserError(str(err)) from None
    return args, cfg, beam_args


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
