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

from common import cli
from common.cli import UserError
from trainer.config import LR_SCHEDULES, TrainConfig
from trainer.search import TUNERS, SearchSpace, read_start_point, tune

EXAMPLES = """examples:
  python -m trainer.tune --data runs/default/data --tuner-dir runs/default/tuning --time-budget 20 --quiet
  python -m trainer.tune --data runs/default/data --tuner-dir runs/t --tuner bayesian --max-trials 30 \\
      --max-layers 4 --max-hiddens 512 --cells gru lstm --optimizers adam
  python -m trainer.tune --data runs/new/data --tuner-dir runs/new/tuning --time-budget 10 \\
      --start-with runs/default/tuning/best_hparams.json   # the last winner first, then the oracle's points
Then: python -m trainer.train --data runs/default/data --model-dir runs/tuned --hparams runs/t/best_hparams.json"""


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="trainer.tune", description=__doc__.split("\n")[0], epilog=EXAMPLES)
    p.add_argument("--data", required=True, metavar="DIR", help="output directory of pipeline.preprocess")
    p.add_argument("--tuner-dir", required=True, metavar="DIR",
                   help="trials, best_hparams.json, trials.csv, pareto.png (a rerun resumes the search)")
    p.add_argument("--tuner", default="hyperband", choices=TUNERS, help="KerasTuner oracle")
    p.add_argument("--max-trials", type=cli.positive_int, metavar="N",
                   help="trials to run (random/bayesian; default: 10, or no limit with --time-budget)")
    p.add_argument("--max-epochs", type=cli.positive_int, default=10, metavar="N",
                   help="epochs of the longest trial (Hyperband's top bracket)")
    p.add_argument("--executions-per-trial", type=cli.positive_int, default=1, metavar="N",
                   help="models trained per point, scores averaged")
    p.add_argument("--min-layers", type=int, default=1, metavar="L", help="fewest recurrent layers searched")
    p.add_argument("--max-layers", type=int, default=8, metavar="L", help="most recurrent layers searched")
    p.add_argument("--min-hiddens", type=int, default=64, metavar="H", help="narrowest layer searched")
    p.add_argument("--max-hiddens", type=int, default=2048, metavar="H", help="widest layer searched")
    p.add_argument("--cells", nargs="+", default=["gru", "lstm"], choices=("gru", "lstm", "rnn", "scratch"),
                   help="cells searched")
    p.add_argument("--optimizers", nargs="+", default=["sgd", "adam"], choices=("sgd", "adam"),
                   help="optimizers searched (each with its own learning-rate range)")
    p.add_argument("--max-dropout", type=float, default=0.5, metavar="P", help="largest dropout searched")
    p.add_argument("--max-weight-drop", type=float, default=0.5, metavar="P",
                   help="largest weight drop (DropConnect on the recurrent kernels) searched; 0: none")
    p.add_argument("--input-dropout", type=float, default=0.0, metavar="P",
                   help="input dropout of every trial (trainer.train --input-dropout: whole characters dropped per "
                        "sequence); best_hparams.json keeps it")
    p.add_argument("--ar", type=float, default=0.0, metavar="ALPHA",
                   help="activation regularisation of every trial (trainer.train --ar); best_hparams.json keeps it")
    p.add_argument("--tar", type=float, default=0.0, metavar="BETA",
                   help="temporal activation regularisation of every trial (trainer.train --tar)")
    p.add_argument("--ema", type=float, default=0.0, metavar="MOMENTUM",
                   help="Polyak averaging in every trial (trainer.train --ema; trials are scored on the averaged "
                        "weights); best_hparams.json keeps it (0: off)")
    p.add_argument("--batch-size", type=cli.positive_int, default=1024, metavar="N", help="windows per step")
    p.add_argument("--time-budget", type=float, metavar="MIN",
                   help="stop launching trials after MIN minutes; a trial in flight ends then too (default: none)")
    p.add_argument("--trial-minutes", type=float, metavar="MIN",
                   help="end each trial after MIN minutes too: trials compared on equal time (default: no limit)")
    p.add_argument("--early-stopping", type=int, default=3, metavar="EPOCHS",
                   help="end a trial after EPOCHS epochs without a better validation perplexity (0: off)")
    p.add_argument("--steps-per-epoch", type=cli.positive_int, metavar="N",
                   help="batches per trial epoch (default: one pass over the windows); the data repeats")
    p.add_argument("--reduce-lr-patience", type=int, default=0, metavar="EPOCHS",
                   help="halve a trial's lr after EPOCHS epochs without a better validation perplexity (0: never)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="each trial's rate: constant (with --reduce-lr-patience: halved on plateaus), or "
                        "warmup_cosine: --warmup-steps of warm-up, then cosine decay to lr / 10 at the trial's "
                        "--trial-minutes limit, as trainer.train anneals by --time-limit-min")
    p.add_argument("--warmup-steps", type=int, default=0, metavar="N", help="warm-up steps of warmup_cosine")
    p.add_argument("--mixed-precision", action="store_true",
                   help="train every trial in mixed precision (trainer.train --mixed-precision: bfloat16 on CPU, "
                        "float16 on GPU); best_hparams.json carries it (default: off)")
    p.add_argument("--stateful", action="store_true",
                   help="train every trial with carried state (trainer.train --stateful) and score trials by "
                        "val_stream_perplexity; best_hparams.json then says stateful")
    p.add_argument("--start-with", nargs="+", default=[], metavar="JSON",
                   help="points the first trials try, in order, before the oracle's own: best_hparams.json of an "
                        "earlier search, or a file with its keys (a resumed search skips points already tried; "
                        "default: "
                        "none, the oracle picks every point)")
    p.add_argument("--seed", type=int, default=0, help="seed of the oracle and of every trial's model")
    p.add_argument("--quiet", action="store_true", help="one line per trial instead of KerasTuner's display")
    return p


def parse_args(argv):
    p = build_parser()
    args = p.parse_args(argv)
    try:
        space = SearchSpace(args.min_layers, args.max_layers, args.min_hiddens, args.max_hiddens,
                            tuple(args.cells), args.max_dropout, tuple(args.optimizers), args.max_weight_drop)
        base = TrainConfig(batch_size=args.batch_size, seed=args.seed, verbose=2 if args.quiet else 1,
                           steps_per_epoch=args.steps_per_epoch, reduce_lr_patience=args.reduce_lr_patience,
                           stateful=args.stateful, input_dropout=args.input_dropout, ar=args.ar, tar=args.tar,
                           ema=args.ema, lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
                           mixed_precision=args.mixed_precision)
    except ValueError as err:
        raise UserError(str(err)) from None
    if args.time_budget is not None and args.time_budget <= 0:
        raise UserError("--time-budget must be > 0 minutes")
    if args.trial_minutes is not None and not 0 < args.trial_minutes < float("inf"):
        raise UserError("--trial-minutes must be > 0 minutes")
    if args.early_stopping < 0:
        raise UserError("--early-stopping must be >= 0 epochs")
    args.start_points = [read_start_point(path, space) for path in args.start_with]
    return args, space, base


def main(argv: Sequence[str] | None = None) -> None:
    args, space, base = parse_args(argv)
    best = tune(args.data, args.tuner_dir, base, space, args.tuner, args.max_trials, args.max_epochs,
                args.executions_per_trial, args.time_budget, args.early_stopping, args.trial_minutes,
                args.start_points)
    worker = os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief" and "KERASTUNER_ORACLE_IP" in os.environ
    if best is None and not worker:
        raise UserError(f"{args.tuner_dir}: no trial finished, so there is no best_hparams.json "
                        f"(each trial's error is in the log above)")
    if best is not None:
        print(json.dumps({"best": best, "best_hparams": os.path.join(args.tuner_dir, "best_hparams.json")}))


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
