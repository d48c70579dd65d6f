"""Export stage: RUN/model → EXPORT_BASE/<model_name>/<version>/ SavedModel + EXPORT_BASE/models.config.

    python -m serving.export --model-dir runs/x/model --export-base runs/x/export
The version is written beside its final place and renamed in, so a server polling the base path
never sees half a version. Signatures: serving_default (greedy), sample, score (see DESIGN.md).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from common import cli
from serving.savedmodel import SIGNATURES, export_model
from trainer.config import DEFAULT_LIMITS, ServingLimits

EXAMPLES = """examples:
  python -m serving.export --model-dir runs/default/model --export-base runs/default/export
  python -m serving.export --model-dir runs/default/model --export-base /models --model-name shakespeare \\
      --max-chars 2000 --max-batch-size 16
Then: tensorflow_model_server --model_config_file=$PWD/runs/default/export/models.config --port=8500"""


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="serving.export", description=__doc__.split("\n")[0], epilog=EXAMPLES)
    p.add_argument("--model-dir", required=True, metavar="DIR", help="output directory of trainer.train")
    p.add_argument("--export-base", required=True, metavar="DIR",
                   help="TF Serving's base path: versions go to DIR/<model-name>/<version>, with DIR/models.config")
    p.add_argument("--model-name", default="deep_rnn", help="the name requests use")
    p.add_argument("--version", type=cli.positive_int, help="version number (default: one more than the newest)")
    p.add_argument("--max-chars", type=cli.positive_int, default=DEFAULT_LIMITS.max_chars, metavar="N",
                   help="largest num_chars a row may ask for; checked in the graph")
    p.add_argument("--max-batch-size", type=cli.positive_int, default=DEFAULT_LIMITS.max_batch_size, metavar="N",
                   help="most rows (prefixes or texts) in one request; checked in the graph")
    p.add_argument("--max-input-tokens", type=cli.positive_int, default=DEFAULT_LIMITS.max_input_tokens,
                   metavar="N", help="longest prefix or scored text, in tokens; checked in the graph")
    p.add_argument("--source-fingerprint", metavar="TEXT",
                   help="recorded in the version, so pipelines can skip re-exports (default: none)")
    return p


def parse_args(argv):
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    limits = ServingLimits(args.max_batch_size, args.max_input_tokens, args.max_chars)
    path = export_model(args.model_dir, args.export_base, args.model_name, args.version, limits,
                        args.source_fingerprint)
    print(f"export: version {os.path.basename(path)} → {os.path.abspath(path)} (signatures {', '.join(SIGNATURES)}; "
          f"checked with the session loader TF Serving uses)")


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
