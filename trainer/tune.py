"""Tuning stage entry point: KerasTuner search over depth × width (and cell, dropout, weight drop, optimizer, lr).

    python -m trainer.tune --data runs/x/data --tuner-dir runs/x/tuning [--tuner hyperband|random|bayesian]
Writes best_hparams.json (what `trainer.train --hparams` reads), trials.csv, pareto.png and
TensorBoard HParams logs. Killed and restarted with the same command, it keeps finished trials.
Distributed: set KERASTUNER_TUNER_ID (chief, tuner0, …), KERASTUNER_ORACLE_IP and _PORT.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from common import cli, config
from common.cli import UserError
from trainer.config import TrainConfig
from trainer.search import TUNE_SECTIONS, TuneConfig, read_start_point, tune

EXAMPLES = """examples:
  python -m trainer.tune --data runs/default/data --tuner-dir runs/default/tuning --time-budget 20 --quiet
  python -m trainer.tune --data runs/default/data --tuner-dir runs/t --tuner bayesian --max-trials 30 \\
      --max-layers 4 --max-hiddens 512 --cells gru lstm --optimizers adam
  python -m trainer.tune --data runs/new/data --tuner-dir runs/new/tuning --time-budget 10 \\
      --start-with runs/default/tuning/best_hparams.json   # the last winner first, then the oracle's points
Then: python -m trainer.train --data runs/default/data --model-dir runs/tuned --hparams runs/t/best_hparams.json"""


FLAGS = {"quiet": "run.progress=epoch"}  # flags that take no value


def build_parser():
    p = config.make_parser("trainer.tune", __doc__.split("\n")[0], EXAMPLES, TUNE_SECTIONS)
    p.add_argument("--data", required=True, metavar="DIR", help="output directory of pipeline.preprocess")
    p.add_argument("--tuner-dir", required=True, metavar="DIR",
                   help="trials, best_hparams.json, trials.csv, pareto.png (a rerun resumes the search)")
    p.add_argument("--start-with", nargs="+", default=[], metavar="JSON",
                   help="points the first trials try, in order, before the oracle's own: best_hparams.json of an "
                        "earlier search, or a file with its keys (a resumed search skips points already tried)")
    return p


def parse_args(argv):
    """(paths, TuneConfig, start points): defaults < --config file < flags."""
    args, sections = config.parse(build_parser(), argv, TUNE_SECTIONS, flags=FLAGS)
    try:
        base = TrainConfig(**{name: sections[name] for name in ("regularisers", "optimiser", "run")})
        cfg = TuneConfig(search=sections["search"], space=sections["space"], base=base)
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from None
    return args, cfg, [read_start_point(path, cfg.space) for path in args.start_with]


def main(argv: Sequence[str] | None = None) -> None:
    args, cfg, start_points = parse_args(argv)
    best = tune(args.data, args.tuner_dir, cfg, start_points)
    worker = os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief" and "KERASTUNER_ORACLE_IP" in os.environ
    if best is None and not worker:
        raise UserError(f"{args.tuner_dir}: no trial finished, so there is no best_hparams.json "
                        f"(each trial's error is in the log above)")
    if best is not None:
        print(json.dumps({"best": best, "best_hparams": os.path.join(args.tuner_dir, "best_hparams.json")}))


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
