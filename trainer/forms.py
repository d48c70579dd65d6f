"""Which model form `--backend-form auto` takes, from bench.forms' measurements (forms_table.json, package data).

The file keeps each CPU's rows apart (a row's `cpu`: model name and the instruction sets that change which
form wins), since the fastest form on one CPU need not be the fastest on another; auto reads this CPU's rows
where bench.forms has run on it, else the closest CPU's. No TensorFlow here: bench.run_all's report applies the same
rule to mark the rows it shows.
"""
from __future__ import annotations

import functools
import json
import math
import os

FORMS_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "forms_table.json")
# instruction sets that decide between the CPU forms: AVX-512 kernels, bfloat16 dot products, AMX tiles
DECIDING_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16")
SPEED_TIE = 0.05  # steady speeds this close are a tie: about the spread of one row between two bench.forms runs


def cpu_signature(cpuinfo: str = "/proc/cpuinfo") -> str:
    """This CPU as bench.forms rows record it: 'model name [flags]', with the DECIDING_FLAGS it has
    (e.g. 'Intel(R) Xeon(R) Processor [avx512f avx512_bf16 amx_bf16]'); '' where /proc/cpuinfo is missing."""
    try:
        with open(cpuinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    first = lambda key: next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), "")  # noqa: E731
    flags = set(first("flags").split())
    return f"{first('model name')} [{' '.join(f for f in DECIDING_FLAGS if f in flags)}]"


@functools.cache
def _this_cpu() -> str:
    return cpu_signature()  # read once a process: the CPU does not change


def _flags(signature: str) -> set[str]:
    return set(signature.rpartition("[")[2].rstrip("]").split()) if "[" in signature else set()


def rows_for_this_machine(rows: list[dict], device: str, cpu: str | None = None) -> list[dict]:
    """The rows of `device`; on a CPU, one CPU's rows (speeds of two machines do not compare): this CPU's
    where bench.forms has run on it, else those of the CPU with the most deciding instruction sets in
    common with this one (then the most rows)."""
    rows = [r for r in rows if r.get("device") == device]
    if device != "CPU" or not rows:
        return rows
    cpu = _this_cpu() if cpu is None else cpu
    by_cpu: dict[str, list[dict]] = {}
    for r in rows:
        by_cpu.setdefault(r.get("cpu", ""), []).append(r)
    if cpu in by_cpu:
        return by_cpu[cpu]
    mine = _flags(cpu)
    closest = max(by_cpu, key=lambda other: (-len(mine ^ _flags(other)), len(by_cpu[other])))
    return by_cpu[closest]


def measured_form(cell: str, num_hiddens: int, device: str, mixed_precision: bool = False,
                  path: str | None = None, cpu: str | None = None) -> str | None:
    """The fastest form bench.forms measured for this cell and device (on a CPU: this CPU's rows, where it
    has any: rows_for_this_machine) at the nearest width, or None.

    Forms within SPEED_TIE of the fastest steady speed are a tie, won by the one whose first step (graph
    tracing and building) took least: seconds every run pays once (the fused form's unrolled graph takes
    ~8 s to build for the book's GRU, the native form's ~1 s, at the same steady speed)."""
    try:
        with open(path or FORMS_RESULTS) as f:
            rows = json.load(f).get("rows", [])
    except (OSError, ValueError):
        return None
    precision = "mixed" if mixed_precision else "float32"
    rows = [r for r in rows_for_this_machine(rows, device, cpu)
            if r.get("cell") == cell and r.get("precision", "float32") == precision]
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
