"""tf.distribute: two MultiWorkerMirroredStrategy workers on localhost train one model together."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_on_localhost(tiny_data, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    model_dir = tmp_path / "model"
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "trainer.train", "--data", str(tiny_data), "--model-dir", str(model_dir),
             "--distribute", "multi_worker", "--epochs", "2", "--num-hiddens", "16", "--batch-size", "256",
             "--quiet"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-3000:] for o in outputs]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["val_ppl"] < 28
    assert (model_dir / "model.keras").exists() and (model_dir / "worker-1").is_dir()
    assert not (model_dir / "worker-1" / "model.keras").exists()  # only the chief writes the artefacts
