"""The book's own results: d2l 1.0.3's PyTorch code for the deep GRU (2 × 32, d2l split, 100 epochs), run on
this project's 2-core CPUs (DESIGN.md, reference figures). Reports, the pipeline summary and the benches
compare against these numbers, from here only."""
from __future__ import annotations

BOOK_REFERENCE = {"train_ppl": 4.11, "val_ppl": 6.41, "train_tokens_per_s": 0.34e6, "wall_s": 93,
                  "sample": "it has ext the time travel", "source": "d2l 1.0.3 PyTorch code on this CPU (DESIGN.md)"}
BOOK_WALL_S_BY_CPU = {"AMD": 93, "Intel": 84}  # the book's whole process on each kind of machine


def book_reference(cpu: str = "") -> dict:
    """The book's figures, with the wall time measured on the kind of CPU `cpu` names (AMD's when unknown)."""
    return {**BOOK_REFERENCE, "wall_s": next((s for k, s in BOOK_WALL_S_BY_CPU.items() if k in cpu),
                                             BOOK_REFERENCE["wall_s"])}
