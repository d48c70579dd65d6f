"""Shared helpers for benchmarks: machine description, shared corpora, JSON output."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEEP_RNN_SHARED_DATA", ROOT.parent / "shared" / "data"))
os.environ.setdefault("DEEP_RNN_SEED_DIR", str(SHARED_DATA))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = ""
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu or None, "python": platform.python_version(),
            "platform": platform.platform()}


def emit(name: str, result: dict) -> None:
    """Prints the result as one JSON object and stores it in bench/results/<name>.json."""
    result = {"benchmark": name, "machine": machine(), **result}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    sys.stdout.flush()


def train_process(data_dir: str, model_dir: str, *flags: str) -> dict:
    """Runs a whole `python -m trainer.train` process, timed from spawn to exit as a user waits for it;
    returns its metrics.json with `process_wall_s` and the per-epoch `history` (history.csv rows) added."""
    import csv
    import time

    command = [sys.executable, "-m", "trainer.train", "--data", data_dir, "--model-dir", model_dir, "--quiet", *flags]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(model_dir, "history.csv")) as f:
        history = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    return {**metrics, "process_wall_s": wall, "history": history}
