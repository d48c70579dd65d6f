"""Shared helpers for benchmarks: machine description, shared corpora, JSON output."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
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


def result_path(name: str) -> Path:
    """Where a benchmark's JSON lives: bench/results/<name>.json, except bench.forms' table, which is package
    data of the trainer (trainer/forms_table.json), since `--backend-form auto` reads it at run time."""
    if name == "forms":
        from trainer.forms import FORMS_RESULTS

        return Path(FORMS_RESULTS)
    return ROOT / "bench" / "results" / f"{name}.json"


def emit(name: str, result: dict) -> None:
    """Prints the result as one JSON object and stores it where result_path says."""
    result = {"benchmark": name, "machine": machine(), **result}
    out = result_path(name)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
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


GATES = {"gru": 3, "lstm": 4, "rnn": 1, "scratch": 1}


def training_flops_per_token(cell: str, num_layers: int, num_hiddens: int, vocab_size: int) -> float:
    """Flops of the matrix products per trained token: recurrent products of every layer, input products of
    layers 2..L (the first layer's one-hot input is a row lookup), the logits; ×2 per multiply-add, ×3 for
    forward plus backward."""
    g = GATES[cell] * num_hiddens
    macs = num_layers * num_hiddens * g + (num_layers - 1) * num_hiddens * g + num_hiddens * vocab_size
    return 6.0 * macs


def matmul_gflops(n: int = 1024, seconds: float = 5.0) -> float:
    """This CPU's dense float32 matmul rate through TensorFlow (all cores): what no RNN kernel here can beat."""
    import tensorflow as tf

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    matmul(a, b).numpy()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        matmul(a, b).numpy()
        reps += 1
    return 2.0 * n ** 3 * reps / (time.perf_counter() - start) / 1e9
