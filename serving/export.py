"""Export stage: RUN/model → EXPORT_BASE/<model_name>/<version>/ SavedModel + EXPORT_BASE/models.config.

    python -m serving.export --model-dir runs/x/model --export-base runs/x/export
The version is written beside its final place and renamed in, so a server polling the base path
never sees half a version. Signatures: serving_default (greedy), sample, score (see DESIGN.md).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from common import cli, config
from serving.savedmodel import SIGNATURES, export_model
from serving.settings import ExportConfig
from trainer.config import ServingLimits

EXAMPLES = """examples:
  python -m serving.export --model-dir runs/default/model --export-base runs/default/export
  python -m serving.export --model-dir runs/default/model --export-base /models --model-name shakespeare \\
      --max-chars 2000 --max-batch-size 16
Then: tensorflow_model_server --model_config_file=$PWD/runs/default/export/models.config --port=8500"""


SECTIONS = {"export": ExportConfig, "limits": ServingLimits}


def build_parser():
    p = config.make_parser("serving.export", __doc__.split("\n")[0], EXAMPLES, SECTIONS)
    p.add_argument("--model-dir", required=True, metavar="DIR", help="output directory of trainer.train")
    p.add_argument("--export-base", required=True, metavar="DIR",
                   help="TF Serving's base path: versions go to DIR/<model-name>/<version>, with DIR/models.config")
    return p


def parse_args(argv):
    args, sections = config.parse(build_parser(), argv, SECTIONS)
    return args, sections["export"], sections["limits"]


def main(argv: Sequence[str] | None = None) -> None:
    args, cfg, limits = parse_args(argv)
    path = export_model(args.model_dir, args.export_base, cfg.model_name, cfg.version, limits, cfg.source_fingerprint)
    print(f"export: version {os.path.basename(path)} → {os.path.abspath(path)} (signatures {', '.join(SIGNATURES)}; "
          f"checked with the session loader TF Serving uses)")


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
