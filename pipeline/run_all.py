"""The main job (`make pipeline`): preprocess → [tune] → train → export → serve → query → report.

Each stage runs as its own command (the same CLI a user would type), reads only the previous
stage's directory, and is skipped when its inputs have not changed, so a re-run after success
takes seconds. Knobs: defaults < pipeline.yaml < flags; the effective config is saved in RUN_DIR.
"""
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

from pipeline import atomic, cli, locks
from pipeline.cli import UserError

DEFAULTS = {
    "corpus": ["timemachine"], "run_dir": "runs/default", "normalize": "d2l", "tokenizer": "char", "split": "d2l",
    "num_steps": 32, "runner": "DirectRunner", "beam_options": "",
    "cell": "gru", "num_layers": 2, "num_hiddens": 32, "epochs": 100, "batch_size": 1024, "lr": 2.0,
    "optimizer": "sgd", "tune": False, "tuner": "hyperband", "max_trials": 10, "time_budget": 20.0,
    "tune_max_epochs": 10, "tune_options": "--max-layers 4 --max-hiddens 256", "model_name": "deep_rnn", "grpc_port": 8500, "rest_port": 8501,
}


def parse_args(argv):
    p = cli.ArgumentParser(prog="pipeline.run_all", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML file of knobs (default: ./pipeline.yaml if present)")
    p.add_argument("--corpus", nargs="+")
    for name, value in DEFAULTS.items():
        if name in ("corpus",):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"), metavar="0|1")
        else:
            p.add_argument(flag, type=type(value))
    args = p.parse_args(argv)
    config = dict(DEFAULTS)
    path = args.config or ("pipeline.yaml" if os.path.exists("pipeline.yaml") else None)
    if path:
        import yaml

        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"{path}: cannot read config: {err}") from None
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise UserError(f"{path}: unknown keys {', '.join(unknown)}")
        config.update(loaded)
    config.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    corpus = [config["corpus"]] if isinstance(config["corpus"], str) else config["corpus"]
    config["corpus"] = [src for item in corpus for src in item.split()]  # Make passes one string
    return config


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


def _die_with_parent():
    """Children are killed with the pipeline, so a SIGKILLed run leaves no stage running on."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_stage(name: str, module: str, args: list[str]) -> None:
    print(f"\n== stage {name}: python -m {module} {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", module, *args], preexec_fn=_die_with_parent)
    if proc.returncode != 0:
        raise UserError(f"stage {name} failed with exit code {proc.returncode} (its message is above)")


def preprocess_stage(cfg: dict, run_dir: str) -> str:
    data = os.path.join(run_dir, "data")
    fp = fingerprint(corpus_fingerprint(cfg["corpus"]), {k: cfg[k] for k in ("normalize", "tokenizer", "split",
                                                                            "num_steps", "runner", "beam_options")})
    if _read(os.path.join(data, "fingerprint")) == fp and os.path.exists(os.path.join(data, "metadata.json")):
        print("== stage preprocess: inputs unchanged, skipped")
        return fp
    run_stage("preprocess", "pipeline.preprocess",
              ["--corpus", *cfg["corpus"], "--output", data, "--normalize", cfg["normalize"], "--tokenizer",
               cfg["tokenizer"], "--split", cfg["split"], "--num-steps", str(cfg["num_steps"]),
               f"--runner={cfg['runner']}", *cfg["beam_options"].split()])
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
               *cfg["tune_options"].split()])
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
                                         "--quiet", *flags])
    return fp


def export_stage(cfg: dict, run_dir: str) -> str:
    from serving.export import SOURCE_FINGERPRINT, versions

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
                                           "--source-fingerprint", fp])
    return os.path.join(base, str(versions(base)[-1]))


def serve_and_query(cfg: dict, run_dir: str) -> dict:
    """Starts TF Serving (or the local stand-in), queries it over gRPC, measures latency, stops it."""
    from serving.client import Client, free_port, latency_summary
    from serving.export import SIGNATURES, versions

    grpc_port = cfg["grpc_port"] or free_port()
    rest_port = cfg["rest_port"] or free_port()
    for port, knob in ((grpc_port, "GRPC_PORT"), (rest_port, "REST_PORT")):
        check_port_free(port, knob)  # else the report would describe whatever already listens there
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
    print(f"\n== stage serve: {' '.join(cmd)}", flush=True)
    server = subprocess.Popen(cmd, preexec_fn=_die_with_parent, stdout=subprocess.DEVNULL)
    address = f"127.0.0.1:{grpc_port}"
    client = Client(address, cfg["model_name"], timeout=30)
    try:
        client.wait_until_ready(180, server)
        served = client.served_version()
        if server.poll() is not None or served != expected_version:
            raise UserError(f"the server answering on {address} is not the one this run started (it serves "
                            f"version {served}, this run exported {expected_version}); free GRPC_PORT {grpc_port}")
        greedy = client.generate(["it has"], 20)[0]
        print(f"== query over gRPC: {greedy!r}", flush=True)
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
    with locks.exclusive(run_dir, "pipeline.run_all"):
        return _run_pipeline_locked(cfg, run_dir)


def _run_pipeline_locked(cfg: dict, run_dir: str) -> str:
    atomic.write_text(os.path.join(run_dir, "config.json"), json.dumps(cfg, indent=2) + "\n")
    started = time.perf_counter()
    data_fp = preprocess_stage(cfg, run_dir)
    hparams = tune_stage(cfg, run_dir, data_fp)
    train_stage(cfg, run_dir, data_fp, hparams)
    export_stage(cfg, run_dir)
    serving = serve_and_query(cfg, run_dir)
    from pipeline.report import write_report

    report = write_report(run_dir, serving)
    print(f"\n== done in {time.perf_counter() - started:.0f} s: {report} (and report.html)")
    return report


def main(argv=None) -> None:
    _die_with_parent()  # killed with `make` (SIGKILL included): no orphan run racing the rerun
    cfg = parse_args(argv)
    print("pipeline configuration: " + json.dumps(cfg), flush=True)
    run_pipeline(cfg)


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
