"""Training against the book: d2l split, deep GRU 2 × 32, 100 epochs; and a larger model's MFU.

    python -m bench.train_vs_d2l [--epochs 100] [--skip-large]
    python -m bench.train_vs_d2l --book reference   # DESIGN.md's figure instead of running the book's code
Both sides run as whole processes, back to back, in one run: the book's own PyTorch code (d2l 1.0.3,
bench/book/deep_gru.py in .venv-book, which `make book-venv` installs when missing), then `trainer.train`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench.common import ROOT, emit, machine, matmul_gflops, train_process, training_flops_per_token
from common import cli
from common.book import BOOK_REFERENCE, book_reference
from common.cli import UserError
from pipeline import transform
from pipeline.preprocessing import preprocess
from trainer.config import FORMS

BOOK_PYTHON = ROOT / ".venv-book" / "bin" / "python"
BOOK_SCRIPT = ROOT / "bench" / "book" / "deep_gru.py"


def book_process(epochs: int, plot: bool = False) -> dict:
    """Runs the book's own code for the deep GRU as a whole process (spawn to exit, what a user waits for) in
    the book's own environment, built first by `make book-venv` if needed; returns its JSON line (d2l's train
    and validation perplexity, the sample) with `process_wall_s`. d2l's loader finds the corpus in ../data
    (hash-checked there as here), seeded from this project's verified cache."""
    from pipeline.sources import fetch_named

    if not BOOK_PYTHON.exists():
        print("bench.train_vs_d2l: installing the book's environment into .venv-book (make book-venv: PyTorch, "
              "about 6 GB, once)", file=sys.stderr, flush=True)
    if subprocess.run(["make", "-s", "book-venv"], cwd=ROOT).returncode != 0:
        raise UserError("the book's environment could not be installed (make book-venv failed, above); "
                        "--book reference compares with DESIGN.md's figure instead")
    work = tempfile.mkdtemp(prefix="book-")
    os.makedirs(os.path.join(work, "data"))
    os.makedirs(os.path.join(work, "run"))
    shutil.copyfile(fetch_named("timemachine"), os.path.join(work, "data", "timemachine.txt"))
    command = [str(BOOK_PYTHON), str(BOOK_SCRIPT), "--epochs", str(epochs), *(["--plot"] if plot else [])]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=os.path.join(work, "run"), capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    wall = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise UserError(f"the book's code failed (exit {proc.returncode}, its stderr above)")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # d2l.TimeMachine's 10,000 training windows of 32 tokens an epoch, over fit's seconds (validation included,
    # as DESIGN.md's 0.34 M tokens/s)
    result["train_tokens_per_s"] = 10_000 * 32 * epochs / result["fit_s"]
    return {**result, "process_wall_s": wall,
            "source": "d2l 1.0.3 PyTorch code, run by this bench (bench/book/deep_gru.py)"}


def book_config(epochs: int) -> dict:
    from trainer.config import TrainConfig

    cfg = TrainConfig.from_flat(epochs=epochs, verbose=0)  # defaults are the book's deep GRU
    data_dir = tempfile.mkdtemp()
    preprocess(["timemachine"], os.path.join(data_dir, "data"), transform.PreprocessConfig(split="d2l"))
    return cfg, os.path.join(data_dir, "data"), os.path.join(data_dir, "model")


def shaped_matmul_gflops(m: int, k: int, n: int, count: int = 64, repeats: int = 30) -> float:
    """Best-case matmul rate at the recurrence's own shape ([m × k] · [k × n], independent products, so
    both cores can work at once): an upper bound on what the GRU's matmuls can achieve on this CPU."""
    import tensorflow as tf

    a, b = tf.random.normal((count, m, k)), tf.random.normal((k, n))
    fn = tf.function(lambda: [tf.matmul(a[i], b) for i in range(count)])
    fn()
    best = 0.0
    for _ in range(5):  # the best of five: a generous bound on a shared, noisy machine
        start = time.perf_counter()
        for _ in range(repeats):
            out = fn()
        out[-1].numpy()
        best = max(best, 2 * m * k * n * count * repeats / (time.perf_counter() - start) / 1e9)
    return best


def roofline(cfg, vocab: int) -> dict:
    """How many tokens/s the matmuls alone allow at the measured rate for the model's shapes."""
    flops = training_flops_per_token("gru", cfg.model.num_layers, cfg.model.num_hiddens, vocab)
    rate = shaped_matmul_gflops(cfg.run.batch_size, cfg.model.num_hiddens, 3 * cfg.model.num_hiddens)
    return {"train_flops_per_token": flops, "matmul_gflops_at_model_shape": rate,
            "max_tokens_per_s_matmul_bound": rate * 1e9 / flops,
            "gflops_needed_for_1.4M_tokens_per_s": 1.4e6 * flops / 1e9}


def large_model(steps: int = 8, batch: int = 64, num_steps: int = 64) -> dict:
    import tensorflow as tf

    from trainer.config import TrainConfig
    from trainer.data import load_data_info, make_dataset
    from trainer.model import build_model
    from trainer.training import compile_model, model_config_for

    work = tempfile.mkdtemp()
    preprocess([str(__import__("bench.common").common.SHARED_DATA / "tinyshakespeare.txt")],
               os.path.join(work, "data"), transform.PreprocessConfig(normalize="none", num_steps=num_steps))
    info = load_data_info(os.path.join(work, "data"))
    cfg = TrainConfig.from_flat(cell="lstm", num_layers=3, num_hiddens=512, batch_size=batch, optimizer="adam", lr=2e-3)
    model_cfg = model_config_for(cfg, info.vocab_size)  # the form auto picks for this CPU
    model = compile_model(build_model(model_cfg), cfg)
    batches = list(make_dataset(info.train_files, info.num_steps, batch, shuffle=False).take(steps + 2))
    for x, y in batches[:2]:  # trace and warm up
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for x, y in batches[2:]:
        loss = model.train_on_batch(x, y)
    float(loss[0] if isinstance(loss, list) else loss)  # wait for the last step
    seconds = time.perf_counter() - start
    tokens_per_s = steps * batch * num_steps / seconds
    flops = training_flops_per_token("lstm", 3, 512, info.vocab_size)
    peak = matmul_gflops(n=2048, seconds=2.0)
    return {"model": "3 x 512 LSTM, tinyshakespeare (char, no normalisation)", "vocab_size": info.vocab_size,
            "batch": batch, "num_steps": num_steps, "params": int(model.count_params()),
            "train_tokens_per_s": tokens_per_s, "train_flops_per_token": flops,
            "achieved_gflops": tokens_per_s * flops / 1e9, "matmul_peak_gflops": peak,
            "mfu": tokens_per_s * flops / 1e9 / peak, "form": model_cfg.form,
            "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter,
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--epochs", type=cli.positive_int, default=100,
                        help="epochs of the book's configuration (the book ran 100)")
    parser.add_argument("--skip-large", action="store_true", help="skip the larger model's throughput and MFU")
    parser.add_argument("--steps-per-execution", type=int, default=None, help="default: TrainConfig's")
    parser.add_argument("--large-only", action="store_true", help="print only the larger model's JSON line")
    parser.add_argument("--backend-form", default="auto", choices=("auto", *FORMS),
                        help="trainer.train's --backend-form (default auto)")
    parser.add_argument("--book", choices=("run", "reference"), default="run",
                        help="run: the book's own code as a process in this run (the ratio's numerator); "
                             "reference: DESIGN.md's figure for this kind of CPU, nothing run")
    parser.add_argument("--book-plot", action="store_true",
                        help="run the book's code with d2l's live plot on (its notebook figure, redrawn three "
                             "times an epoch; not training, so off by default)")
    parser.add_argument("--compare-forms", nargs="*", default=["stacked", "native", "layers"], choices=FORMS,
                        help="more forms run the same way (whole processes, one after the other) for the table of "
                             "where the time goes; none: only --backend-form")
    return parser


def where_time_goes(metrics: dict) -> dict:
    """A trainer process's wall time in parts (trainer.train's time_breakdown plus the interpreter's start
    and imports before train_and_evaluate), with its perplexities and form."""
    parts = {"start_s": metrics["process_wall_s"] - metrics["wall_s"], **metrics["time_breakdown"]}
    return {"form": metrics["form"], "process_wall_s": metrics["process_wall_s"], **parts,
            "best_val_ppl": metrics["best_val_ppl"], "val_ppl": metrics["val_ppl"],
            "train_tokens_per_s_steady": metrics["train_tokens_per_s_steady"]}


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.large_only:
        print(json.dumps(large_model()))
        return
    from trainer import native

    try:  # a first run of the native form compiles its kernels (`make kernels`): once per machine, not timed
        native.build()
    except native.NativeUnavailable:
        pass  # auto then picks another form, as trainer.train would
    cfg, data_dir, model_dir = book_config(args.epochs)
    if args.steps_per_execution:
        cfg = cfg.replace(steps_per_execution=args.steps_per_execution)
    book_run = book_process(args.epochs, args.book_plot) if args.book == "run" else None
    # A whole `python -m trainer.train` process, timed from spawn to exit: what a user waits for (start-up,
    # graph building, every epoch's evaluation, the sample and the saved artefacts all count).
    metrics = train_process(data_dir, model_dir, "--epochs", str(cfg.run.epochs), "--steps-per-execution",
                            str(cfg.run.steps_per_execution), "--backend-form", args.backend_form)
    process_wall_s = metrics["process_wall_s"]
    ours = {k: metrics[k] for k in ("train_ppl", "val_ppl", "best_val_ppl", "train_tokens_per_s",
                                    "train_tokens_per_s_steady", "train_seconds", "wall_s", "sample", "form",
                                    "epochs", "num_params")}
    ours["process_wall_s"] = process_wall_s
    ours["outside_training_s"] = process_wall_s - ours["train_seconds"]  # start-up, graph build, artefacts
    ours["steps_per_execution"] = cfg.run.steps_per_execution
    reference = book_reference(machine()["cpu"])  # DESIGN.md: the book's wall time on this kind of CPU
    book_wall_s = book_run["process_wall_s"] if book_run else reference["wall_s"]
    breakdown = [where_time_goes(metrics)]
    for form in args.compare_forms:
        if form != metrics["form"]:
            other = train_process(data_dir, f"{model_dir}-{form}", "--epochs", str(cfg.run.epochs),
                                  "--steps-per-execution", str(cfg.run.steps_per_execution), "--backend-form", form)
            breakdown.append(where_time_goes(other))
    for row in breakdown:
        row["wall_ratio_book_over_form"] = book_wall_s / row["process_wall_s"]
    result = {"book_config": ours, "book_run": book_run, "book_reference": reference, "where_time_goes": breakdown,
              "wall_ratio_book_over_ours": book_wall_s / process_wall_s,
              "wall_ratio_design_reference_over_ours": reference["wall_s"] / process_wall_s,
              "speedup_vs_book_tokens_per_s":
                  ours["train_tokens_per_s"] / (book_run or BOOK_REFERENCE)["train_tokens_per_s"],
              "targets": {"val_ppl_le_6.4_exported_best_epoch": ours["best_val_ppl"] <= 6.4,
                          "val_ppl_le_6.4_last_epoch": ours["val_ppl"] <= 6.4,
                          "tokens_per_s_ge_1.4M": ours["train_tokens_per_s"] >= 1.4e6}}
    result["roofline"] = roofline(cfg, len(open(os.path.join(data_dir, "vocab.txt")).read().splitlines()))
    if not args.skip_large:
        # A fresh process: the book run above fixed TF's thread pools at one thread per op, which suits
        # 32-unit matmuls but would handicap the 512-unit model and its peak measurement.
        proc = subprocess.run([sys.executable, "-m", "bench.train_vs_d2l", "--large-only"], cwd=ROOT,
                              capture_output=True, text=True, check=True)
        result["large_model"] = json.loads(proc.stdout.strip().splitlines()[-1])
    emit("train_vs_d2l", result)


if __name__ == "__main__":
    cli.run_main(main)
