"""The training curves a run draws (curves.png): perplexity per epoch on a log scale, with plain tick labels."""
from __future__ import annotations

import math
import os

from common import atomic
from trainer.config import ModelConfig

TICK_SERIES = (  # finest first: 1-2-3-4-5-6-7-8, then 1-1.5-2-3-5-7, then 1-2-5 per decade
    tuple(m * 10**e for e in range(-1, 5) for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8)),
    tuple(m * 10**e for e in range(-1, 5) for m in (1, 1.5, 2, 3, 5, 7)),
    tuple(m * 10**e for e in range(-1, 5) for m in (1, 2, 5)),
)


def plain_log_ticks(values: list[float], most: int = 8) -> list[float]:
    """Tick values for a log axis spanning `values`, to be labelled as plain numbers: the finest series of round
    numbers that puts 3 to `most` ticks in the range, else evenly spaced ones (a run that moved from 19.8 to
    16.6 gets 16.8, 17.6, 18.4, 19.2)."""
    from matplotlib.ticker import MaxNLocator

    if not values:
        return []
    low, high = min(values), max(values)
    for series in TICK_SERIES:
        ticks = [round(t, 6) for t in series if low <= t <= high]
        if 3 <= len(ticks) <= most:
            return ticks
    return [round(float(t), 6) for t in MaxNLocator(5).tick_values(low, high) if low <= t <= high]


def logged_series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(1-based epochs, values) of the history rows that logged `key`: a line through the validated epochs
    under --validation-freq, not points isolated between gaps."""
    rows = [r for r in history if key in r]
    return [int(r["epoch"]) + 1 for r in rows], [r[key] for r in rows]


def plot_curves(history: list[dict], path: str, title: str, book_reference: float | None = None) -> None:
    """Train and validation perplexity per epoch on a log axis labelled in plain numbers; the book's validation
    perplexity as a dashed line when the run's data is comparable (book_reference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    ax.plot(*logged_series(history, "perplexity"), label="train")
    ax.plot(*logged_series(history, "val_perplexity"), label="validation (windows)")
    stream_epochs, stream = logged_series(history, "val_stream_perplexity")
    if stream_epochs:
        ax.plot(stream_epochs, stream, label="validation (full context: state carried)")
    if book_reference:
        ax.axhline(book_reference, color="grey", linestyle="--", linewidth=1,
                   label=f"the book's 2 × 32 GRU, validation {book_reference}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("perplexity (log scale)")
    ax.set_yscale("log")
    shown = [v for r in history for v in (r["perplexity"], r.get("val_perplexity", math.nan),
                                          r.get("val_stream_perplexity", math.nan)) if math.isfinite(v)]
    ax.yaxis.set_major_locator(FixedLocator(plain_log_ticks(shown + ([book_reference] if book_reference else []))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))  # "20", not "2 × 10^1"
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic.replacing(path, ".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def curves_title(model_dir: str, model_cfg: ModelConfig, info) -> str:
    """'run default: 2 × 32 GRU on timemachine.txt (char, d2l normaliser)': what a plot shows, in its title."""
    run = os.path.basename(os.path.dirname(os.path.abspath(model_dir))) or model_dir
    names = [os.path.basename(path) for path in info.source_paths]
    data = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"run {run}: {model_cfg.num_layers} × {model_cfg.num_hiddens} {model_cfg.cell.upper()} on {data} "
            f"({info.tokenizer} tokens, {info.normalize} normaliser)")
