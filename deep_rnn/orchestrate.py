"""The main job as a library: each stage run as its own command on its resolved config sections (a YAML file
per stage under RUN_DIR/config/), skipped when its inputs did not change, then the served model queried and
the report written."""
from __future__ import annotations

import ctypes
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import yaml

from common import atomic, console, locks, net, paths
from common.cli import UserError
from deep_rnn.settings import JobConfig, PipelineConfig

RUN_MARKER = ".deep_rnn-run"  # in every RUN_DIR this job made: proof that what is inside is the job's to replace


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def corpus_fingerprint(corpus: list[str]) -> list:
    """Named corpora are hash-verified, so their name is enough; files are named by path, size and mtime."""
    facts = []
    for src in corpus:
        matches = sorted(glob.glob(src)) if not os.path.exists(src) else [src]
        facts.append([src] + [[p, os.path.getsize(p), os.path.getmtime(p)] for p in matches if os.path.isfile(p)])
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


def stage_config(run_dir: str, stage: str, sections: dict) -> str:
    """RUN_DIR/config/<stage>.yaml: the sections a stage's --config reads (its resolved settings)."""
    path = os.path.join(run_dir, "config", f"{stage}.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tree = {name: dataclasses.asdict(section) for name, section in sections.items()}
    atomic.write_text(path, yaml.safe_dump(json.loads(json.dumps(tree)), sort_keys=False))
    return path


def preprocess_stage(cfg: PipelineConfig, run_dir: str) -> str:
    data = os.path.join(run_dir, "data")
    fp = fingerprint(corpus_fingerprint(list(cfg.job.corpus)), dataclasses.asdict(cfg.data),
                     dataclasses.asdict(cfg.beam))
    if _read(os.path.join(data, "fingerprint")) == fp and os.path.exists(os.path.join(data, "metadata.json")):
        print("== stage preprocess: inputs unchanged, skipped")
        return fp
    config = stage_config(run_dir, "preprocess", {"data": cfg.data})
    run_stage("preprocess", "pipeline.preprocess",
              ["--corpus", *cfg.job.corpus, "--output", data, "--config", config, f"--runner={cfg.beam.runner}",
               *cfg.beam.options.split()],
              run_dir, f"{' '.join(cfg.job.corpus)} → {data} (Beam {cfg.beam.runner}, {cfg.data.split} split)")
    atomic.write_text(os.path.join(data, "fingerprint"), fp)
    return fp


def _fresh_stage_dir(path: str, fp: str, stage: str) -> None:
    """A stage directory whose inputs changed starts afresh: removed under the stage's own lock (a stage still
    running there is refused, never deleted), and only when this job made it (its fingerprint file)."""
    if _read(os.path.join(path, "fingerprint")) in (None, fp):
        return
    with locks.exclusive(path, stage):
        shutil.rmtree(path)


def tune_stage(cfg: PipelineConfig, run_dir: str, data_fp: str) -> str | None:
    if not cfg.tune.enabled:
        return None
    tuning = os.path.join(run_dir, "tuning")
    shared = {"regularisers": cfg.train.regularisers, "optimiser": cfg.train.optimiser, "run": cfg.train.run}
    fp = fingerprint(data_fp, dataclasses.asdict(cfg.tune), {k: dataclasses.asdict(v) for k, v in shared.items()})
    best = os.path.join(tuning, "best_hparams.json")
    if _read(os.path.join(tuning, "fingerprint")) == fp and os.path.exists(best):
        print("== stage tune: inputs unchanged, skipped")
        return best
    _fresh_stage_dir(tuning, fp, "trainer.tune")  # a different search starts afresh
    os.makedirs(tuning, exist_ok=True)
    atomic.write_text(os.path.join(tuning, "fingerprint"), fp)
    config = stage_config(run_dir, "tune", {"search": cfg.tune.search, "space": cfg.tune.space, **shared})
    budget = cfg.tune.search.time_budget
    run_stage("tune", "trainer.tune",
              ["--data", os.path.join(run_dir, "data"), "--tuner-dir", tuning, "--config", config,
               *cfg.tune.options.split()],
              run_dir, f"{cfg.tune.search.tuner} search" + (f" for {budget:g} min" if budget else "")
              + f" → {tuning} (a line per trial)")
    return best


def train_stage(cfg: PipelineConfig, run_dir: str, data_fp: str, hparams: str | None) -> str:
    """Trains cfg.train, with the search's best point in place of its own when there was a search."""
    from common.cli import read_json

    model = os.path.join(run_dir, "model")
    train = cfg.train.replace(**read_json(hparams, "hyperparameters")) if hparams else cfg.train
    settings = {k: v for k, v in train.flat().items() if k not in ("epochs", "progress")}
    fp = fingerprint(data_fp, settings)  # epochs excluded: more epochs resume the same run
    metrics = os.path.join(model, "metrics.json")
    if _read(os.path.join(model, "fingerprint")) == fp and os.path.exists(metrics) \
            and json.load(open(metrics))["epochs"] == train.run.epochs:
        print("== stage train: inputs unchanged, skipped")
        return fp
    _fresh_stage_dir(model, fp, "trainer.train")  # different data or settings: a new run, not a resume
    os.makedirs(model, exist_ok=True)
    atomic.write_text(os.path.join(model, "fingerprint"), fp)
    config = stage_config(run_dir, "train", {name: getattr(train, name) for name in
                                             ("model", "regularisers", "optimiser", "run")})
    m, o = train.model, train.optimiser
    run_stage("train", "trainer.train", ["--data", os.path.join(run_dir, "data"), "--model-dir", model,
                                         "--config", config],
              run_dir, f"{m.num_layers} × {m.num_hiddens} {m.cell.upper()}, {train.run.epochs} epochs, "
                       f"{o.optimizer} lr {o.lr:g} → {model}")
    return fp


def export_stage(cfg: PipelineConfig, run_dir: str) -> str:
    from serving.layout import SOURCE_FINGERPRINT, version_path, versions
    from serving.settings import ExportConfig
    from trainer.config import ServingLimits

    model_keras = os.path.join(run_dir, "model", "model.keras")
    with open(model_keras, "rb") as f:
        fp = hashlib.sha256(f.read()).hexdigest()[:20]
    name = cfg.serve.model_name
    base = os.path.join(run_dir, "export", name)
    existing = versions(base)
    if existing and _read(os.path.join(version_path(base, existing[-1]), SOURCE_FINGERPRINT)) == fp:
        print(f"== stage export: version {existing[-1]} is this model, skipped")
        return version_path(base, existing[-1])
    config = stage_config(run_dir, "export", {"export": ExportConfig(model_name=name, source_fingerprint=fp),
                                              "limits": ServingLimits()})
    run_stage("export", "serving.export", ["--model-dir", os.path.join(run_dir, "model"), "--export-base",
                                           os.path.join(run_dir, "export"), "--config", config],
              run_dir, f"{model_keras} → {base}/<version> (SavedModel for TF Serving)")
    return version_path(base, versions(base)[-1])


def serve_and_query(cfg: PipelineConfig, run_dir: str) -> dict:
    """Starts TF Serving (or the local stand-in), proves the server answering is the one it started, queries
    it over gRPC, measures latency, stops it.

    The server's output, and the C++ start-up lines of this process's own TensorFlow import (the gRPC
    client's protos need it), go to RUN_DIR/logs/serve.log."""
    grpc_port = cfg.serve.port or net.free_port()
    rest_port = cfg.serve.rest_port or net.free_port()
    for port, knob in ((grpc_port, "GRPC_PORT"), (rest_port, "REST_PORT")):
        if port != -1 and not net.port_is_free(port):  # else the report would describe whatever listens there
            raise UserError(f"port {port} is in use by another process; stop it or set {knob}=another port "
                            f"(0 picks a free one)")
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


def _serve_and_query(cfg: PipelineConfig, run_dir: str, log: str, grpc_port: int, rest_port: int) -> dict:
    from serving.grpc_client import Client, latency_summary
    from serving.layout import versions
    from serving.savedmodel import SIGNATURES

    name = cfg.serve.model_name
    export_base = os.path.abspath(os.path.join(run_dir, "export"))
    if shutil.which("tensorflow_model_server"):
        kind = "tensorflow_model_server"
        cmd = ["tensorflow_model_server", f"--port={grpc_port}", f"--rest_api_port={max(rest_port, 0)}",
               f"--model_config_file={export_base}/models.config"]
    else:
        kind = "serving.server (local stand-in; tensorflow_model_server not installed)"
        config = stage_config(run_dir, "serve", {"server": dataclasses.replace(cfg.serve, port=grpc_port,
                                                                                 rest_port=rest_port)})
        cmd = [sys.executable, "-m", "serving.server", "--model-config-file", f"{export_base}/models.config",
               "--config", config]
    expected_version = versions(os.path.join(export_base, name))[-1]
    print(f"\n== stage serve: {kind} on gRPC :{grpc_port}, REST :{rest_port}, then queries  [log: {log}]",
          flush=True)
    with open(log, "a") as server_log:
        server_log.write("$ " + " ".join(cmd) + "\n")
        server_log.flush()
        server = subprocess.Popen(cmd, preexec_fn=die_with_parent, stdout=server_log, stderr=subprocess.STDOUT,
                                  env={**os.environ, console.RAW_STDERR: "1"})
    address = f"127.0.0.1:{grpc_port}"
    client = Client(address, name, timeout=30)
    try:
        client.wait_until_ready(180, server)
        served = client.served_version()
        if server.poll() is not None or not net.listens_on(server.pid, grpc_port) or served != expected_version:
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
        if not net.listens_on(server.pid, grpc_port):  # still ours after the queries
            raise UserError(f"the server this run started stopped listening on {address} during the queries")
        return {"server": address, "kind": kind, "samples": samples, "version": expected_version,
                "signatures": list(SIGNATURES), "latency": latency_summary(times)}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def check_run_dir(run_dir: str) -> None:
    """UserError unless RUN_DIR is new, empty, or one this job made (its RUN_MARKER): a user's folder of other
    files is never written into (its config.json or logs/ would be overwritten)."""
    if not os.path.lexists(run_dir):
        return
    if not os.path.isdir(run_dir) or os.path.islink(run_dir):
        raise UserError(f"RUN_DIR {run_dir}: exists and is not a directory")
    if set(os.listdir(run_dir)) - {locks.LOCK_FILE} and not os.path.exists(os.path.join(run_dir, RUN_MARKER)):
        raise UserError(f"RUN_DIR {run_dir}: a non-empty directory this pipeline did not make; choose another "
                        "RUN_DIR (or empty this one)")


STAGE_DIRS = {"data": "pipeline.preprocess", "tuning": "trainer.tune", "model": "trainer.train"}


def run_pipeline(cfg: PipelineConfig) -> str:
    run_dir = cfg.job.run_dir
    check_run_dir(run_dir)
    paths.make_output_dir(run_dir, "RUN_DIR")
    with locks.exclusive(run_dir, "deep_rnn.run_all"):
        atomic.write_text(os.path.join(run_dir, RUN_MARKER), "deep_rnn.run_all\n")
        for sub, stage in STAGE_DIRS.items():  # a stage someone runs by hand in RUN_DIR is refused, not raced
            locks.check_free(os.path.join(run_dir, sub), stage)
        return _run_pipeline_locked(cfg, run_dir)


def _run_pipeline_locked(cfg: PipelineConfig, run_dir: str) -> str:
    atomic.write_text(os.path.join(run_dir, "config.json"), json.dumps(cfg.as_dict(), indent=2) + "\n")
    atomic.write_text(os.path.join(run_dir, "config.yaml"), yaml.safe_dump(json.loads(json.dumps(cfg.as_dict())),
                                                                          sort_keys=False))
    print(f"pipeline configuration: {os.path.join(run_dir, 'config.yaml')} (each stage's: "
          f"{os.path.join(run_dir, 'config', '<stage>.yaml')})", flush=True)
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


def summary(cfg: PipelineConfig, run_dir: str, serving: dict, seconds: float) -> str:
    """The lines `make pipeline` ends with: what was built, the numbers that matter, what to try next."""
    from common.book import BOOK_REFERENCE

    with open(os.path.join(run_dir, "data", "metadata.json")) as f:
        data = json.load(f)
    with open(os.path.join(run_dir, "model", "metrics.json")) as f:
        metrics = json.load(f)
    h = metrics["hparams"]
    latency = serving["latency"]
    rel = os.path.relpath(run_dir) if not os.path.relpath(run_dir).startswith("..") else os.path.abspath(run_dir)
    knob = "" if os.path.normpath(run_dir) == os.path.normpath(JobConfig().run_dir) else f" RUN_DIR={rel}"
    return "\n".join([
        f"\n== done in {seconds:.0f} s",
        f"built:   {rel}/data ({data['total_tokens']:,} tokens, vocabulary {data['vocab_size']}) · "
        f"{rel}/model ({h['num_layers']} × {h['num_hiddens']} {h['cell'].upper()}, {metrics['epochs']} epochs) · "
        f"{rel}/export/{cfg.serve.model_name}/{serving['version']} · {rel}/report.md and report.html · "
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
