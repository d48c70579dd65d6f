"""Evaluation entry point: perplexity, bits per token and unknown-token share of a model on any texts, per source.

    python -m deep_rnn.evaluate --model-dir runs/default/model --corpus timemachine
    python -m deep_rnn.evaluate --model-dir runs/books/model --corpus '../shared/data/books/*.txt' --json eval.json
    python -m deep_rnn.evaluate --export runs/default/export/deep_rnn --corpus ../shared/data/books/*.txt

Each text is read as the preprocessing stage reads a corpus (same encoding detection and Gutenberg
stripping), normalised and tokenized with the model's own normaliser and vocabulary, and cut into the
windows the trainer validates on (num_steps + 1 tokens, every num_steps tokens, each from a zero
state), so a model's validation part gives the trainer's validation perplexity. `--export` scores the
same windows through the SavedModel's `score` signature in the session loader TF Serving uses.
`--full-context` scores each text as one stream instead, the state carried from its first token to its
last (what a served model does; the trainer's val_stream_perplexity on its validation part); with
`--export`, each text is one `score` request, so it must fit the export's max_input_tokens.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from common import atomic, cli
from deep_rnn.evaluation import evaluate, format_table
from pipeline import boilerplate, sources


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="deep_rnn.evaluate", description=__doc__.split("\n")[0],
                           epilog=cli.examples_from(__doc__))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-dir", metavar="DIR", help="a finished trainer.train model directory (model.keras)")
    which.add_argument("--export", metavar="DIR", help="an exported version directory, or a model's export base "
                                                       "(its newest version); scored with the score signature")
    p.add_argument("--corpus", nargs="+", required=True, metavar="SRC",
                   help="texts to evaluate: paths, globs or a named corpus (" + ", ".join(sources.NAMED_CORPORA) + ")")
    p.add_argument("--json", metavar="FILE", help="also write the rows as a JSON list (keys source, tokens, "
                                                  "unknown_rate, perplexity, bits_per_token, …)")
    p.add_argument("--encoding", default="auto", metavar="auto|CODEC", help="as pipeline.preprocess --encoding")
    p.add_argument("--decode-errors", choices=("strict", "replace"), default="strict",
                   help="as pipeline.preprocess --decode-errors")
    p.add_argument("--strip-boilerplate", choices=boilerplate.MODES, default="auto",
                   help="as pipeline.preprocess --strip-boilerplate")
    p.add_argument("--full-context", action="store_true",
                   help="score each text as one stream with the state carried across all of it, instead of "
                        "zero-state windows")
    p.add_argument("--batch-size", type=cli.positive_int, default=256, metavar="N",
                   help="windows per batch (an export caps it at its max_batch_size)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rows = evaluate(args.corpus, args.model_dir, args.export, args.encoding, args.decode_errors,
                    args.strip_boilerplate, args.batch_size, args.full_context)
    print(format_table(rows))
    if args.json:
        atomic.write_text(args.json, json.dumps(rows, indent=2) + "\n")
        print(f"→ {os.path.abspath(args.json)}")


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
