"""tf.distribute: MirroredStrategy over two replicas, and two MultiWorkerMirroredStrategy workers."""
from __future__ import annotations

import csv
import json
import os

import pytest

from tests.conftest import assert_user_error, run_cli

MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer.config import TrainConfig
from trainer.training import train_and_evaluate
m = train_and_evaluate(TrainConfig.from_flat(epochs=2, num_hiddens=16, batch_size=256, progress="none",
                                             distribute="mirrored", ema=0.9),
                       sys.argv[1], sys.argv[2])  # the average swapped in and out per replica
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


def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--stateful", "--ema", "0.9"]], ids=["windows", "stateful-ema"])
def test_two_workers_on_localhost(tiny_data, tmp_path, extra):
    """MultiWorkerMirroredStrategy from TF_CONFIG: both workers step together; only the chief writes.
    --stateful: each worker carries its own half of the lanes (AutoShardPolicy.DATA splits every batch);
    --ema: both validate the same average."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    model_dir = tmp_path / "model"
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "trainer.train", "--data", str(tiny_data), "--model-dir", str(model_dir),
             "--distribute", "multi_worker", "--epochs", "2", "--num-hiddens", "16", "--batch-size", "256",
             "--quiet", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-3000:] for o in outputs]
    summaries = [[ln for ln in o.splitlines() if ln.startswith("train: ")] for o in outputs]
    # "train: 2 epochs, train perplexity X, validation perplexity Y (...)": the same numbers on both workers
    assert summaries[0] and [s[0].split(",")[:3] for s in summaries] == [summaries[0][0].split(",")[:3]] * 2
    # Each worker logs the same all-reduced epochs into its own history (the worker reads its own back).
    columns = ("epoch", "perplexity", "val_perplexity")
    histories = [[tuple(r[c] for c in columns) for r in csv.DictReader(open(path))]
                 for path in (model_dir / "history.csv", model_dir / "worker-1" / "history.csv")]
    assert len(histories[0]) == 2 and histories[0] == histories[1]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["val_ppl"] < 28
    assert (model_dir / "model.keras").exists() and (model_dir / "worker-1").is_dir()
    assert not (model_dir / "worker-1" / "model.keras").exists()  # only the chief writes artefacts


def test_multi_worker_needs_tf_config(tiny_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    proc = run_cli("trainer.train", "--data", str(tiny_data), "--model-dir", str(tmp_path / "m"),
                   "--distribute", "multi_worker", env=env)
    assert_user_error(proc, "TF_CONFIG")


MIRRORED_LANES = """
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer.config import ModelConfig
from trainer.data import stateful_batches
from trainer.model import build_model
from trainer.stateful import CarriedStateModel
strategy = tf.distribute.MirroredStrategy()
ids, targets, reset = stateful_batches([np.arange(4 * 15 + 1) % 11], batch_size=4, num_steps=5)
rows = tf.data.Dataset.from_tensor_slices(({"ids": ids.reshape(-1, 5), "reset": np.repeat(reset, 4)},
                                           targets.reshape(-1, 5))).batch(4)
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = CarriedStateModel(build_model(ModelConfig(vocab_size=11, num_hiddens=6), carry_state=True), rows=2)
for x, _ in strategy.experimental_distribute_dataset(rows):
    strategy.run(lambda x: model(x, training=True), args=(x,))
lanes = np.concatenate(list(ids), axis=1)                                  # [4, 15]: each lane whole
_, *final = model.core([tf.constant(lanes), *[tf.zeros((4, 6))] * len(model.carried)])
for replica, local in enumerate(strategy.experimental_local_results(model.carried[-1])):
    np.testing.assert_allclose(local.numpy(), final[-1].numpy()[2 * replica:2 * replica + 2], atol=2e-5)
print("LANES_OK")
"""


@pytest.mark.slow
def test_stateful_replicas_each_carry_their_own_lanes(tmp_path):
    """Under MirroredStrategy each replica's carried state is its rows' lanes run as one sequence."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", MIRRORED_LANES], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "LANES_OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("tf_config", ["garbage{", "[1, 2]", '{"task": 5}', '{"cluster": [], "task": {}}'])
def test_a_garbage_tf_config_is_ignored_alone_and_refused_for_multi_worker(monkeypatch, tf_config):
    """A stray TF_CONFIG (left by another job) does not matter to a lone run; multi_worker needs a real one."""
    from common.cli import UserError
    from trainer.distribute import cluster_task

    monkeypatch.setenv("TF_CONFIG", tf_config)
    assert cluster_task("none") == {} and cluster_task("mirrored") == {}
    with pytest.raises(UserError, match="TF_CONFIG is not a cluster description"):
        cluster_task("multi_worker")
