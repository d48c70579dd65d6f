"""TF Serving's REST API on top of the gRPC services: paths, JSON ⇄ tensors, status codes.

Follows tensorflow_serving/model_servers/http_rest_api_util.cc (paths, labels), http_server.cc (gRPC
status → HTTP code) and util/json_tensor.cc (request formats, response shapes, b64, float printing).
"""
from __future__ import annotations

import base64
import codecs
import json
import math
import re

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    regression_pb2,
)

from serving import json_doc
from serving.servable import ServingError, invalid

# http_server.cc ToHTTPStatusCode
_HTTP = {grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
         grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
         grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
         grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
         grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
         grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
         grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500,
         grpc.StatusCode.UNAUTHENTICATED: 401}

_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
_INT64_MAX = 2**63 - 1


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP.get(code, 500)


def handle(services, method: str, path: str, body: bytes) -> str:
    """One REST call → the JSON text of a 200 answer; ServingError for everything else."""
    path = path.split("?", 1)[0]
    if not re.fullmatch(r"/v1/.*", path, re.I):
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {method} {path[:200]}")
    malformed = invalid(f"Malformed request: {method} {path[:200]}")
    match = (_PREDICTION_PATH if method == "POST" else _STATUS_PATH).fullmatch(path) \
        if method in ("POST", "GET") else None
    if not match:
        raise malformed
    from urllib.parse import unquote

    name, version_text, label = (unquote(g) if g else g for g in match.groups()[:3])
    version = None
    if version_text:
        if len(version_text) > 19 or int(version_text) > _INT64_MAX:
            raise invalid(f"Failed to convert version: {version_text[:40]} to numeric.")
        version = int(version_text)
    if version is not None and label:
        raise invalid(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
    if method == "GET":
        if not name:
            raise invalid("Missing model name in request.")
        if match.group(4) == "metadata":
            return _metadata(services, name, version, label)
        request = get_model_status_pb2.GetModelStatusRequest()
        _fill_spec(request.model_spec, name, version, label)
        response = services.get_model_status(request)
        return json_format.MessageToJson(response, always_print_fields_with_no_presence=True)
    doc = parse_json(body)
    action = match.group(4).lower()
    if action == "predict":
        return _predict(services, name, version, label, doc)
    request = (classification_pb2.ClassificationRequest() if action == "classify"
               else regression_pb2.RegressionRequest())
    _fill_spec(request.model_spec, name, version, label)
    request.model_spec.signature_name = _signature_name(doc)
    _fill_examples(request.input, doc)
    response = getattr(services, action)(request)
    if action == "classify":
        return json_doc.dumps({"results": [[[c.label, json_doc.decimal(np.float32(c.score))] for c in row.classes]
                                           for row in response.result.classifications]})
    return json_doc.dumps({"results": [json_doc.decimal(np.float32(r.value)) for r in response.result.regressions]})


# ---- JSON examples → tf.Example (json_tensor.cc FillClassificationRequestFromJson) ----
def _fill_examples(request_input, doc: dict) -> None:
    """The context (when given) first, then the examples, each checked as TF Serving checks them (its texts
    say "classify" for :regress too)."""
    if "context" in doc:
        listed = request_input.example_list_with_context
        fill_example(listed.context, doc["context"])
    else:
        listed = request_input.example_list
    if "examples" not in doc:
        raise invalid(f"JSON Value: {_short(doc)} When method is classify, key 'examples' is expected and was "
                      "not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {_short(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {_short(doc)} 'examples' value is an empty array")
    for example in examples:
        fill_example(listed.examples.add(), example)


def fill_example(example, value) -> None:
    """json_tensor.cc MakeExampleFromJsonObject: each feature's kind is its first value's; a list of none
    leaves the feature without a kind."""
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, feature_value in value.items():
        feature = example.features.feature[name]
        kind = None
        for item in feature_value if isinstance(feature_value, list) else [feature_value]:
            item_kind, item = _feature_value(item, name)
            if kind not in (None, item_kind):
                raise invalid(f"Unexpected element type in feature: {name} expecting type: {kind}")
            kind = item_kind
            getattr(feature, f"{item_kind}_list").value.append(item)


def _feature_value(item, name: str) -> tuple[str, object]:
    """(feature kind, value) of one JSON value in an example (json_tensor.cc AddValueToFeature)."""
    if isinstance(item, bool):
        return "int64", int(item)
    if _is_b64(item):
        try:
            return "bytes", base64.b64decode(item["b64"], validate=True)
        except ValueError:
            raise invalid("Unable to base64 decode") from None
    if isinstance(item, str):
        return "bytes", item.encode("utf-8", errors="surrogatepass")
    if _held_as_integer(item):
        if item >= 2**63:
            raise invalid(f"Feature: {name} has uint64 element. Only int64_t is supported.")
        return "int64", item
    if isinstance(item, (int, float)):
        if not _lossless(item, to_float32=True):
            raise invalid(f"Cannot convert JSON value: {_short(item)} to float without loss of precision.")
        return "float", float(item)
    raise invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(item)}")


def _fill_spec(spec, name, version, label) -> None:
    spec.name = name
    if version is not None:
        spec.version.value = version
    elif label:
        spec.version_label = label


def _metadata(services, name, version, label) -> str:
    """GetModelMetadata as TF Serving prints it: proto field names, every field, every signature."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    _fill_spec(request.model_spec, name, version, label)
    response = services.get_model_metadata(request)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return json.dumps({"model_spec": json_format.MessageToDict(response.model_spec, **options),
                       "metadata": {"signature_def": json_format.MessageToDict(signatures, **options)}}, indent=1)


def parse_json(body: bytes):
    """json_tensor.cc ParseJson: a non-empty JSON object (NaN and Infinity allowed), errors in RapidJSON's words."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    if body.startswith(codecs.BOM_UTF8):  # RapidJSON's UTF-8 input stream skips a byte-order mark
        body = body[len(codecs.BOM_UTF8):]
    try:
        doc = json_doc.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: {err.start}") from None
    except json_doc.ParseError as err:
        raise invalid(f"JSON Parse error: {err}") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_short(doc)} Is not object")
    return doc


def _signature_name(doc: dict) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"JSON Value: {_short(doc)} not formatted correctly. "
                      "'signature_name' key must be a string value.")
    return name


def _short(value) -> str:
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        text = "..."
    return text if len(text) <= 200 else text[:200] + "..."


def _predict(services, name, version, label, doc) -> str:
    request = predict_pb2.PredictRequest()
    _fill_spec(request.model_spec, name, version, label)
    request.model_spec.signature_name = _signature_name(doc)
    servable = services._servable(request.model_spec)
    signature_name = request.model_spec.signature_name or "serving_default"
    if signature_name not in servable.signature_defs:
        raise invalid(f'Serving signature name: "{signature_name}" not found in signature def')
    infos = servable.signature_defs[signature_name].inputs
    if not infos:
        raise invalid(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    if "instances" in doc and "inputs" in doc:
        raise invalid(f"JSON Value: {_short(doc)} Not formatted correctly expecting only one of 'inputs' or "
                      "'instances' keys to exist ")
    try:
        if "instances" in doc:
            row_format, inputs = True, _from_instances(doc["instances"], infos, doc)
        elif "inputs" in doc:
            row_format, inputs = False, _from_inputs(doc["inputs"], infos)
        else:
            raise invalid("Missing 'inputs' or 'instances' key")
    except RecursionError:
        raise invalid("JSON Value nested too deeply") from None
    except ValueError as err:  # numpy's own limits, e.g. more than 64 dimensions
        raise invalid(f"JSON Value cannot be a tensor: {' '.join(str(err).split())[:200]}") from None
    outputs = servable.predict(signature_name, inputs)
    return json_doc.dumps(_rows(outputs) if row_format else _columns(outputs))


# ---- JSON → tensors (json_tensor.cc FillTensorMapFromInstancesList / FillTensorMapFromInputsMap) ----
def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _type_name(dtype: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT → float, DT_HALF → half."""
    return types_pb2.DataType.Name(dtype)[3:].lower()


def _leaf(value, dtype: int):
    def type_error():
        return invalid(f"JSON Value: {_short(value)} Type: {_json_type(value)} is not of expected type: "
                       f"{_type_name(dtype)}")

    if dtype == types_pb2.DT_STRING:
        if _is_b64(value):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise invalid("Unable to base64 decode") from None
        if isinstance(value, dict):
            raise invalid(f"JSON Value: {_short(value)} not formatted correctly for base64 data")
        if not isinstance(value, str):
            raise type_error()
        return value.encode("utf-8", errors="surrogatepass")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if dtype == types_pb2.DT_BOOL and isinstance(value, bool):
            return value
        raise type_error()
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        if not _lossless(value, dtype == types_pb2.DT_FLOAT):
            kind = "float" if dtype == types_pb2.DT_FLOAT else "double"
            raise invalid(f"Cannot convert JSON value: {_short(value)} to {kind} without loss of precision.")
        return value
    low, high = _INTEGER_RANGES.get(dtype, (1, 0))  # RapidJSON's IsInt, IsInt64, IsUint, IsUint64
    if isinstance(value, int) and low <= value <= high:
        return value
    raise type_error()


_INTEGER_RANGES = {**dict.fromkeys((types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8),
                                   (-2**31, 2**31 - 1)),
                   types_pb2.DT_INT64: (-2**63, 2**63 - 1), types_pb2.DT_UINT32: (0, 2**32 - 1),
                   types_pb2.DT_UINT64: (0, 2**64 - 1)}
_FLOAT32_MAX = 3.4028234663852886e38


def _lossless(value, to_float32: bool) -> bool:
    """json_tensor.cc IsLosslessDecimal: an integer RapidJSON holds as one (int64 or uint64) must be exact in the
    type's significand; a double (a larger integer too), finite, must be within the type's range."""
    if _held_as_integer(value):
        return abs(value) <= (2**24 - 1 if to_float32 else 2**53 - 1)
    try:
        number = float(value)
    except OverflowError:  # an integer literal beyond any double (RapidJSON: "Number too big")
        return False
    return not to_float32 or not math.isfinite(number) or -_FLOAT32_MAX <= number <= _FLOAT32_MAX


def _held_as_integer(value) -> bool:
    """Whether RapidJSON holds a JSON number as an integer (int64 or uint64); a larger one it reads as a double."""
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**64


_NUMPY = {types_pb2.DT_STRING: object, types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
          types_pb2.DT_INT32: np.int32, types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_,
          types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8, types_pb2.DT_UINT8: np.uint8,
          types_pb2.DT_UINT32: np.uint32, types_pb2.DT_UINT64: np.uint64}


def json_to_array(value, dtype: int) -> np.ndarray:
    """A dense JSON value (scalar or nested lists) → an array of the signature's dtype, TF Serving's checks."""
    if dtype not in _NUMPY:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: {_short(value)} to type: "
                                                          f"{_type_name(dtype)}")
    shape = _dense_shape(value)
    leaves = []

    def walk(v, level):
        if not isinstance(v, list):
            if level != len(shape):
                raise invalid(f"JSON Value: {_short(v)} found at incorrect level: {level + 1} in the JSON DOM. "
                              f"Expected at level: {len(shape)}")
            leaves.append(_leaf(v, dtype))
            return
        if level >= len(shape):
            raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(v) != shape[level]:
            raise invalid(f"Encountered list at unexpected size: {len(v)} at level: {level} "
                          f"expected size: {shape[level]}")
        for item in v:
            walk(item, level + 1)

    walk(value, 0)
    array = np.empty(len(leaves), dtype=object) if dtype == types_pb2.DT_STRING else None
    if array is not None:
        array[:] = leaves
    else:  # floats round from doubles (RapidJSON's GetFloat); int8/int16/uint8 keep an int32's low bits
        array = np.asarray(leaves, dtype=_READ_AS.get(dtype, _NUMPY[dtype])).astype(_NUMPY[dtype], copy=False)
    return array.reshape(shape)


_READ_AS = {types_pb2.DT_FLOAT: np.float64, types_pb2.DT_INT16: np.int64, types_pb2.DT_INT8: np.int64,
            types_pb2.DT_UINT8: np.int64}


def _from_instances(instances, infos, doc) -> dict:
    if not isinstance(instances, list):
        raise invalid(f"JSON Value: {_short(doc)} Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid(f"JSON Value: {_short(doc)} No values in 'instances' array")
    names = sorted(infos)

    def is_object(v):
        return isinstance(v, dict) and not _is_b64(v)

    if not is_object(instances[0]) and len(infos) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input tensors "
                      "required as per tensorinfo_map")
    named = is_object(instances[0])
    columns: dict[str, list] = {n: [] for n in names}
    for i, item in enumerate(instances):
        if named != is_object(item):
            raise invalid(f"Expecting {'object' if named else 'value/list'} but got "
                          f"{'list' if named else 'object'} at item {i} of input list")
        if not named:
            _add_instance_item(columns, names[0], item, infos, f"Failed to process element: {i} of 'instances' "
                                                                 "list. Error: ")
            continue
        for key, value in item.items():
            _add_instance_item(columns, key, value, infos, f"Failed to process element: {i} key: {key} of "
                                                           "'instances' list. Error: ")
        if set(item) != set(names):
            raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: {_short(item)} "
                          f"keys must be equal to: {','.join(names)}")
    return {key: (np.stack(arrays) if arrays[0].dtype != object else _stack_objects(arrays))
            for key, arrays in columns.items()}


def _add_instance_item(columns: dict[str, list], name: str, value, infos, context: str) -> None:
    """json_tensor.cc AddInstanceItem: one instance's value of one input, the same size and then the same shape
    as the first instance's; an error names the element (`context`) and wraps the cause as TF Serving does."""
    try:
        if name not in infos:
            raise invalid(f"JSON object: does not have named input: {name}")
        array = json_to_array(value, infos[name].dtype)
        if columns[name]:
            first = columns[name][0]
            if array.size != first.size:
                raise invalid(f"Expecting tensor size: {first.size} but got: {array.size}")
            if array.shape != first.shape:
                raise invalid(f"Expecting shape {_shape_text(first.shape)} but got: {_shape_text(array.shape)}")
    except ServingError as err:
        raise invalid(f"{context}{err.code.name}: {err.message}") from None
    columns[name].append(array)


def _shape_text(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _stack_objects(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty((len(arrays),) + arrays[0].shape, dtype=object)
    for i, a in enumerate(arrays):
        out[i, ...] = a  # element-wise: `out[i] = a` would store a 0-d array object
    return out


def _from_inputs(value, infos) -> dict:
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                          "required as per tensorinfo_map")
        name = next(iter(infos))
        return {name: json_to_array(value, infos[name].dtype)}
    inputs = {}
    for name, info in infos.items():
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        inputs[name] = json_to_array(value[name], info.dtype)
    return inputs  # other keys are ignored, as TF Serving does


# ---- tensors → JSON (json_tensor.cc MakeRowFormatJsonFromTensors / MakeColumnarFormatJsonFromTensors) ----
def _json_value(name: str, value):
    if isinstance(value, np.ndarray):
        return _json_value(name, value[()]) if value.ndim == 0 else [_json_value(name, v) for v in value]
    if isinstance(value, bytes):
        if name.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.floating):
        return json_doc.decimal(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _rows(outputs: dict) -> dict:
    batch = None
    for name, value in outputs.items():
        if np.ndim(value) == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch is not None and len(value) != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {len(value)} expecting: {batch}")
        batch = len(value)
    names = sorted(outputs)
    if len(names) == 1:
        return {"predictions": [_json_value(names[0], v) for v in outputs[names[0]]]}
    return {"predictions": [{n: _json_value(n, outputs[n][i]) for n in names} for i in range(batch or 0)]}


def _columns(outputs: dict) -> dict:
    names = sorted(outputs)
    if len(names) == 1:
        return {"outputs": _json_value(names[0], outputs[names[0]])}
    return {"outputs": {n: _json_value(n, outputs[n]) for n in names}}
