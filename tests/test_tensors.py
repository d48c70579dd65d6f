"""The request path's TensorProto converters agree with TensorFlow's own."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

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


def test_half_floats_round_trip():
    half = tf.make_tensor_proto(np.array([1.0, 2.0], np.float16))
    np.testing.assert_array_equal(tensors.to_numpy(half), [1.0, 2.0])
    np.testing.assert_array_equal(tensors.to_numpy(tensors.to_proto(np.array([0.5], np.float16))), [0.5])


def test_outputs_fill_the_typed_fields_as_tf_serving_does():
    """TF Serving's Predict answers with AsProtoField: float_val, int_val, int64_val, string_val."""
    assert list(tensors.to_proto(np.array([1.5, 2.5], np.float32)).float_val) == [1.5, 2.5]
    assert list(tensors.to_proto(np.array([3], np.int32)).int_val) == [3]
    assert list(tensors.to_proto(np.array([4], np.int64)).int64_val) == [4]
    assert not tensors.to_proto(np.array([1.5], np.float32)).tensor_content


@pytest.mark.parametrize("proto", [
    tf.make_tensor_proto(7, dtype=tf.int32, shape=[3]),                         # one value for three elements
    tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"x"],
                           tensor_shape=tf.TensorShape([1000000]).as_proto()),  # the hostile 60-byte request
    tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[1],
                           tensor_shape=tf.TensorShape([10**8]).as_proto()),
    tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_content=b"\0" * 3,
                           tensor_shape=tf.TensorShape([5]).as_proto()),
    tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"a", b"b", b"c"],
                           tensor_shape=tf.TensorShape([2]).as_proto()),
], ids=["broadcast", "1e6-strings-one-value", "1e8-ints-one-value", "short-content", "too-many-values"])
def test_values_that_do_not_fill_the_shape_are_refused_before_allocating(proto):
    with pytest.raises(ValueError):
        tensors.to_numpy(proto)
