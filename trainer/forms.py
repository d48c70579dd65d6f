"""Which model form `--backend-form auto` takes, from bench.forms' measurements (bench/results/forms.json).

No TensorFlow here: bench.run_all's report applies the same rule to mark the rows it shows.
"""
from __future__ import annotations

import json
import math
import os

FORMS_RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "bench", "results", "forms.json")
SPEED_TIE = 0.05  # steady speeds this close are a tie: about the spread of one row between two bench.forms runs


def measured_form(cell: str, num_hiddens: int, device: str, mixed_precision: bool = False,
                  path: str | None = None) -> str | None:
    """The fastest form bench.forms measured for this cell and device at the nearest width, or None.

    Forms within SPEED_TIE of the fastest steady speed are a tie, won by the one whose first step (graph
    tracing and building) took least: seconds every run pays once (the fused form's unrolled graph takes
    ~8 s to build for the book's GRU, the native form's ~1 s, at the same steady speed)."""
    try:
        with open(path or FORMS_RESULTS) as f:
            rows = json.load(f).get("rows", [])
    except (OSError, ValueError):
        return None
    precision = "mixed" if mixed_precision else "float32"
    rows = [r for r in rows if r.get("cell") == cell and r.get("device") == device
            and r.get("precision", "float32") == precision]
    if not rows:
        return None
    width = lambda r: int(r["size"].split("x")[1])  # noqa: E731
    nearest = min(rows, key=lambda r: abs(math.log(width(r) / num_hiddens)))
    return pick_form([r for r in rows if r["size"] == nearest["size"] and r.get("batch") == nearest.get("batch")])


def pick_form(rows: list[dict]) -> str:
    """The form auto takes from bench.forms rows of one cell, size and batch (see measured_form)."""
    fastest = max(r["train_tokens_per_s"] for r in rows)
    tied = [r for r in rows if r["train_tokens_per_s"] >= (1 - SPEED_TIE) * fastest]
    return min(tied, key=lambda r: (r.get("first_step_s", math.inf), -r["train_tokens_per_s"]))["form"]
