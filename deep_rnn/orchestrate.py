"""The main job as a library: each stage run as its own command, skipped when its inputs did not change,
then the served model queried and the report written."""
from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from common import atomic, console, locks
from common.cli import UserError

DEFAULTS = {
    "corpus": ["timemachine"], "run_dir": "runs/default", "normalize": "d2l", "tokenizer": "char", "split": "d2l",
    "num_steps": 32, "encoding": "auto", "strip_boilerplate": "auto", "runner": "FnApiRunner", "beam_options": "",
    "cell": "gru", "num_layers": 2, "num_hiddens": 32, "epochs": 100, "batch_size": 1024, "lr": 2.0,
    "optimizer": "sgd", "tune": False, "tuner": "hyperband", "max_trials": 10, "time_budget": 20.0,
    "tune_max_epochs": 10, "tune_options": "--max-layers 4 --max-hiddens 256", "model_name": "deep_rnn",
    "grpc_port": 8500, "rest_port": 8501,
}


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def corpus_fingerprint(corpus: list[str]) -> list:
    """Named corpora are hash-verified, so their name is enough; files are named by path, size and mtime."""
    facts = []
    for src in corpus:
        paths = sorted(glob.glob(src)) if not os.path.exists(src) else [src]
        facts.append([src] + [[p, os.path.getsize(p), os.path.getmtime(p)] for p in paths if os.path.isfile(p)])
    return facts


def _read(path: str) -> str | None:
    return open(path).read().strip() if os.path.exists(path) else None


def die_with_parent():
    """Children are killed with the pipeline, so a SIGKILLed run leaves no stage running on."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def log_path(run_dir: str, stage: str) -> str:
    return os.path.join(run_dir, "logs", f"{stage}.log")


def run_stage(name: str, module: str, args: list[str], run_dir: str, what: str) -> None:
    """Runs `python -m module args` as stage `name`: a header line, the stage's own lines (TensorFlow's C++
    start-up lines left in the log only), its full output in RUN_DIR/logs/<name>.log; on failure, the log's
    last lines and a one-line error naming it."""
    log = log_path(run_dir, name)
    print(f"\n== stage {name}: {what}  [log: {log}]", flush=True)
    code = console.run_logged([sys.executable, "-m", module, *args], log,
                              echo=lambda line: print("   " + line, flush=True), preexec_fn=die_with_parent)
    if code != 0:
        console.print_failure(log)
        raise UserError(f"stage {name} failed with exit code {code}; its full log is {log}")


def preprocess_stage(cfg: dict, run_dir: str) -> str:
    data = os.path.join(run_dir, "data")
    fp = fingerprint(corpus_fingerprint(cfg["corpus"]), {k: cfg[k] for k in ("normalize", "tokenizer", "split",
                                                                            "num_steps", "encoding",
                                                                            "strip_boilerplate",
                                                                            "runner", "beam_options")})
    if _read(os.path.join(data, "fingerprint")) == fp and os.path.exists(os.path.join(data, "metadata.json")):
        print("== stage preprocess: inputs unchanged, skipped")
        return fp
    run_stage("preprocess", "pipeline.preprocess",
              ["--corpus", *cfg["corpus"], "--output", data, "--normalize", cfg["normalize"], "--tokenizer",
               cfg["tokenizer"], "--split", cfg["split"], "--num-steps", str(cfg["num_steps"]),
               "--encoding", cfg["encoding"], "--strip-boilerplate", cfg["strip_boilerplate"],
               f"--runner={cfg['runner']}", *cfg["beam_options"].split()],
              run_dir, f"{' '.join(cfg['corpus'])} → {data} (Beam {cfg['runner']}, {cfg['split']} split)")
    atomic.write_text(os.path.join(data, "fingerprint"), fp)
    return fp


def tune_stage(cfg: dict, run_dir: str, data_fp: str) -> str | None:
    if not cfg["tune"]:
        return None
    tuning = os.path.join(run_dir, "tuning")
    fp = fingerprint(data_fp, {k: cfg[k] for k in ("tuner", "max_trials", "time_budget", "tune_max_epochs",
                                                   "batch_size", "tune_options")})
    best = os.path.join(tuning, "best_hparams.json")
    if _read(os.path.join(tuning, "fingerprint")) == fp and os.path.exists(best):
        print("== stage tune: inputs unchanged, skipped")
        return best
    if _read(os.path.join(tuning, "fingerprint")) not in (None, fp):
        shutil.rmtree(tuning)  # a different search: start it afresh
    os.makedirs(tuning, exist_ok=True)
    atomic.write_text(os.path.join(tuning, "fingerprint"), fp)
    run_stage("tune", "trainer.tune",
              ["--data", os.path.join(run_dir, "data"), "--tuner-dir", tuning, "--tuner", cfg["tuner"],
               "--max-trials", str(cfg["max_trials"]), "--max-epochs", str(cfg["tune_max_epochs"]),
               "--time-budget", str(cfg["time_budget"]), "--batch-size", str(cfg["batch_size"]), "--quiet",
               *cfg["tune_options"].split()],
              run_dir, f"{cfg['tuner']} search for {cfg['time_budget']:g} min → {tuning} (a line per trial)")
    return best


def train_stage(cfg: dict, run_dir: str, data_fp: str, hparams: str | None) -> str:
    model = os.path.join(run_dir, "model")
    flags = ["--batch-size", str(cfg["batch_size"]), "--epochs", str(cfg["epochs"])]
    if hparams:
        flags += ["--hparams", hparams]
        arch = json.load(open(hparams))
    else:
        arch = {k: cfg[k] for k in ("cell", "num_layers", "num_hiddens", "lr", "optimizer")}
        flags += ["--cell", cfg["cell"], "--num-layers", str(cfg["num_layers"]), "--num-hiddens",
                  str(cfg["num_hiddens"]), "--lr", str(cfg["lr"]), "--optimizer", cfg["optimizer"]]
    fp = fingerprint(data_fp, arch, cfg["batch_size"])  # epochs excluded: more epochs resume the same run
    metrics = os.path.join(model, "metrics.json")
    if _read(os.path.join(model, "fingerprint")) == fp and os.path.exists(metrics) \
            and json.load(open(metrics))["epochs"] == cfg["epochs"]:
        print("== stage train: inputs unchanged, skipped")
        return fp
    if _read(os.path.join(model, "fingerprint")) not in (None, fp):
        shutil.rmtree(model)  # different data or architecture: a new run, not a resume
    os.makedirs(model, exist_ok=True)
    atomic.write_text(os.path.join(model, "fingerprint"), fp)
    run_stage("train", "trainer.train", ["--data", os.path.join(run_dir, "data"), "--model-dir", model,
                                         "--progress", "epoch", *flags],
              run_dir, f"{arch['num_layers']} × {arch['num_hiddens']} {arch['cell'].upper()}, {cfg['epochs']} epochs, "
                       f"{arch['optimizer']} lr {arch['lr']:g} → {model}")
    return fp


def export_stage(cfg: dict, run_dir: str) -> str:
    from serving.layout import SOURCE_FINGERPRINT, versions

    model_keras = os.path.join(run_dir, "model", "model.keras")
    with open(model_keras, "rb") as f:
        fp = hashlib.sha256(f.read()).hexdigest()[:20]
    base = os.path.join(run_dir, "export", cfg["model_name"])
    existing = versions(base)
    if existing and _read(os.path.join(base, str(existing[-1]), SOURCE_FINGERPRINT)) == fp:
        print(f"== stage export: version {existing[-1]} is this model, skipped")
        return os.path.join(base, str(existing[-1]))
    run_stage("export", "serving.export", ["--model-dir", os.path.join(run_dir, "model"), "--export-base",
                                           os.path.join(run_dir, "export"), "--model-name", cfg["model_name"],
                                           "--source-fingerprint", fp],
              run_dir, f"{model_keras} → {base}/<version> (SavedModel for TF Serving)")
    return os.path.join(base, str(versions(base)[-1]))


def serve_and_query(cfg: dict, run_dir: str) -> dict:
    """Starts TF Serving (or the local stand-in), queries it over gRPC, measures latency, stops it.

    The server's output, and the C++ start-up lines of this process's own TensorFlow import (the gRPC
    client's protos need it), go to RUN_DIR/logs/serve.log."""
    from common.net import free_port

    grpc_port = cfg["grpc_port"] or free_port()
    rest_port = cfg["rest_port"] or free_port()
    for port, knob in ((grpc_port, "GRPC_PORT"), (rest_port, "REST_PORT")):
        check_port_free(port, knob)  # else the report would describe whatever already listens there
    log = log_path(run_dir, "serve")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w"):
        pass  # a fresh log per run; the server and this process append to it
    try:
        with console.stderr_to(log):
            return _serve_and_query(cfg, run_dir, log, grpc_port, rest_port)
    except UserError as err:
        console.print_failure(log)
        raise UserError(f"{err} (the server's full log is {log})") from None


def _serve_and_query(cfg: dict, run_dir: str, log: str, grpc_port: int, rest_port: int) -> dict:
    from serving.grpc_client import Client, latency_summary
    from serving.layout import versions
    from serving.savedmodel import SIGNATURES

    export_base = os.path.abspath(os.path.join(run_dir, "export"))
    if shutil.which("tensorflow_model_server"):
        kind = "tensorflow_model_server"
        cmd = ["tensorflow_model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
               f"--model_config_file={export_base}/models.config"]
    else:
        kind = "serving.server (local stand-in; tensorflow_model_server not installed)"
        cmd = [sys.executable, "-m", "serving.server", "--model-config-file", f"{export_base}/models.config",
               "--port", str(grpc_port), "--rest-port", str(rest_port)]
    expected_version = versions(os.path.join(export_base, cfg["model_name"]))[-1]
    print(f"\n== stage serve: {kind} on gRPC :{grpc_port}, REST :{rest_port}, then queries  [log: {log}]",
          flush=True)
    with open(log, "a") as server_log:
        server_log.write("$ " + " ".join(cmd) + "\n")
        server_log.flush()
        server = subprocess.Popen(cmd, preexec_fn=die_with_parent, stdout=server_log, stderr=subprocess.STDOUT,
                                  env={**os.environ, console.RAW_STDERR: "1"})
    address = f"127.0.0.1:{grpc_port}"
    client = Client(address, cfg["model_name"], timeout=30)
    try:
        client.wait_until_ready(180, server)
        served = client.served_version()
        if server.poll() is not None or served != expected_version:
            raise UserError(f"the server answering on {address} is not the one this run started (it serves "
                            f"version {served}, this run exported {expected_version}); free GRPC_PORT {grpc_port}")
        greedy = client.generate(["it has"], 20)[0]
        print(f"   query over gRPC: {greedy!r}", flush=True)
        times = []
        for _ in range(100):
            start = time.perf_counter()
            client.generate(["it has"], 20)
            times.append(1e3 * (time.perf_counter() - start))
        samples = {"greedy": greedy}
        for temperature in (0.5, 1.0):
            samples[f"temperature {temperature}, seed 0"] = client.generate(["it has"], 40, temperature, 0, 0)[0]
        samples["temperature 1.0, top-k 3, seed 0"] = client.generate(["it has"], 40, 1.0, 3, 0)[0]
        return {"server": address, "kind": kind, "samples": samples,
                "version": expected_version,
                "signatures": list(SIGNATURES), "latency": latency_summary(times)}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def check_port_free(port: int, knob: str) -> None:
    """UserError when something on this machine already listens on `port` (bound without SO_REUSEPORT, so a
    listener that set it is found too)."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise UserError(f"port {port} is in use by another process; stop it or set {knob}=another port "
                            f"(0 picks a free one)") from None


def run_pipeline(cfg: dict) -> str:
    run_dir = cfg["run_dir"]
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UserError(f"RUN_DIR {run_dir}: exists and is not a directory")
    with locks.exclusive(run_dir, "deep_rnn.run_all"):
        return _run_pipeline_locked(cfg, run_dir)


def _run_pipeline_locked(cfg: dict, run_dir: str) -> str:
    atomic.write_text(os.path.join(run_dir, "config.json"), json.dumps(cfg, indent=2) + "\n")
    started = time.perf_counter()
    data_fp = preprocess_stage(cfg, run_dir)
    hparams = tune_stage(cfg, run_dir, data_fp)
    train_stage(cfg, run_dir, data_fp, hparams)
    export_stage(cfg, run_dir)
    serving = serve_and_query(cfg, run_dir)
    from deep_rnn.report import write_report

    print(f"\n== stage report: {os.path.join(run_dir, 'report.md')} and report.html", flush=True)
    report = write_report(run_dir, serving)
    print(summary(cfg, run_dir, serving, time.perf_counter() - started), flush=True)
    return report


def summary(cfg: dict, run_dir: str, serving: dict, seconds: float) -> str:
    """The lines `make pipeline` ends with: what was built, the numbers that matter, what to try next."""
    from common.book import BOOK_REFERENCE

    with open(os.path.join(run_dir, "data", "metadata.json")) as f:
        data = json.load(f)
    with open(os.path.join(run_dir, "model", "metrics.json")) as f:
        metrics = json.load(f)
    h = metrics["hparams"]
    latency = serving["latency"]
    rel = os.path.relpath(run_dir) if not os.path.relpath(run_dir).startswith("..") else os.path.abspath(run_dir)
    knob = "" if os.path.normpath(run_dir) == os.path.normpath(DEFAULTS["run_dir"]) else f" RUN_DIR={rel}"
    return "\n".join([
        f"\n== done in {seconds:.0f} s",
        f"built:   {rel}/data ({data['total_tokens']:,} tokens, vocabulary {data['vocab_size']}) · "
        f"{rel}/model ({h['num_layers']} × {h['num_hiddens']} {h['cell'].upper()}, {metrics['epochs']} epochs) · "
        f"{rel}/export/{cfg['model_name']}/{serving['version']} · {rel}/report.md and report.html · "
        f"logs in {rel}/logs/",
        f"numbers: validation perplexity {metrics['best_val_ppl']:.2f} (exported, best epoch "
        f"{metrics['best_epoch']}; the book's 2 × 32 GRU: {BOOK_REFERENCE['val_ppl']}) · "
        f"{metrics['train_tokens_per_s'] / 1e6:.2f} M training tokens/s · serving p50 {latency['p50_ms']:.1f} ms, "
        f"p99 {latency['p99_ms']:.1f} ms ({latency['n']} gRPC calls, 20 characters each)",
        "next:    make serve" + knob + "      # TF Serving (or the stand-in) on :8500 gRPC, :8501 REST",
        "         .venv/bin/python -m serving.client --server 127.0.0.1:8500 --prefix 'it has' --num-chars 40 "
        "--temperature 0.8",
        f"         .venv/bin/tensorboard --logdir {rel}/model/logs",
    ])
