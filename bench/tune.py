"""Tuning within a wall-clock budget against the book's 2 × 32 GRU trained for the same time.

    python -m bench.tune [--budget-min 20] [--search-fraction 0.4] [--max-layers 3 --max-hiddens 256]
Full Time Machine, holdout split (the last 10 % of the text validates). Target: the tuned model's validation
perplexity at least 25 % below the baseline's. The budget covers what a user runs: the search
(`trainer.tune --time-budget`) for a share of it, then `trainer.train --hparams best_hparams.json` for the
rest (`make pipeline TUNE=1` does the same two stages). The baseline gets the whole wall time of both.
Both sides read the same windows, started every --stride tokens (the book also trains on overlapping
windows). The tuned side draws each epoch from them (`--steps-per-epoch`: a fixed epoch size, so early
stopping and lr patience keep their meaning), uses Adam, batch 128, AWD-LSTM's activation regularisers
(--ar 2 --tar 1), its embedding dropout (--input-dropout 0.1) and weight averaging (--ema 0.998); each trial
runs at most --trial-minutes (one slow point cannot take the search) and anneals its rate over them
(--trial-schedule cosine; plateau: lr halving). The
search tries bench/tune_start.json first (a 3 × 128 LSTM, the best point earlier runs of this bench found on
this data; `--start-with` with no file leaves every point to the oracle). The winner's training anneals its
rate by the clock (`--lr-schedule warmup_cosine` under `--time-limit-min`: cosine decay to lr / 10 at the
deadline; `--final-schedule plateau` keeps the halving) and validates every --validation-freq epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from bench.common import ROOT, emit
from common import cli
from common.cli import UserError
from pipeline import transform
from pipeline.preprocessing import preprocess

# the best point earlier runs of the search found (a 3 × 128 LSTM)
START_POINT = ROOT / "bench" / "tune_start.json"


def context_profile(model_dir: str, data_dir: str) -> dict:
    """Validation perplexity by how many characters of context a window position has (windows start
    from a zero state), for the saved model (its best epoch)."""
    import math

    from serving.savedmodel import load_trained
    from trainer.data import load_data_info, make_dataset
    from trainer.metrics import perplexity_by_position

    model, _, _ = load_trained(model_dir)
    info = load_data_info(data_dir)
    by_position = perplexity_by_position(model, make_dataset(info.valid_files, info.num_steps, 256, shuffle=False))

    def mean_ppl(lo: int, hi: int) -> float:  # context lengths lo..hi, 1-based
        logs = [math.log(p) for p in by_position[lo - 1:hi]]
        return math.exp(sum(logs) / len(logs))

    n = len(by_position)
    return {"context_1": by_position[0], "context_2_4": mean_ppl(2, 4), "context_5_16": mean_ppl(5, 16),
            f"context_17_{n}": mean_ppl(17, n), "all": mean_ppl(1, n)}


def read_trials(path: str, start_points: int) -> list[dict]:
    """trainer.tune's trials.csv as the report shows it: each trial's point, epochs, score and time, and
    whether it was a --start-with point (a fresh search runs those first)."""
    import csv

    keep = ("trial_id", "num_layers", "num_hiddens", "cell", "dropout", "weight_drop", "lr", "epochs",
            "val_perplexity", "wall_s")
    with open(path) as f:
        return [{**{k: row[k] for k in keep}, "start": i < start_points} for i, row in enumerate(csv.DictReader(f))]


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The tuned side's data and training recipe (everything but the search)."""
    parser.add_argument("--reduce-lr-patience", type=int, default=2,
                        help="halve a trial's lr after this many epochs without improvement")
    parser.add_argument("--stride", type=int, default=4, help="window stride in tokens (num_steps: no overlap)")
    parser.add_argument("--batch-size", type=int, default=128, help="windows per step")
    parser.add_argument("--stateful", action="store_true",
                        help="search and train the tuned side with carried state (trainer.tune/train --stateful), "
                             "trials scored by stream perplexity; the book's 2 x 32 GRU stays as the book trains it")
    parser.add_argument("--input-dropout", type=float, default=0.1,
                        help="input dropout of the tuned side, trials and winner (trainer.train --input-dropout; "
                             "AWD-LSTM's embedding dropout 0.1)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="the tuned side, trials and winner, in mixed precision (trainer.tune/train "
                             "--mixed-precision: bfloat16 on CPU, the native kernels' products on AMX or AVX512_BF16)")
    parser.add_argument("--ar", type=float, default=2.0,
                        help="activation regularisation of the tuned side (trials and winner; AWD-LSTM's 2)")
    parser.add_argument("--tar", type=float, default=1.0,
                        help="temporal activation regularisation of the tuned side (AWD-LSTM's 1)")
    parser.add_argument("--ema", type=float, default=0.998,
                        help="weight averaging of the tuned side, trials and winner (trainer.train --ema; 0: off)")
    parser.add_argument("--final-schedule", choices=("cosine", "plateau"), default="cosine",
                        help="the winner's lr: warm-up then cosine decay to lr / 10 at the deadline, or the trials' "
                             "halving on plateaus")
    parser.add_argument("--validation-freq", type=int, default=5,
                        help="the winner's training validates every N epochs and at the deadline (trainer.train "
                             "--validation-freq; a validation costs about 40 %% of an epoch's steps here); trials "
                             "validate every epoch")
    parser.add_argument("--warmup-steps", type=int, default=100, help="warm-up steps of the cosine schedule")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter,
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--budget-min", type=float, default=20.0, help="minutes for search plus final training")
    parser.add_argument("--search-fraction", type=float, default=0.4,
                        help="share of the budget for the search; the rest trains the winner")
    parser.add_argument("--max-layers", type=int, default=3, help="most recurrent layers searched")
    parser.add_argument("--min-hiddens", type=int, default=64, help="narrowest layer searched")
    parser.add_argument("--max-hiddens", type=int, default=256,
                        help="bench.tune's 3 × 256 GRU ran 42 epochs in 722 s here; 3 × 512 is 4× the work")
    parser.add_argument("--max-epochs", type=int, default=40, help="epochs of the longest trial")
    parser.add_argument("--early-stopping", type=int, default=4,
                        help="end a trial after this many epochs without improvement")
    parser.add_argument("--optimizers", nargs="+", default=["adam"], help="optimizers searched")
    parser.add_argument("--tuner", default="bayesian", help="KerasTuner oracle: hyperband, random or bayesian")
    parser.add_argument("--trial-minutes", type=float, default=1.5,
                        help="minutes a trial may train (trainer.tune --trial-minutes): a slow point cannot take "
                             "the whole search")
    parser.add_argument("--trial-schedule", choices=("cosine", "plateau"), default="cosine",
                        help="each trial's lr: warm-up then cosine decay to lr / 10 at its --trial-minutes limit "
                             "(trainer.tune --lr-schedule warmup_cosine, as the winner anneals by the deadline), "
                             "or halving on plateaus (--reduce-lr-patience)")
    add_recipe_arguments(parser)
    parser.add_argument("--start-with", nargs="*", default=[str(START_POINT)], metavar="JSON",
                        help="points the search tries first, in order (trainer.tune --start-with); default: "
                             "bench/tune_start.json, the best point earlier runs of this bench found; none: the "
                             "oracle's points only")
    return parser


def recipe(args, trial_schedule: str = "cosine") -> tuple:
    """(base TrainConfig of the trials, the trials' lr schedule, the winner's schedule) from the recipe flags and
    bench.tune's --trial-schedule, checked by TrainConfig before any work: a bad value exits 2 in one line."""
    from trainer.config import TrainConfig

    cosine = {"lr_schedule": "warmup_cosine", "warmup_steps": args.warmup_steps, "reduce_lr_patience": 0}
    plateau = {"lr_schedule": "constant", "warmup_steps": 0, "reduce_lr_patience": args.reduce_lr_patience}
    trials = cosine if trial_schedule == "cosine" else plateau
    final_schedule = {**(cosine if args.final_schedule == "cosine" else plateau),
                      "validation_freq": args.validation_freq}
    try:
        base = TrainConfig.from_flat(batch_size=args.batch_size, progress="none", stateful=args.stateful, ar=args.ar,
                                     tar=args.tar,
                           ema=args.ema, input_dropout=args.input_dropout, mixed_precision=args.mixed_precision,
                           **trials)
        base.replace(**final_schedule)  # the winner's settings too
    except ValueError as err:
        raise UserError(str(err)) from None
    return base, trials, final_schedule


def prepare_data(work: str, args) -> tuple:
    """The Time Machine, holdout split, windows every --stride tokens, under work/data; returns (data dir,
    preprocessing config, steps per epoch: as many windows as one pass without overlap holds)."""
    from trainer.data import load_data_info

    data = os.path.join(work, "data")
    data_cfg = transform.PreprocessConfig(split="holdout", stride=args.stride)
    preprocess(["timemachine"], data, data_cfg)
    info = load_data_info(data)
    steps_per_epoch = max(1, info.num_train * data_cfg.window_stride // data_cfg.num_steps // args.batch_size)
    return data, data_cfg, steps_per_epoch


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.search_fraction <= 1:
        parser.error("--search-fraction must be in (0, 1]")
    from trainer.config import TrainConfig
    from trainer.search import (
        HPARAM_KEYS,
        SHARED_REGULARISERS,
        SearchConfig,
        SearchSpace,
        TuneConfig,
        read_start_point,
        tune,
    )
    from trainer.training import train_and_evaluate

    space = SearchSpace(min_layers=1, max_layers=args.max_layers, min_hiddens=args.min_hiddens,
                        max_hiddens=args.max_hiddens, optimizers=tuple(args.optimizers))
    start_points = [read_start_point(path, space) for path in args.start_with]  # a bad file: exit 2 before any work
    base, trial_schedule, final_schedule = recipe(args, args.trial_schedule)
    work = tempfile.mkdtemp()
    data, data_cfg, steps_per_epoch = prepare_data(work, args)
    base = base.replace(steps_per_epoch=steps_per_epoch)
    start = time.perf_counter()
    deadline = start + 60 * args.budget_min
    settings = SearchConfig(tuner=args.tuner, max_trials=1000, max_epochs=args.max_epochs,
                            time_budget=args.budget_min * args.search_fraction, early_stopping=args.early_stopping,
                            trial_minutes=args.trial_minutes)
    best = tune(data, os.path.join(work, "tuning"), TuneConfig(search=settings, space=space, base=base), start_points)
    search_s = time.perf_counter() - start
    final = None
    if deadline - time.perf_counter() > 30:
        with open(os.path.join(work, "tuning", "best_hparams.json")) as f:
            hparams = json.load(f)  # what `trainer.train --hparams` reads
        final = train_and_evaluate(base.replace(**hparams, **final_schedule, epochs=100000,
                                                time_limit_min=(deadline - time.perf_counter()) / 60),
                                   data, os.path.join(work, "final"))
    tuned_s = time.perf_counter() - start
    trial_rows = read_trials(os.path.join(work, "tuning", "trials.csv"), len(start_points))
    tuned_ppl = final["best_val_ppl"] if final else best["val_perplexity"]
    baseline = train_and_evaluate(TrainConfig.from_flat(epochs=100000, progress="none", time_limit_min=tuned_s / 60),
                                  data, os.path.join(work, "baseline"))
    emit("tune", {
        "data": f"timemachine, holdout split (last 10% of the text validates), num_steps {data_cfg.num_steps}, "
                f"windows every {data_cfg.window_stride} tokens",
        "budget_min": args.budget_min, "search_fraction": args.search_fraction,
        "search_wall_s": search_s, "tuned_wall_s": tuned_s,
        "search_space": {"layers": [1, args.max_layers], "hiddens": space.widths(), "cells": list(space.cells),
                         "optimizers": list(space.optimizers), "max_dropout": space.max_dropout,
                         "max_weight_drop": space.max_weight_drop,
                         "tuner": args.tuner, "max_epochs": args.max_epochs, "early_stopping": args.early_stopping,
                         "batch_size": args.batch_size, "steps_per_epoch": steps_per_epoch,
                         "trial_schedule": trial_schedule, "ar": args.ar, "tar": args.tar, "ema": args.ema,
                         "input_dropout": args.input_dropout, "mixed_precision": args.mixed_precision,
                         "trial_minutes": args.trial_minutes, "start_points": start_points},
        "search_best": {k: (float(v) if isinstance(v, float) else v) for k, v in best.items()},
        "trials": len(trial_rows),
        "trial_rows": trial_rows,
        "final_training": None if final is None else {
            **{k: final["hparams"][k] for k in (*HPARAM_KEYS, *SHARED_REGULARISERS)},
            **{k: float(final[k]) for k in ("val_ppl", "best_val_ppl", "best_val_stream_ppl", "epochs", "wall_s",
                                            "num_params", "best_epoch", "train_ppl")},
            "time_breakdown": final["time_breakdown"]},
        "final_schedule": final_schedule,
        "tuned_val_ppl": float(tuned_ppl),
        "stateful": args.stateful,
        "baseline_2x32_gru": {k: float(baseline[k]) for k in ("val_ppl", "best_val_ppl", "best_val_stream_ppl",
                                                              "epochs", "wall_s")},
        # full context (each validation stream scored with the state carried): what a served model sees
        "tuned_val_stream_ppl": float(final["best_val_stream_ppl"]) if final else None,
        "stream_relative_improvement": (float(1 - final["best_val_stream_ppl"] / baseline["best_val_stream_ppl"])
                                        if final else None),
        "val_ppl_by_context": {"tuned": context_profile(os.path.join(work, "final"), data) if final else None,
                               "baseline": context_profile(os.path.join(work, "baseline"), data)},
        "relative_improvement": float(1 - tuned_ppl / baseline["best_val_ppl"]),
        "target_25pct_met": bool(tuned_ppl <= 0.75 * baseline["best_val_ppl"])})


if __name__ == "__main__":
    cli.run_main(main)
