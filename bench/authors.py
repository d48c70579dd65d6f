"""The chapter's exercise on more books and mixed authors: one author, one author's two books, six books by five.

    python -m bench.authors [--epochs 12 --steps-per-epoch 100] [--num-hiddens 256]
Trains the same model with the same budget (epochs × steps of batch × window tokens) on The Time Machine
alone, on Wells (The Time Machine and The War of the Worlds) and on all six books (../shared/data/books,
Gutenberg licence text stripped), characters as they are (no normalisation), holdout split. Then every
model is evaluated by deep_rnn.evaluate on every book's validation part (the last 10 % of each book, which
no model trained on). Writes bench/results/authors.json and authors.png (a heatmap of perplexity).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter

from bench.common import ROOT, SHARED_DATA, emit, train_process
from common import cli
from common.vocab import read_vocab
from pipeline import transform
from pipeline.preprocessing import preprocess

VALID_FRACTION = 0.1
BOOKS = {  # short name → (author, file); The Time Machine is the named corpus the book uses
    "The Time Machine": ("Wells", None),
    "The War of the Worlds": ("Wells", "wells_war_of_the_worlds.txt"),
    "Frankenstein": ("Shelley", "shelley_frankenstein.txt"),
    "Sherlock Holmes": ("Doyle", "doyle_sherlock_holmes.txt"),
    "Jekyll and Hyde": ("Stevenson", "stevenson_jekyll_hyde.txt"),
    "Gulliver's Travels": ("Swift", "swift_gulliver.txt"),
}
TRAINING_SETS = {"The Time Machine": ["The Time Machine"],
                 "Wells (2 books)": ["The Time Machine", "The War of the Worlds"],
                 "all six books": list(BOOKS)}


def book_path(name: str) -> str:
    from pipeline.sources import fetch_named

    file = BOOKS[name][1]
    return fetch_named("timemachine") if file is None else str(SHARED_DATA / "books" / file)


def write_validation_parts(out_dir: str, cfg: transform.PreprocessConfig) -> dict[str, str]:
    """Each book's validation part (its last VALID_FRACTION, cut as the holdout split cuts it) as a file."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name in BOOKS:
        kept = "".join(v for k, v in transform.read_document(book_path(name), cfg, lambda p: open(p, "rb"))
                       if k == "chunk")
        path = os.path.join(out_dir, name.replace(" ", "_").replace("'", "") + ".txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(kept[transform.holdout_boundary(len(kept), VALID_FRACTION):])
        paths[name] = path
    return paths


def unknown_characters(vocab: list[str], path: str, top: int = 8) -> list[tuple[str, int]]:
    """The most frequent characters of a text that the vocabulary lacks."""
    with open(path, encoding="utf-8") as f:
        counts = Counter(ch for ch in f.read() if ch not in set(vocab))
    return counts.most_common(top)


def plot(table: dict, books: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(table)
    values = [[table[r][b] for b in books] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(books)), books, rotation=20, ha="right")
    ax.set_yticks(range(len(rows)), [f"trained on {r}" for r in rows])
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v > sum(row) / len(row) else "black")
    fig.colorbar(image, ax=ax, label="validation perplexity (characters)")
    ax.set_title("Each model on each book's held-out last 10 %")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter,
                                     epilog=cli.examples_from(__doc__))
    parser.add_argument("--epochs", type=int, default=12, help="epochs per model")
    parser.add_argument("--steps-per-epoch", type=int, default=100, help="batches per epoch (the same for every model)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per batch")
    parser.add_argument("--num-steps", type=int, default=64, help="characters per window")
    parser.add_argument("--cell", default="gru", choices=("gru", "lstm"), help="recurrent cell")
    parser.add_argument("--num-layers", type=int, default=2, help="layers")
    parser.add_argument("--num-hiddens", type=int, default=256, help="units per layer")
    parser.add_argument("--dropout", type=float, default=0.2, help="dropout between layers and before the output")
    return parser


def main() -> None:
    from deep_rnn.evaluation import evaluate

    args = build_parser().parse_args()
    work = tempfile.mkdtemp(prefix="bench-authors-")
    cfg = transform.PreprocessConfig(normalize="none", num_steps=args.num_steps, valid_fraction=VALID_FRACTION)
    valid_paths = write_validation_parts(os.path.join(work, "valid"), cfg)
    budget_tokens = args.epochs * args.steps_per_epoch * args.batch_size * args.num_steps
    models, table = {}, {}
    for set_name, books in TRAINING_SETS.items():
        data_dir, model_dir = (os.path.join(work, set_name.replace(" ", "_"), d) for d in ("data", "model"))
        meta = preprocess([book_path(b) for b in books], data_dir, cfg)
        result = train_process(data_dir, model_dir, "--cell", args.cell, "--num-layers", str(args.num_layers),
                               "--num-hiddens", str(args.num_hiddens), "--dropout", str(args.dropout),
                               "--optimizer", "adam", "--lr", "0.003", "--batch-size", str(args.batch_size),
                               "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch))
        rows = evaluate([valid_paths[b] for b in BOOKS], model_dir=model_dir)
        by_book = dict(zip(BOOKS, rows))
        table[set_name] = {b: by_book[b]["perplexity"] for b in BOOKS}
        vocab = read_vocab(os.path.join(data_dir, "vocab.txt"))
        train_tokens = sum(transform.holdout_boundary(s["tokens"], VALID_FRACTION) for s in meta["sources"])
        authors = Counter()
        for book, source in zip(books, meta["sources"]):
            authors[BOOKS[book][0]] += source["tokens"]
        models[set_name] = {
            "books": books, "training_tokens": train_tokens, "vocab_size": meta["vocab_size"],
            "epochs_of_data_in_budget": budget_tokens / train_tokens,
            "author_share": {a: n / sum(authors.values()) for a, n in authors.items()},
            "best_val_ppl_own_split": result["best_val_ppl"], "best_epoch": result["best_epoch"],
            "train_ppl": result["train_ppl"], "process_wall_s": result["process_wall_s"],
            "train_tokens_per_s": result["train_tokens_per_s"], "num_params": result["num_params"],
            "evaluation": {b: {k: by_book[b][k] for k in ("perplexity", "bits_per_token", "unknown_rate", "tokens")}
                           for b in BOOKS},
            "unknown_characters": {b: unknown_characters(vocab, valid_paths[b]) for b in BOOKS
                                   if by_book[b]["unknown_rate"] > 0},
        }
        print(f"{set_name}: " + ", ".join(f"{b} {p:.2f}" for b, p in table[set_name].items()), flush=True)
    plot(table, list(BOOKS), str(ROOT / "bench" / "results" / "authors.png"))
    emit("authors", {"model": f"{args.cell.upper()} {args.num_layers} × {args.num_hiddens}, dropout {args.dropout}, "
                              f"Adam lr 0.003, batch {args.batch_size} × {args.num_steps} characters",
                     "budget": f"{args.epochs} epochs × {args.steps_per_epoch} steps = "
                               f"{args.epochs * args.steps_per_epoch} steps, "
                               f"{budget_tokens:,} training tokens per model",
                     "budget_tokens": budget_tokens, "epochs": args.epochs,
                     "data": "characters as they are (no normalisation), Gutenberg "
                     "header and footer stripped, holdout split (each book's last 10 % validates)",
                     "perplexity": table, "models": models, "plot": "results/authors.png"})


if __name__ == "__main__":
    main()
