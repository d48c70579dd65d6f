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
        cluster_task(name)  # a clear error before TensorFlow parses it
        compat.reduce_scalar_logs_over_replicas()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def cluster_task(distribute: str) -> dict:
    """This process's task in TF_CONFIG ({} when it trains alone): read only for multi_worker, where a TF_CONFIG
    that is not a JSON object with a task is a UserError; a stray one is ignored otherwise."""
    if distribute != "multi_worker":
        return {}
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
        task = tf_config.get("task", {})
        if not isinstance(task, dict) or not isinstance(tf_config.get("cluster", {}), dict):
            raise ValueError("task and cluster must be objects")
    except (ValueError, AttributeError) as err:
        raise UserError(f"TF_CONFIG is not a cluster description ({err})") from None
    return {**task, "has_chief": "chief" in tf_config.get("cluster", {})}


def is_chief(task: dict) -> bool:
    """True unless the task names this process as a non-chief worker (worker 0 leads without a chief)."""
    if not task or task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and not task.get("has_chief")
