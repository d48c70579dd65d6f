"""The third-party workarounds in trainer.compat: each still needed and still applicable on the pinned versions.
A version bump fails here first, so whoever bumps it decides whether each workaround stays."""
from __future__ import annotations

import importlib.metadata
import inspect

import pytest

from trainer import compat


@pytest.mark.parametrize("distribution", sorted(compat.WRITTEN_FOR))
def test_the_pinned_versions_are_the_ones_the_workarounds_were_written_for(distribution):
    version = importlib.metadata.version(distribution)
    assert version.startswith(compat.WRITTEN_FOR[distribution]), (
        f"{distribution} {version}: review every workaround in trainer/compat.py written for "
        f"{compat.WRITTEN_FOR[distribution]}x, then update WRITTEN_FOR")


def test_keras_multi_worker_internals_are_still_there():
    """keras-team/keras#20585: the per-replica reduction and the symbolic build the two workarounds replace."""
    import keras
    from keras.src.backend.tensorflow import trainer as tf_trainer

    assert callable(tf_trainer.reduce_per_replica) and callable(tf_trainer._collective_all_reduce_multi_worker)
    assert hasattr(keras.Model, "_symbolic_build") and hasattr(keras.Model, "_maybe_symbolic_build")
    # still the axis-0 concatenation for multi-worker values that fails on scalars
    assert "_collective_all_reduce_multi_worker" in inspect.getsource(tf_trainer.reduce_per_replica)


def test_keras_tuner_still_draws_fresh_points_from_random_values():
    """keras-team/keras-tuner#699: no public way to queue start points; every oracle still draws from
    _random_values, and queue_start_points makes the queued point the next one drawn."""
    import keras_tuner as kt

    for oracle_class in (kt.oracles.RandomSearchOracle, kt.oracles.BayesianOptimizationOracle,
                         kt.oracles.HyperbandOracle):
        assert "_random_values" in inspect.getsource(oracle_class), oracle_class
    hp = kt.HyperParameters()
    hp.Int("units", 1, 100)
    oracle = kt.oracles.RandomSearchOracle(objective="loss", max_trials=3, hyperparameters=hp, seed=0)
    compat.queue_start_points(oracle, [{"units": 42}])
    assert oracle._random_values() == {"units": 42}
    assert set(oracle._random_values()) == {"units"}  # then the oracle's own draws


def test_keras_tuner_still_saves_before_it_ends_a_trial_and_writes_json_in_place():
    """keras-team/keras-tuner#439 and #987: end_trial saves oracle.json before popping the ongoing trial, and
    save_json writes in place (no rename): the two behaviours drop_finished_retries and
    atomic_tuner_state_files exist for."""
    from keras_tuner.src import utils as kt_utils
    from keras_tuner.src.engine import oracle as oracle_module

    module = inspect.getsource(oracle_module)  # end_trial is wrapped by @synchronized: read the method's text
    start = module.index("    @synchronized\n    def end_trial(self, trial):")
    source = module[start:module.index("\n    def ", start + 30)]
    assert "self.save()" in source and "ongoing_trials.pop" in source
    assert source.index("self.save()") < source.index("ongoing_trials.pop"), "upstream now pops before saving"
    assert hasattr(oracle_module.Oracle, "reload")
    writer = inspect.getsource(kt_utils.save_json)
    if getattr(kt_utils.save_json, "atomic", False):
        pytest.skip("already replaced in this process")
    assert "rename" not in writer and "replace" not in writer, "upstream save_json is atomic now"


def test_tensorflow_sessions_still_check_feed_shapes_in_python_and_the_c_binding_call_is_there():
    """run_session_as_tf_serving exists because tf.compat.v1's Session.run refuses a feed whose shape differs from
    the placeholder's in Python, which TF Serving's C++ path does not; it goes through the session's C binding."""
    import numpy as np
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
        y = tf.multiply(x, 0.5, name="y")
    with tf.compat.v1.Session(graph=graph) as session:
        with pytest.raises(ValueError, match="Cannot feed value of shape"):
            session.run(y, {x: np.array([1.0, 2.0], np.float32)})
        (value,) = compat.run_session_as_tf_serving(session, ["y:0"], {"x:0": np.array([1.0, 2.0], np.float32)})
    np.testing.assert_allclose(value, [0.5, 1.0])
