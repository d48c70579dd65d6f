"""tf.distribute set-up for training: the strategy a run asks for, and which process writes the artefacts."""
from __future__ import annotations

import json
import os

from common.cli import UserError
from trainer import compat


def make_strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("--distribute multi_worker needs TF_CONFIG describing the cluster")
        compat.reduce_scalar_logs_over_replicas()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """True unless TF_CONFIG names this process as a non-chief worker (worker 0 leads without a chief)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task, cluster = tf_config.get("task", {}), tf_config.get("cluster", {})
    if not task or task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster
