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


def test_onednn_rewritten_op_types_map_back_to_their_tf_op():
    """Op types as the profiler recorded them on an Intel Xeon with oneDNN's rewrites (TF 2.21)."""
    from bench.train_profile import tf_op_type

    recorded = {"_MklMatMul": "MatMul", "_MklNativeFusedMatMul": "_FusedMatMul", "_MklFusedMatMul": "_FusedMatMul",
                "_MklBatchMatMulV2": "BatchMatMulV2", "_MklNativeConv2D": "Conv2D", "_MklEinsum": "Einsum",
                "_MklToTf": "_MklToTf", "MatMul": "MatMul", "Tanh": "Tanh", "_FusedMatMul": "_FusedMatMul"}
    assert {name: tf_op_type(name) for name in recorded} == recorded
