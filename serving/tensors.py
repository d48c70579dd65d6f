"""TensorProto ⇄ numpy for the request path, as TF Serving reads and writes them, without tf.make_ndarray.

Reading is strict: a proto must carry exactly one value per element (in its typed field or in
`tensor_content`), and the element count is checked from the shape before anything is allocated, so
a 60-byte request cannot ask for a 10^8-element tensor. Writing fills the typed fields (`string_val`,
`float_val`, `int_val`, `int64_val`, ...), as TF Serving's Predict does by default, so a client reading
`outputs["perplexity"].float_val` gets its numbers.
"""
from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

_NUMERIC = {  # DataType → (numpy dtype, the typed field TF Serving fills)
    types_pb2.DT_FLOAT: (np.float32, "float_val"), types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"), types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"), types_pb2.DT_HALF: (np.float16, "half_val"),
}
_ENUM = {np.dtype(np_type): enum for enum, (np_type, _) in _NUMERIC.items()}
MAX_ELEMENTS = 1 << 24  # no input of ours comes near this; a shape above it is refused before allocating


def shape_of(proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    """The proto's shape; ValueError for negative or unknown dimensions."""
    if proto.tensor_shape.unknown_rank:
        raise ValueError("tensor shape has unknown rank")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor shape {list(shape)} has a negative dimension")
    return shape


def num_elements(shape: tuple[int, ...]) -> int:
    size = 1
    for dim in shape:
        size *= dim
    return size


def to_numpy(proto: tensor_pb2.TensorProto, max_elements: int = MAX_ELEMENTS) -> np.ndarray:
    """The array a TensorProto holds; ValueError when the values do not fill the shape exactly."""
    shape = shape_of(proto)
    size = num_elements(shape)
    if size > max_elements:
        raise ValueError(f"tensor shape {list(shape)} has {size} elements, more than the {max_elements} allowed")
    if proto.dtype == types_pb2.DT_STRING:
        if len(proto.string_val) != size:
            raise ValueError(f"tensor of shape {list(shape)} needs {size} string_val values, "
                             f"got {len(proto.string_val)}")
        array = np.empty(size, dtype=object)
        array[:] = list(proto.string_val)
        return array.reshape(shape)
    if proto.dtype not in _NUMERIC:
        known = proto.dtype in types_pb2.DataType.values()
        raise ValueError(f"unsupported tensor dtype "
                         f"{types_pb2.DataType.Name(proto.dtype) if known else f'{proto.dtype} (no such DataType)'}")
    np_type, field = _NUMERIC[proto.dtype]
    if proto.tensor_content:
        if len(proto.tensor_content) != size * np.dtype(np_type).itemsize:
            raise ValueError(f"tensor_content of {len(proto.tensor_content)} bytes does not fill shape {list(shape)}")
        return np.frombuffer(proto.tensor_content, dtype=np_type).reshape(shape).copy()
    values = getattr(proto, field)
    if len(values) != size:
        raise ValueError(f"tensor of shape {list(shape)} needs {size} {field} values, got {len(values)}")
    if proto.dtype == types_pb2.DT_HALF:  # half_val holds the float16 bit patterns
        return np.asarray(values, dtype=np.uint16).view(np.float16).reshape(shape)
    return np.asarray(values, dtype=np_type).reshape(shape)


def to_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with the values in the typed field, as TF Serving's Predict responses carry them."""
    array = np.asarray(array)
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                   for d in array.shape])
    flat = array.reshape(-1)
    if array.dtype == object or array.dtype.kind in "SU":
        values = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in flat]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=values)
    if array.dtype not in _ENUM:
        raise TypeError(f"no TensorProto conversion for {array.dtype}")
    enum = _ENUM[array.dtype]
    proto = tensor_pb2.TensorProto(dtype=enum, tensor_shape=shape)
    field = _NUMERIC[enum][1]
    getattr(proto, field).extend((flat.view(np.uint16) if enum == types_pb2.DT_HALF else flat).tolist())
    return proto
