"""Character-level tinyshakespeare within a wall-clock budget, next to nanoGPT's published figures.

    python -m bench.shakespeare [--minutes 30] [--cell gru --num-layers 2 --num-hiddens 384 ...]
A fixed recipe, not a search: the characters as they are (no normalisation), nanoGPT's split (the
first 90 % trains, the last 10 % validates), a stateful GRU (trainer.train --stateful: truncated BPTT over
contiguous lanes), AdamW with a warm-up and a cosine decay sized to the budget. Everything counts against
--minutes: preprocessing, a short calibration run that measures this machine's training speed (it sizes
the schedule), training, the final evaluation and the sample. The figure is the validation loss in nats
per character over the whole validation stream with the state carried (the trainer's
val_stream_perplexity of the kept epoch). Writes bench/results/shakespeare.json; the last line of stdout
is the same JSON on one line. nanoGPT's character transformer: 1.4697 nats on an A100 (~3 min), ~1.88 with
its CPU configuration.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

from bench.common import ROOT, SHARED_DATA, emit, train_process
from common import cli
from pipeline import transform
from pipeline.preprocessing import preprocess

NANOGPT = {"gpu_val_loss_nats": 1.4697, "cpu_val_loss_nats": 1.88}
SAMPLE_PROMPT = "ROMEO:\n"
RESERVE_MIN = 1.5  # kept back from training for the final evaluation, the sample and process start-ups


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.shakespeare", description=__doc__.split("\n")[0],
                                formatter_class=cli.HelpFormatter, epilog=cli.examples_from(__doc__))
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget for everything")
    p.add_argument("--corpus", default=str(SHARED_DATA / "tinyshakespeare.txt"), help="the text to model")
    p.add_argument("--cell", default="gru", choices=("gru", "lstm"), help="recurrent cell")
    p.add_argument("--num-layers", type=int, default=2, help="stacked recurrent layers")
    p.add_argument("--num-hiddens", type=int, default=384, help="units per layer")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout between layers and before the output")
    p.add_argument("--num-steps", type=int, default=128, help="truncated BPTT length")
    p.add_argument("--batch-size", type=int, default=64, help="lanes")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW's peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's decoupled weight decay")
    p.add_argument("--epochs", type=int, default=8, help="validation points (the budget's steps split evenly)")
    p.add_argument("--sample-chars", type=int, default=500, help="characters sampled after the prompt")
    p.add_argument("--workdir", help="keep data and models here (default: a temporary directory)")
    return p


def recipe_flags(args, steps_per_epoch: int, epochs: int, warmup: int) -> list[str]:
    return ["--stateful", "--cell", args.cell, "--num-layers", str(args.num_layers),
            "--num-hiddens", str(args.num_hiddens), "--dropout", str(args.dropout),
            "--batch-size", str(args.batch_size), "--optimizer", "adamw", "--lr", str(args.lr),
            "--weight-decay", str(args.weight_decay), "--clip-norm", "1", "--lr-schedule", "warmup_cosine",
            "--warmup-steps", str(warmup), "--steps-per-epoch", str(steps_per_epoch), "--epochs", str(epochs)]


def plan_steps(tokens_per_s: float, train_minutes: float, batch_tokens: int, epochs: int) -> tuple[int, int]:
    """(steps per epoch, warm-up steps) so that `epochs` epochs of steps fill train_minutes at tokens_per_s."""
    total = max(epochs, int(tokens_per_s * 60 * train_minutes / batch_tokens))
    return max(1, total // epochs), max(1, total // 50)


def sample_text(model_dir: str, prompt: str, num_chars: int) -> str:
    """num_chars characters drawn at temperature 0.8 (seed 0) through the trainer's own TextModel."""
    import tensorflow as tf

    from serving.savedmodel import load_trained
    from trainer.generate import TextModel

    model, vocab, run_config = load_trained(model_dir)
    text_model = TextModel(model, vocab, run_config["normalize"], run_config["tokenizer"])
    out = text_model.sample(tf.constant([prompt]), num_chars, tf.constant(0.8), tf.constant(0, tf.int32),
                            tf.constant(0, tf.int64))
    return out["text"][0].numpy().decode("utf-8", "replace")


def run(args) -> dict:
    started = time.perf_counter()
    deadline = started + 60 * args.minutes
    work = args.workdir or tempfile.mkdtemp(prefix="bench-shakespeare-")
    data = os.path.join(work, "data")
    preprocess([args.corpus], data, transform.PreprocessConfig(
        normalize="none", tokenizer="char", num_steps=args.num_steps, stride=args.num_steps, split="holdout",
        valid_fraction=0.1))
    preprocess_s = time.perf_counter() - started

    batch_tokens = args.batch_size * args.num_steps
    calibration = train_process(data, os.path.join(work, "calibration"),
                                *recipe_flags(args, steps_per_epoch=12, epochs=2, warmup=1))
    tokens_per_s = calibration["train_tokens_per_s_steady"]
    train_minutes = (deadline - time.perf_counter()) / 60 - RESERVE_MIN
    if train_minutes <= 0:
        raise SystemExit(f"--minutes {args.minutes} leaves no time to train after preprocessing and calibration")
    steps_per_epoch, warmup = plan_steps(tokens_per_s, train_minutes, batch_tokens, args.epochs)
    model_dir = os.path.join(work, "model")
    metrics = train_process(data, model_dir, *recipe_flags(args, steps_per_epoch, args.epochs, warmup),
                            "--time-limit-min", f"{train_minutes:.3f}")
    sample = sample_text(model_dir, SAMPLE_PROMPT, args.sample_chars)
    minutes = (time.perf_counter() - started) / 60
    curve = [{"epoch": int(r["epoch"]) + 1, "train_nats": math.log(r["perplexity"]),
              "val_window_nats": math.log(r["val_perplexity"]),
              "val_stream_nats": math.log(r["val_stream_perplexity"]), "learning_rate": r.get("learning_rate"),
              "grad_norm": r.get("grad_norm")} for r in metrics["history"]]
    return {
        "val_loss_nats": math.log(metrics["best_val_stream_ppl"]),
        "minutes": minutes,
        "model": f"{args.num_layers} × {args.num_hiddens} {args.cell.upper()}, stateful (TBPTT {args.num_steps}, "
                 f"{args.batch_size} lanes), dropout {args.dropout}, AdamW lr {args.lr} wd {args.weight_decay}, "
                 f"warm-up + cosine, {metrics['num_params']:,} parameters, form {metrics['form']}",
        "tokens_per_s": metrics["train_tokens_per_s"],
        "sample": sample,
        "recipe": "fixed (no search)", "target_nats": 1.50, "reached": math.log(metrics["best_val_stream_ppl"]) <= 1.50,
        "val_window_nats": math.log(metrics["best_val_ppl"]), "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs"], "num_steps": args.num_steps, "planned_steps": steps_per_epoch * args.epochs,
        "trained_tokens": int(metrics["train_tokens_per_s"] * metrics["train_seconds"]),
        "calibration_tokens_per_s": tokens_per_s, "preprocess_s": preprocess_s,
        "budget_minutes": args.minutes, "curve": curve, "sample_prompt": SAMPLE_PROMPT, "nanogpt": NANOGPT,
    }


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    cli.quiet_tensorflow()
    result = run(args)
    emit("shakespeare", result)
    print(json.dumps({"benchmark": "shakespeare", **result}, separators=(",", ":")))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
