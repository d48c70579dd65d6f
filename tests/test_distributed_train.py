"""tf.distribute: MirroredStrategy over two replicas; multi-worker refused with a clear message."""
from __future__ import annotations

import json
import os

import pytest

from tests.conftest import assert_user_error, run_cli

MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer.config import TrainConfig
from trainer.train import train_and_evaluate
m = train_and_evaluate(TrainConfig(epochs=2, num_hiddens=16, batch_size=256, verbose=0, distribute="mirrored"),
                       sys.argv[1], sys.argv[2])
assert tf.distribute.MirroredStrategy().num_replicas_in_sync == 2
print("REPLICAS_OK", m["epochs"], m["val_ppl"])
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_replicas(tiny_data, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", MIRRORED, str(tiny_data), str(tmp_path / "m")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "REPLICAS_OK 2" in proc.stdout, proc.stderr[-3000:]
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["val_ppl"] < 28


def test_multi_worker_is_refused_clearly(tiny_data, tmp_path):
    env = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                    "task": {"type": "worker", "index": 0}})}
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"),
                   "--distribute", "multi_worker", env={**os.environ, **env})
    assert_user_error(proc, "multi_worker", "keras-team/keras#20585")
