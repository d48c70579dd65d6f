"""How far the tuned model gets with more than the budget, and how close to this CPU's limit it trains.

    python -m bench.tune_ceiling [--epochs-factor 2] [--dropouts 0.2 0.35 0.5]
Takes the architecture and recipe bench.tune chose (bench/results/tune.json: final_training) and trains it
on the same data for --epochs-factor times the epochs the 20-minute budget allowed, with no time limit,
once per dropout rate (default: the tuned rate, 0.35 and 0.5; more dropout fights the overfitting, but
learns more slowly). Epoch-limited, so the perplexities do not depend on what else this machine was doing.
Trains with carried state when bench.tune did (--stateful). Reports each run's best validation perplexity
over windows and over the full-context streams (the measure of the 25 % target), perplexity by context, the
perplexity the target asks for, and the compute side: the training rate in GFLOP/s of matrix products against this CPU's own
dense float32 matmul rate through TensorFlow.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from pipeline import cli
from bench.common import ROOT, emit, matmul_gflops, training_flops_per_token
from bench.tune import context_profile
from pipeline import transform
from pipeline.preprocess import preprocess

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter,
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--epochs-factor", type=float, default=2.0, help="epochs of each long run, as a multiple of the tuned run's")
    parser.add_argument("--dropouts", type=float, nargs="+", default=None,
                        help="dropout rates to train (default: the tuned one, 0.35 and 0.5)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.epochs_factor <= 0:
        parser.error("--epochs-factor must be > 0")
    if args.dropouts and not all(0 <= d < 1 for d in args.dropouts):
        parser.error("--dropouts must be in [0, 1)")
    from trainer.config import TrainConfig
    from trainer.data import load_data_info
    from trainer.train import train_and_evaluate
    from trainer.tune import HPARAM_KEYS, SHARED_REGULARISERS

    path = ROOT / "bench" / "results" / "tune.json"
    if not path.exists():
        parser.error(f"{path}: not found; run python -m bench.tune first")
    tuned = json.loads(path.read_text())
    final = tuned.get("final_training")
    if not final:
        parser.error("bench/results/tune.json has no final_training: run python -m bench.tune first")
    space = tuned["search_space"]
    stride = int(tuned["data"].rsplit("windows every ", 1)[1].split()[0])
    dropouts = args.dropouts or sorted({final["dropout"], 0.35, 0.5})
    work = tempfile.mkdtemp()
    data = os.path.join(work, "data")
    preprocess(["timemachine"], data, transform.PreprocessConfig(split="holdout", stride=stride))
    vocab_size = load_data_info(data).vocab_size
    peak = matmul_gflops()  # measured first, on a quiet machine
    epochs = int(round(final["epochs"] * args.epochs_factor))
    flops = training_flops_per_token(final["cell"], final["num_layers"], final["num_hiddens"], vocab_size)
    # tune.json from before weight drop (or the activation regularisers) lacks them
    recipe = {k: final[k] for k in (*HPARAM_KEYS, *SHARED_REGULARISERS) if k in final}
    # the winner's lr schedule, over the epochs here instead of a deadline (older tune.json: plateau halving)
    schedule = tuned.get("final_schedule") or {"reduce_lr_patience": space.get("reduce_lr_patience", 2)}
    runs = []
    for dropout in dropouts:
        cfg = TrainConfig(**{**recipe, "dropout": dropout, **schedule},
                          batch_size=space["batch_size"], epochs=epochs, steps_per_epoch=space["steps_per_epoch"],
                          stateful=bool(tuned.get("stateful")), mixed_precision=bool(space.get("mixed_precision")),
                          verbose=0)
        model_dir = os.path.join(work, f"dropout_{dropout}")
        metrics = train_and_evaluate(cfg, data, model_dir)
        runs.append({"dropout": dropout, "epochs": metrics["epochs"], "wall_s": metrics["wall_s"],
                     "best_val_ppl": metrics["best_val_ppl"], "best_epoch": metrics["best_epoch"],
                     "val_ppl": metrics["val_ppl"], "train_ppl": metrics["train_ppl"],
                     "best_val_stream_ppl": metrics["best_val_stream_ppl"], "val_stream_ppl": metrics["val_stream_ppl"],
                     "train_tokens_per_s": metrics["train_tokens_per_s_steady"],
                     "val_ppl_by_context": context_profile(model_dir, data)})
    baseline = tuned["baseline_2x32_gru"]
    target = 0.75 * baseline["best_val_ppl"]
    stream_target = 0.75 * baseline["best_val_stream_ppl"]  # the 25 % target's measure: full context
    best = min(runs, key=lambda r: r["best_val_stream_ppl"])
    tokens_per_s = sorted(r["train_tokens_per_s"] for r in runs)[len(runs) // 2]
    emit("tune_ceiling", {
        "data": tuned["data"], "hparams": {k: v for k, v in recipe.items() if k != "dropout"},
        "batch_size": space["batch_size"], "steps_per_epoch": space["steps_per_epoch"],
        "stateful": bool(tuned.get("stateful")), "schedule": schedule,
        "epochs_in_budget": final["epochs"], "epochs_factor": args.epochs_factor, "runs": runs,
        "best_val_ppl": min(r["best_val_ppl"] for r in runs), "best_dropout": best["dropout"],
        "budget_val_ppl": tuned["tuned_val_ppl"], "target_val_ppl": target,
        "best_val_stream_ppl": best["best_val_stream_ppl"], "budget_val_stream_ppl": tuned["tuned_val_stream_ppl"],
        "baseline_val_stream_ppl": baseline["best_val_stream_ppl"], "target_val_stream_ppl": stream_target,
        "target_reached": bool(best["best_val_stream_ppl"] <= stream_target),
        "compute": {"training_gflop_per_token": flops / 1e9, "train_tokens_per_s": tokens_per_s,
                    "training_gflops": flops * tokens_per_s / 1e9, "matmul_gflops_1024": peak,
                    "share_of_matmul_rate": flops * tokens_per_s / 1e9 / peak}})


if __name__ == "__main__":
    main()
