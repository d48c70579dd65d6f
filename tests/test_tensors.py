"""The request path's TensorProto converters agree with TensorFlow's own."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from serving import tensors

ARRAYS = [np.array([b"it has", b""], dtype=object), np.array(b"x", dtype=object),
          np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object), np.array(20, np.int32),
          np.array([1, -2], np.int64), np.array(0.5, np.float32), np.array([[1.5], [2.5]], np.float64),
          np.array([True, False]), np.zeros([0], np.int32), np.zeros([2, 0], dtype=object)]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_round_trips_agree_with_tensorflow(array):
    ours = tensors.to_proto(array)
    assert ours.dtype == tf.make_tensor_proto(array).dtype
    for proto in (ours, tf.make_tensor_proto(array)):
        got, want = tensors.to_numpy(proto), tf.make_ndarray(proto)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)


def test_unicode_strings_are_utf8_encoded():
    proto = tensors.to_proto(np.array(["héllo"], dtype=object))
    assert list(proto.string_val) == ["héllo".encode()]


def test_protos_outside_the_fast_path_fall_back_to_tensorflow():
    broadcast = tf.make_tensor_proto(7, dtype=tf.int32, shape=[3])  # one value filling three elements
    assert broadcast.int_val or broadcast.tensor_content
    np.testing.assert_array_equal(tensors.to_numpy(broadcast), tf.make_ndarray(broadcast))
    half = tf.make_tensor_proto(np.array([1.0, 2.0], np.float16))
    np.testing.assert_array_equal(tensors.to_numpy(half), [1.0, 2.0])
    with pytest.raises((ValueError, TypeError)):
        tensors.to_numpy(tf.make_tensor_proto(np.array([1, 2], np.int32)).__class__(
            dtype=tf.int32.as_datatype_enum, tensor_shape=tf.TensorShape([5]).as_proto(), tensor_content=b"\0" * 3))
