"""How far the tuned model gets with more than the budget: the 25 % target seen from the other side.

    python -m bench.tune_ceiling [--epochs-factor 3]
Takes the architecture and recipe bench.tune chose (bench/results/tune.json: final_training) and trains it
on the same data for --epochs-factor times the epochs the 20-minute budget allowed, with no time limit.
Epoch-limited, so the figure does not depend on what else this machine was doing. Reports the best
validation perplexity, the perplexity by context, and the perplexity the 25 % target asks for.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from bench.common import ROOT, emit
from bench.tune import context_profile
from pipeline import transform
from pipeline.preprocess import preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs-factor", type=float, default=3.0)
    args = parser.parse_args()
    from trainer.config import TrainConfig
    from trainer.train import train_and_evaluate
    from trainer.tune import HPARAM_KEYS

    path = ROOT / "bench" / "results" / "tune.json"
    if not path.exists():
        parser.error(f"{path}: not found; run python -m bench.tune first")
    tuned = json.loads(path.read_text())
    final = tuned.get("final_training")
    if not final:
        parser.error("bench/results/tune.json has no final_training: run python -m bench.tune first")
    space = tuned["search_space"]
    stride = int(tuned["data"].rsplit("windows every ", 1)[1].split()[0])
    work = tempfile.mkdtemp()
    data = os.path.join(work, "data")
    preprocess(["timemachine"], data, transform.PreprocessConfig(split="holdout", stride=stride))
    epochs = int(round(final["epochs"] * args.epochs_factor))
    cfg = TrainConfig(**{k: final[k] for k in HPARAM_KEYS}, batch_size=space["batch_size"], epochs=epochs,
                      steps_per_epoch=space["steps_per_epoch"], reduce_lr_patience=space["reduce_lr_patience"],
                      verbose=0)
    metrics = train_and_evaluate(cfg, data, os.path.join(work, "model"))
    target = 0.75 * tuned["baseline_2x32_gru"]["best_val_ppl"]
    emit("tune_ceiling", {
        "data": tuned["data"], "hparams": cfg.hparams(), "epochs_in_budget": final["epochs"],
        "epochs": metrics["epochs"], "wall_s": metrics["wall_s"],
        "best_val_ppl": metrics["best_val_ppl"], "best_epoch": metrics["best_epoch"], "val_ppl": metrics["val_ppl"],
        "train_ppl": metrics["train_ppl"], "val_ppl_by_context": context_profile(os.path.join(work, "model"), data),
        "budget_val_ppl": tuned["tuned_val_ppl"], "target_val_ppl": target,
        "target_reached": bool(metrics["best_val_ppl"] <= target)})


if __name__ == "__main__":
    main()
