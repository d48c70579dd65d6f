"""Tuning within a wall-clock budget against the book's 2 × 32 GRU trained for the same time.

    python -m bench.tune [--budget-min 20] [--max-layers 3 --max-hiddens 512] [--stride N]
Full Time Machine, holdout split. Target: tuned validation perplexity at least 25 % below the baseline's.
The search is budget-aware: Adam only (SGD needs hundreds of epochs), batch 128 (more updates per epoch),
up to 40 epochs per trial with early stopping after 3 epochs without improvement, Bayesian optimisation.
`--stride N` starts windows every N tokens instead of every num_steps (each split's windows stay inside
it); both sides get the same data. Stride 4 makes every epoch 8× longer, so far fewer trials fit.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from bench.common import emit
from pipeline import transform
from pipeline.preprocess import preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-min", type=float, default=20.0)
    parser.add_argument("--max-layers", type=int, default=3)
    parser.add_argument("--min-hiddens", type=int, default=64)
    parser.add_argument("--max-hiddens", type=int, default=512)
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--early-stopping", type=int, default=3)
    parser.add_argument("--stride", type=int, default=None, help="holdout window stride (default num_steps)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizers", nargs="+", default=["adam"])
    parser.add_argument("--tuner", default="bayesian")
    args = parser.parse_args()
    from trainer.config import TrainConfig
    from trainer.train import train_and_evaluate
    from trainer.tune import SearchSpace, tune

    work = tempfile.mkdtemp()
    data = os.path.join(work, "data")
    data_cfg = transform.PreprocessConfig(split="holdout", stride=args.stride)
    preprocess(["timemachine"], data, data_cfg)
    start = time.perf_counter()
    space = SearchSpace(1, args.max_layers, args.min_hiddens, args.max_hiddens, optimizers=tuple(args.optimizers))
    best = tune(data, os.path.join(work, "tuning"), TrainConfig(batch_size=args.batch_size, verbose=0), space,
                args.tuner, max_trials=1000, max_epochs=args.max_epochs, time_budget_min=args.budget_min,
                early_stopping=args.early_stopping)
    tune_s = time.perf_counter() - start
    baseline = train_and_evaluate(TrainConfig(epochs=100000, verbose=0, time_limit_min=tune_s / 60),
                                  data, os.path.join(work, "baseline"))
    emit("tune", {
        "data": f"timemachine, holdout split (last 10% of the text validates), num_steps {data_cfg.num_steps}, "
                f"windows every {data_cfg.window_stride} tokens",
        "budget_min": args.budget_min, "tune_wall_s": tune_s,
        "search_space": {"layers": [1, args.max_layers], "hiddens": space.widths(), "cells": list(space.cells),
                         "optimizers": list(space.optimizers), "max_dropout": space.max_dropout,
                         "tuner": args.tuner, "max_epochs": args.max_epochs, "early_stopping": args.early_stopping,
                         "batch_size": args.batch_size},
        "best": {k: (float(v) if isinstance(v, float) else v) for k, v in best.items()},
        "trials": len(open(os.path.join(work, "tuning", "trials.csv")).read().splitlines()) - 1,
        "baseline_2x32_gru": {k: float(baseline[k]) for k in ("val_ppl", "best_val_ppl", "epochs", "wall_s")},
        "relative_improvement": float(1 - best["val_perplexity"] / baseline["best_val_ppl"]),
        "target_25pct_met": bool(best["val_perplexity"] <= 0.75 * baseline["best_val_ppl"])})


if __name__ == "__main__":
    main()
