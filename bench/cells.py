"""The chapter's first exercise: GRU against LSTM, vanilla RNN and the book's scratch cell, on the book's protocol.

    python -m bench.cells [--epochs 100] [--cells gru lstm rnn scratch]
d2l split of The Time Machine, 2 layers, batch 1024, SGD lr 2, clip 1 (the book's deep GRU recipe, kept
for every cell), each cell at the book's width (32) and at the width whose parameter count is closest
to the 2 × 32 GRU's. Every run is a whole `trainer.train` process; writes bench/results/cells.json and
cells.png (validation perplexity per epoch, all runs on one plot).
"""
from __future__ import annotations

import argparse
import os
import tempfile

from bench.common import ROOT, emit, train_process
from common import cli
from common.book import BOOK_REFERENCE
from pipeline import transform
from pipeline.preprocessing import preprocess

BOOK_WIDTH, LAYERS = 32, 2


def parameter_count(cell: str, width: int, vocab_size: int) -> int:
    from trainer.config import TrainConfig
    from trainer.model import build_model
    from trainer.training import model_config_for

    cfg = TrainConfig.from_flat(cell=cell, num_layers=LAYERS, num_hiddens=width, form="stacked")
    return int(build_model(model_config_for(cfg, vocab_size)).count_params())


def equal_parameter_width(cell: str, target: int, vocab_size: int) -> int:
    """The width whose 2-layer model has the parameter count closest to `target` (counts grow with width)."""
    low, high = 1, 1024
    while high - low > 1:  # smallest width with count >= target lies in (low, high]
        mid = (low + high) // 2
        low, high = (mid, high) if parameter_count(cell, mid, vocab_size) < target else (low, mid)
    return min((low, high), key=lambda w: abs(parameter_count(cell, w, vocab_size) - target))


def plot(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.plots import plain_log_ticks

    fig, ax = plt.subplots(figsize=(8, 5))
    values = []
    for run in runs:
        epochs = [int(r["epoch"]) + 1 for r in run["history"]]
        ppl = [r["val_perplexity"] for r in run["history"]]
        values += ppl
        ax.plot(epochs, ppl, label=f"{run['cell']} {LAYERS} × {run['width']} ({run['num_params']:,} params)",
                linestyle="-" if run["width"] == BOOK_WIDTH else "--")
    ax.axhline(BOOK_REFERENCE["val_ppl"], color="grey", linestyle=":",
               label=f"book's GRU ({BOOK_REFERENCE['val_ppl']})")
    ax.set_yscale("log")
    ticks = plain_log_ticks(values + [BOOK_REFERENCE["val_ppl"]])
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Cells on the book's protocol (The Time Machine, d2l split, SGD lr 2)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter,
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--epochs", type=int, default=100, help="epochs per run (the book ran 100)")
    parser.add_argument("--cells", nargs="+", default=["gru", "lstm", "rnn", "scratch"],
                        choices=("gru", "lstm", "rnn", "scratch"), help="cells to compare")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    work = tempfile.mkdtemp(prefix="bench-cells-")
    data_dir = os.path.join(work, "data")
    meta = preprocess(["timemachine"], data_dir, transform.PreprocessConfig(split="d2l"))
    target = parameter_count("gru", BOOK_WIDTH, meta["vocab_size"])
    plan = [(cell, BOOK_WIDTH) for cell in args.cells]
    plan += [(cell, w) for cell in args.cells
             if (w := equal_parameter_width(cell, target, meta["vocab_size"])) != BOOK_WIDTH]
    runs = []
    for cell, width in plan:
        model_dir = os.path.join(work, f"{cell}-{width}")
        result = train_process(data_dir, model_dir, "--cell", cell, "--num-layers", str(LAYERS),
                               "--num-hiddens", str(width), "--epochs", str(args.epochs))
        runs.append({"cell": cell, "width": width, "num_params": result["num_params"],
                     "sizing": "book width" if width == BOOK_WIDTH else "equal parameters",
                     "val_ppl": result["val_ppl"], "best_val_ppl": result["best_val_ppl"],
                     "best_epoch": result["best_epoch"], "train_ppl": result["train_ppl"],
                     "train_tokens_per_s": result["train_tokens_per_s"], "process_wall_s": result["process_wall_s"],
                     "form": result["form"], "sample": result["sample"], "history": result["history"]})
        print(f"{cell} {LAYERS} × {width}: best val perplexity {result['best_val_ppl']:.2f}, "
              f"{result['train_tokens_per_s']:,.0f} tokens/s, {result['process_wall_s']:.0f} s", flush=True)
    plot(runs, str(ROOT / "bench" / "results" / "cells.png"))
    emit("cells", {"protocol": f"The Time Machine, d2l split, {LAYERS} layers, batch 1024, SGD lr 2, clip 1, "
                               f"{args.epochs} epochs", "gru_2x32_params": target, "plot": "results/cells.png",
                   "runs": [{k: v for k, v in r.items() if k != "history"} | {
                       "val_ppl_by_epoch": [h["val_perplexity"] for h in r["history"]]} for r in runs]})


if __name__ == "__main__":
    main()
