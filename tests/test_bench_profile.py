"""bench.train_profile's reader of tf.profiler traces: op time by type from the host plane."""
from __future__ import annotations


def test_op_times_counts_the_ops_that_ran(tmp_path):
    import tensorflow as tf

    from bench.train_profile import op_times

    a = tf.random.normal((64, 64))
    step = tf.function(lambda a: tf.reduce_sum(tf.tanh(tf.matmul(a, a))))
    step(a)
    tf.profiler.experimental.start(str(tmp_path))
    for _ in range(3):
        step(a).numpy()
    tf.profiler.experimental.stop()
    millis, counts = op_times(str(tmp_path))
    assert counts["MatMul"] == 3 and counts["Tanh"] == 3
    assert millis["MatMul"] > 0
    assert not {"Process", "Record", "StartRegion", "Run"} & set(counts)  # runtime events are not ops
