"""`make pipeline` end to end (through deep_rnn.run_all), faults during every stage, engines, packaging."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

TINY = ["--corpus", "timemachine", "--split", "holdout", "--num-steps", "16", "--num-layers", "2",
        "--num-hiddens", "16", "--batch-size", "256", "--grpc-port", "0", "--rest-port", "0"]


def run_all(run_dir: Path, *extra: str, timeout: float = 900):
    # TensorFlow's C++ logging as a user's shell has it (the suite's conftest quiets it for other tests).
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "deep_rnn.run_all", "--run-dir", str(run_dir), *TINY, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def check_console_and_logs(proc, run_dir: Path) -> None:
    """No TensorFlow C++ start-up line on the console; every stage's full log under RUN_DIR/logs/, with those
    lines in it; a one-line header per stage and the closing summary."""
    from common.console import is_noise

    console_lines = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in console_lines if is_noise(line.strip())], "TF start-up lines on the console"
    logs = {stage: (run_dir / "logs" / f"{stage}.log").read_text() for stage in ("preprocess", "train", "export",
                                                                               "serve")}
    assert any(is_noise(line) for text in logs.values() for line in text.splitlines()), \
        "no TF start-up line in any log: the filter was not exercised"
    assert "epoch 1/" in logs["train"] and "preprocess:" in logs["preprocess"] and "export: version" in logs["export"]
    for stage in ("preprocess", "train", "export", "serve", "report"):
        assert sum(line.startswith(f"== stage {stage}:") for line in console_lines) == 1, stage
    assert "epoch 1/" in proc.stdout  # the stage's own progress reaches the console
    summary = proc.stdout.split("== done in", 1)[1]
    for needle in ("built:", "validation perplexity", "the book's 2 × 32 GRU: 6.41", "M training tokens/s",
                   "serving p50", "make serve", "serving.client", "tensorboard --logdir"):
        assert needle in summary, needle


def check_run(run_dir: Path, epochs: int) -> None:
    """Every artefact present and valid, and no partial export version."""
    meta = json.loads((run_dir / "data" / "metadata.json").read_text())
    assert meta["windows"]["train"] > 0 and (run_dir / "data" / "vocab.txt").exists()
    metrics = json.loads((run_dir / "model" / "metrics.json").read_text())
    assert metrics["epochs"] == epochs
    base = run_dir / "export" / "deep_rnn"
    versions = [d for d in base.iterdir() if d.name.isdigit()]
    assert versions and all((d / "saved_model.pb").exists() and (d / "variables").is_dir() for d in versions)
    report = (run_dir / "report.md").read_text()
    for section in ("## Corpus", "## Training", "## Serving", "### Generations", "p50"):
        assert section in report, section
    assert (run_dir / "report.html").read_text().count("data:image/png;base64") >= 1


@pytest.mark.slow
def test_pipeline_with_tuning_from_a_yaml_config_runs_end_to_end_and_reruns_in_seconds(tmp_path):
    """Every stage, the search included, from a pipeline.yaml; run again on the same fixed ports, every stage is
    skipped (the first server's TIME-WAIT sockets must not block the second)."""
    from common.net import free_port

    config = tmp_path / "pipeline.yaml"
    config.write_text("tune: true\ntuner: random\nmax_trials: 2\ntune_max_epochs: 1\nepochs: 2\n"
                      "tune_options: --max-layers 2 --min-hiddens 8 --max-hiddens 16 --optimizers sgd\n")
    run_dir = tmp_path / "run"
    ports = ["--grpc-port", str(free_port()), "--rest-port", str(free_port())]  # the same fixed ports twice
    first = run_all(run_dir, "--config", str(config), *ports)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "query over gRPC: 'it has" in first.stdout
    check_run(run_dir, 2)
    check_console_and_logs(first, run_dir)
    settings = json.loads((run_dir / "config.json").read_text())
    assert settings["train"]["run"]["epochs"] == 2 and settings["tune"]["enabled"] is True
    best = json.loads((run_dir / "tuning" / "best_hparams.json").read_text())
    model = json.loads((run_dir / "model" / "run_config.json").read_text())["model"]
    assert model["num_hiddens"] == best["num_hiddens"] and model["num_layers"] == best["num_layers"]
    assert "## Tuning" in (run_dir / "report.md").read_text()
    trial_lines = [line for line in first.stdout.splitlines() if line.strip().startswith("trial ")]
    assert len(trial_lines) == 2 and all("val perplexity" in line and " lr nan" not in line for line in trial_lines), \
        first.stdout[-3000:]
    assert "Epoch 1/" not in first.stdout  # one line per trial, not Keras's per-epoch output
    again = run_all(run_dir, "--config", str(config), *ports)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("preprocess", "tune", "train", "export"):
        assert f"stage {stage}: " in again.stdout and "skipped" in again.stdout.split(f"stage {stage}")[1][:80]
    assert len([d for d in (run_dir / "export" / "deep_rnn").iterdir() if d.name.isdigit()]) == 1


@pytest.mark.slow
def test_a_failing_stage_names_its_log_and_shows_its_last_lines(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_all(run_dir, "--epochs", "1", "--batch-size", "100000")  # more than the training windows
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    log = run_dir / "logs" / "train.log"
    assert len(errors) == 1 and "stage train failed" in errors[0] and str(log) in errors[0], proc.stderr
    assert f"last lines of {log}:" in proc.stderr and "   | error: --batch-size 100000" in proc.stderr
    assert "--batch-size 100000 is larger than" in log.read_text()


@pytest.mark.reliability
def test_sigkill_in_every_stage_then_rerun_completes(tmp_path):
    """Kill the whole job at points inside preprocess, train and export; each re-run picks up and finishes."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "deep_rnn.run_all", "--run-dir", str(run_dir), *TINY, "--epochs", "4"]
    for stage, delay in (("preprocess", 1.5), ("train", 6.0), ("train", 12.0), ("export", 3.0), ("export", 6.0)):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        killed = False
        deadline = time.time() + 600
        for line in proc.stdout:
            if f"== stage {stage}:" in line and "skipped" not in line:
                time.sleep(delay)
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            if time.time() > deadline:
                break
        proc.wait()
        if not killed:
            continue  # that stage was already complete: nothing to interrupt
        base = run_dir / "export" / "deep_rnn"
        if base.exists():  # a server polling the base never sees a half-written version
            assert all((d / "saved_model.pb").exists() for d in base.iterdir() if d.name.isdigit())
    final = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    check_run(run_dir, 4)
    history = (run_dir / "model" / "history.csv").read_text().splitlines()[1:]
    assert sorted({int(float(r.split(",")[0])) for r in history}) == [0, 1, 2, 3]


@pytest.mark.slow
def test_portable_runner_with_local_job_service(tmp_path, d2l_reference):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        proc = subprocess.run([sys.executable, "-m", "pipeline.preprocess", "--corpus", "timemachine", "--output",
                               str(tmp_path / "out"), "--split", "d2l", "--runner=PortableRunner",
                               f"--job_endpoint=localhost:{port}", "--environment_type=LOOPBACK"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        service.terminate()
        service.wait()
    names = sorted(p.name for p in d2l_reference.iterdir() if p.name != "metadata.json")
    for name in names:
        assert (tmp_path / "out" / name).read_bytes() == (d2l_reference / name).read_bytes(), name


@pytest.fixture(scope="module")
def d2l_reference(tmp_path_factory):
    from pipeline import transform
    from pipeline.preprocessing import preprocess

    out = tmp_path_factory.mktemp("ref") / "data"
    preprocess(["timemachine"], str(out), transform.PreprocessConfig(split="d2l"))
    return out


def test_sdist_ships_what_beam_workers_need(tmp_path):
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sdist,) = tmp_path.glob("*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for needed in ("setup.py", "requirements.txt", "pipeline/beam_graph.py", "pipeline/transform.py",
                   "common/text.py", "pipeline/records.py", "common/vocab.py", "trainer/model.py",
                   "serving/export.py", "trainer/kernels/rnn_sequence.cc", "trainer/forms_table.json"):
        assert needed in names, needed


@pytest.mark.reliability
def test_no_unsafe_deserialisation_anywhere():
    sources = [p for d in ("common", "pipeline", "trainer", "serving", "deep_rnn") for p in (ROOT / d).glob("*.py")]
    for path in sources:
        text = path.read_text()
        for bad in ("import pickle", "pickle.load", "safe_mode=False", "eval(", "yaml.load(", "allow_pickle=True"):
            assert bad not in text, (path.name, bad)
