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
from dataclasses import dataclass

from common import atomic, cli, config
from deep_rnn.evaluation import evaluate, format_table
from pipeline import sources
from pipeline.transform import ReadingConfig


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """Evaluation: how texts are scored"""

    batch_size: int = 256
    """windows per batch (an export caps it at its max_batch_size)"""
    full_context: bool = False
    """score each text as one stream with the state carried across all of it, instead of zero-state windows"""

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


SECTIONS = {"reading": ReadingConfig, "evaluation": EvaluationConfig}


def build_parser():
    p = config.make_parser("deep_rnn.evaluate", __doc__.split("\n")[0], cli.examples_from(__doc__), SECTIONS)
    p.add_argument("--model-dir", metavar="DIR", help="a finished trainer.train model directory (model.keras)")
    p.add_argument("--export", metavar="DIR", help="an exported version directory, or a model's export base "
                                                   "(its newest version); scored with the score signature")
    p.add_argument("--corpus", nargs="+", required=True, metavar="SRC",
                   help="texts to evaluate: paths, globs or a named corpus (" + ", ".join(sources.NAMED_CORPORA) + ")")
    p.add_argument("--json", metavar="FILE", help="also write the rows as a JSON list (keys source, tokens, "
                                                  "unknown_rate, perplexity, bits_per_token, …)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args, sections = config.parse(build_parser(), argv, SECTIONS)
    reading, settings = sections["reading"], sections["evaluation"]
    rows = evaluate(args.corpus, args.model_dir, args.export, reading.encoding, reading.decode_errors,
                    reading.strip_boilerplate, settings.batch_size, settings.full_context)
    print(format_table(rows))
    if args.json:
        atomic.write_text(args.json, json.dumps(rows, indent=2) + "\n")
        print(f"→ {os.path.abspath(args.json)}")


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
