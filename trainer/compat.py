"""Every workaround for a third-party bug or missing extension point, in one place.

Each names its upstream issue and the versions it was written for. On other versions it still applies while the
internals it relies on are there, with a warning asking whether it is still needed; tests/test_compat.py fails
when a pinned version moves, so an upgrade is a decision, not a silent change.
"""
from __future__ import annotations

import importlib.metadata
import json
import warnings

# distribution → the version prefix the workarounds were written for
WRITTEN_FOR = {"keras": "3.15.", "keras-tuner": "1.4.", "tensorflow": "2.21."}


def _check_version(distribution: str, workaround: str, upstream: str) -> None:
    version = importlib.metadata.version(distribution)
    if not version.startswith(WRITTEN_FOR[distribution]):
        warnings.warn(f"trainer.compat.{workaround} was written for {distribution} {WRITTEN_FOR[distribution]}x "
                      f"({upstream}); {distribution} {version} is installed: check whether it is still needed",
                      RuntimeWarning, stacklevel=3)


# ---- Keras: MultiWorkerMirroredStrategy (keras-team/keras#20585) ----

def reduce_scalar_logs_over_replicas() -> None:
    """Keras 3.15 reduces scalar epoch logs along axis 0 under MultiWorkerMirroredStrategy, which fails
    (keras-team/keras#20585); scalars are reduced over replicas only. Applied for multi_worker only."""
    _check_version("keras", "reduce_scalar_logs_over_replicas", "keras-team/keras#20585")
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer.reduce_per_replica, "deep_rnn_patched", False):
        return
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.deep_rnn_patched = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def build_from_local_batch(model, batch, strategy) -> None:
    """Keras 3.15 fit() builds the model from an input batch all-reduced across workers, which fails under
    MultiWorkerMirroredStrategy (keras-team/keras#20585): build it from this worker's own batch, once."""
    _check_version("keras", "build_from_local_batch", "keras-team/keras#20585")
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda *args, **kwargs: None


# ---- KerasTuner ----

def queue_start_points(oracle, points: list[dict]) -> None:
    """The oracle's first fresh points are `points`, in order (Optuna's enqueue_trial). KerasTuner has no such
    API (keras-team/keras-tuner#699); random search, Bayesian optimisation's initial points and Hyperband's new
    brackets all draw a fresh point from the oracle's `_random_values`, which this wraps. A point some trial
    already has (a resumed search) is not queued again. A worker's OracleClient has no such method: the
    chief's oracle does this."""
    if not hasattr(oracle, "_random_values"):
        return
    _check_version("keras-tuner", "queue_start_points", "keras-team/keras-tuner#699")
    tried = [t.hyperparameters.values for t in oracle.trials.values()]
    queue = [p for p in points if not any(all(v.get(k) == x for k, x in p.items()) for v in tried)]
    draw = oracle._random_values

    def queued_then_drawn():
        return dict(queue.pop(0)) if queue else draw()

    oracle._random_values = queued_then_drawn


def drop_finished_retries(oracle) -> None:
    """KerasTuner 1.4's end_trial saves oracle.json while the ended trial is still listed as ongoing (it is
    popped after the save), and reload() queues every ongoing trial for a retry, so a search killed before the
    next trial starts runs a finished trial again (keras-team/keras-tuner#439). trial.json holds the final
    status: COMPLETED and FAILED trials leave the retry queue (INVALID ones are KerasTuner's own retries)."""
    if not hasattr(oracle, "_retry_queue"):  # a worker's OracleClient: the chief's oracle does this
        return
    _check_version("keras-tuner", "drop_finished_retries", "keras-team/keras-tuner#439")
    ended = ("COMPLETED", "FAILED")
    oracle._retry_queue = [t for t in oracle._retry_queue if oracle.trials[t].status not in ended]


def atomic_tuner_state_files() -> None:
    """KerasTuner writes oracle.json and trial.json in place (keras_tuner.src.utils.save_json), so a kill
    mid-write leaves an empty file that stops the next run from reloading (keras-team/keras-tuner#987 is the
    report of a failed reload after a kill); its one JSON writer goes through temporary-name-then-rename."""
    _check_version("keras-tuner", "atomic_tuner_state_files", "keras-team/keras-tuner#987")
    import tensorflow as tf
    from keras_tuner.src import utils as kt_utils

    from common import atomic

    if getattr(kt_utils.save_json, "atomic", False):
        return

    def save_json_atomically(path, obj):
        text = json.dumps(obj)
        tmp = atomic.temp_path(path)
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        return text

    save_json_atomically.atomic = True
    kt_utils.save_json = save_json_atomically


# ---- TensorFlow: running a SavedModel's session as TF Serving does ----

def run_session_as_tf_serving(session, fetch_names: list[str], feeds: dict):
    """The fetched values of a session run with `feeds` (tensor name → numpy array) handed to the C++ session as
    they are. TF Serving does that (tensorflow_serving/servables/tensorflow/predict_util.cc runs the session with
    the request's tensors), so a [3] request reaches a [-1, 1] placeholder and the graph decides; tf.compat.v1's
    Session.run refuses the same feed in Python first ("Cannot feed value of shape", tensorflow/python/client/
    session.py) and has no public way round that check, so this uses the session's own C-binding call."""
    _check_version("tensorflow", "run_session_as_tf_serving", "tensorflow/python/client/session.py feed check")
    graph = session.graph
    feed = {}
    for name, value in feeds.items():
        tensor = graph.get_tensor_by_name(name)
        dtype = object if tensor.dtype.name == "string" else tensor.dtype.as_numpy_dtype
        feed[tensor._as_tf_output()] = value if value.dtype == dtype else value.astype(dtype)
    fetches = [graph.get_tensor_by_name(name)._as_tf_output() for name in fetch_names]
    return session._call_tf_sessionrun(None, feed, fetches, [], None)
