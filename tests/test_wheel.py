"""The installed product, not the checkout: the wheel built, installed apart (pip --target, no network) and
run from an empty folder, every stage through the `deep-rnn` console command, with a probe in every Python
process that records any module of ours imported from somewhere else than the installed copy."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from common.console import is_noise
from tests.conftest import ROOT

OURS = ("common", "pipeline", "trainer", "serving", "deep_rnn")

PROBE = f'''
import atexit, os, sys

OURS = {OURS!r}

def _check():
    site = os.environ["DEEP_RNN_TEST_SITE"]
    stray = [name + ": " + str(getattr(module, "__file__", None)) for name, module in list(sys.modules.items())
             if name.split(".")[0] in OURS and not str(getattr(module, "__file__", "") or "").startswith(site)]
    with open(os.environ["DEEP_RNN_TEST_PROBE_LOG"], "a") as log:
        log.write(" ".join(sys.argv[:2]) + "\\t" + "; ".join(stray) + "\\n")

atexit.register(_check)
'''


@pytest.mark.slow
def test_the_wheel_installed_apart_runs_the_whole_pipeline_from_an_empty_folder(tmp_path):
    source = tmp_path / "source"  # a copy: setuptools' build/ folder must not land in (or come from) the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "runs",
                                                                "__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(dist), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("trainer/kernels/rnn_sequence.cc", "trainer/forms_table.json", "common/cli.py",
                   "deep_rnn/cli.py", "pipeline/beam_graph.py", "serving/savedmodel.py"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]

    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                                "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    command = site / "bin" / "deep-rnn"
    assert command.exists()

    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
    env.update(PYTHONPATH=f"{probe}{os.pathsep}{site}", DEEP_RNN_TEST_SITE=str(site),
               DEEP_RNN_TEST_PROBE_LOG=str(tmp_path / "probe.log"),
               DEEP_RNN_KERNELS_DIR=str(tmp_path / "kernels"))  # built here from the package's own source

    def deep_rnn(*args, timeout=900):
        return subprocess.run([str(command), *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)

    helped = deep_rnn("train", "--help", timeout=120)
    assert helped.returncode == 0 and "--num-layers" in helped.stdout
    run = deep_rnn("pipeline", "--run-dir", "run", "--corpus", "timemachine", "--split", "holdout",
                   "--num-steps", "16", "--num-hiddens", "16", "--batch-size", "256", "--epochs", "1",
                   "--grpc-port", "0", "--rest-port", "0")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "query over gRPC: 'it has" in run.stdout and (work / "run" / "report.html").exists()
    assert not [line for line in (run.stdout + run.stderr).splitlines() if is_noise(line.strip())]

    metrics = json.loads((work / "run" / "model" / "metrics.json").read_text())
    if metrics["form"] == "native":  # what the packaged forms table picks on the CPUs measured so far
        assert list((tmp_path / "kernels").glob("*/rnn_sequence.so")), "native kernels not built from the wheel"

    # a stage run directly (not through the orchestrator) keeps TensorFlow's C++ start-up lines off the console
    direct = deep_rnn("export", "--model-dir", "run/model", "--export-base", "direct", timeout=300)
    assert direct.returncode == 0, direct.stderr[-3000:]
    assert not [line for line in (direct.stdout + direct.stderr).splitlines() if is_noise(line.strip())]

    records = (tmp_path / "probe.log").read_text().splitlines()
    assert len(records) >= 6  # the command, each stage's process, the server, the export
    strays = [r for r in records if r.split("\t", 1)[1]]
    assert not strays, strays
