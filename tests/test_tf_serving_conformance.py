"""The stand-in answers as TensorFlow Serving does: a client written from TF Serving's documentation works unchanged.

Each case names the TF Serving document or source it comes from:
- [REST] https://www.tensorflow.org/tfx/serving/api_rest (request/response formats, b64, labels, errors)
- [json_tensor.cc] tensorflow_serving/util/json_tensor.cc (row/columnar parsing and printing)
- [rest_util.cc] tensorflow_serving/model_servers/http_rest_api_util.cc (paths, version/label parsing)
- [http_server.cc] tensorflow_serving/model_servers/http_server.cc (gRPC status → HTTP code)
- [handler_test.cc] tensorflow_serving/model_servers/http_rest_api_handler_test.cc
- [predict.proto] tensorflow_serving/apis/predict.proto, model.proto, get_model_status.proto
- [predict_util.cc] tensorflow_serving/servables/tensorflow/predict_util.cc (input/output checks)
- [classifier.cc] / [regressor.cc] / [multi_inference.cc] tensorflow_serving/servables/tensorflow/
- [config] tensorflow_serving/config/model_server_config.proto (version policies, labels)
When `tensorflow_model_server` is on PATH the same cases also run against it.
"""
from __future__ import annotations

import base64
import codecs
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from common.net import free_port
from serving.service import Server
from tests.conftest import ROOT, SHARED_DATA

MODELS_CONFIG = """model_config_list {{
  config {{
    name: "deep_rnn"
    base_path: "{base}/deep_rnn"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "latest_rnn"
    base_path: "{base}/latest_rnn"
    model_platform: "tensorflow"
  }}
}}
"""


# ---- a client written from TF Serving's documentation, used for both servers ----
def rest(url: str, body=None, raw: bytes | None = None, method: str | None = None, headers=None):
    """(HTTP status, parsed JSON body) of one REST call."""
    code, text = rest_text(url, body, raw, method, headers)
    return code, json.loads(text) if text.strip().startswith("{") else {"raw": text}


def rest_text(url: str, body=None, raw: bytes | None = None, method: str | None = None, headers=None):
    """(HTTP status, body text) of one REST call: the numbers as the server wrote them."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def string_tensor(values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[v.encode() for v in values])
    proto.tensor_shape.dim.add(size=len(values))
    return proto


def int_scalar(value: int, dtype=types_pb2.DT_INT32) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    (proto.int64_val if dtype == types_pb2.DT_INT64 else proto.int_val).append(value)
    return proto


def predict(channel, signature: str, inputs: dict, name="deep_rnn", version=None, label=None, output_filter=()):
    req = predict_pb2.PredictRequest()
    req.model_spec.name, req.model_spec.signature_name = name, signature
    if version is not None:
        req.model_spec.version.value = version
    if label:
        req.model_spec.version_label = label
    for key, proto in inputs.items():
        req.inputs[key].CopyFrom(proto)
    req.output_filter.extend(output_filter)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(req, timeout=60)


def status_of(channel, name: str, version=None):
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = name
    if version is not None:
        req.model_spec.version.value = version
    return model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(req, timeout=30)


def _kinds():
    return ["stand-in"] + (["tensorflow_model_server"] if shutil.which("tensorflow_model_server") else [])


@pytest.fixture(scope="module", params=_kinds())
def served(request, exported, tmp_path_factory):
    """(grpc channel, REST base URL, export base) with deep_rnn v1+v2 (specific policy, labels) and latest_rnn v1."""
    base = tmp_path_factory.mktemp("conformance")
    for name, versions in (("deep_rnn", (1, 2)), ("latest_rnn", (1,))):
        for v in versions:
            shutil.copytree(exported / "deep_rnn" / "1", base / name / str(v))
    config = base / "models.config"
    config.write_text(MODELS_CONFIG.format(base=base))
    if request.param == "stand-in":
        server = Server(model_config_file=str(config), port=0, rest_port=0, poll_seconds=0.2,
                        max_request_bytes=1 << 20)
        grpc_port, rest_port, stop = server.port, server.rest_port, server.stop
    else:
        grpc_port, rest_port = free_port(), free_port()
        proc = subprocess.Popen(["tensorflow_model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                                 f"--model_config_file={config}", "--file_system_poll_wait_seconds=1"])
        stop = proc.terminate
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    deadline = time.time() + 120
    while True:
        try:
            states = {s.version: s.state for s in status_of(channel, "deep_rnn").model_version_status}
            if states.get(1) == states.get(2) == get_model_status_pb2.ModelVersionStatus.AVAILABLE:
                break
        except grpc.RpcError:
            pass
        assert time.time() < deadline, "server never loaded both versions"
        time.sleep(0.5)
    yield channel, f"http://127.0.0.1:{rest_port}", base
    stop()


# ---- REST ----
def test_rest_row_format_stacks_every_input_and_returns_unnamed_predictions(served):
    """[REST] 'instances': each named input is stacked across rows, so a per-row num_chars is [N];
    [json_tensor.cc] one output → 'predictions' is a plain list."""
    _, url, _ = served
    code, body = rest(f"{url}/v1/models/deep_rnn:predict", {"instances": [
        {"prefix": "it has", "num_chars": 20}, {"prefix": "the", "num_chars": 5}]})
    assert code == 200, body
    assert isinstance(body["predictions"][0], str) and len(body["predictions"][1]) == len("the") + 5
    code, columnar = rest(f"{url}/v1/models/deep_rnn:predict", {"inputs": {"prefix": ["it has"], "num_chars": 20}})
    assert code == 200 and columnar == {"outputs": [body["predictions"][0]]}  # [json_tensor.cc] columnar: no name


def test_rest_sample_in_row_format(served):
    """[REST] a sampled generation per row: temperature, top_k and seed are stacked like every input."""
    _, url, _ = served
    rows = [{"prefix": "it has", "num_chars": 12, "temperature": 0.8, "top_k": 3, "seed": 7},
            {"prefix": "it has", "num_chars": 12, "temperature": 0.8, "top_k": 3, "seed": 7}]
    code, body = rest(f"{url}/v1/models/deep_rnn:predict", {"signature_name": "sample", "instances": rows})
    assert code == 200, body
    assert body["predictions"][0] == body["predictions"][1]  # same row, same seed: same text


def test_rest_multiple_outputs_are_named_objects_in_both_formats(served):
    """[json_tensor.cc] several outputs: row format gives one object per row, columnar one object of lists."""
    _, url, _ = served
    code, rows = rest(f"{url}/v1/models/deep_rnn:predict",
                      {"signature_name": "score", "instances": ["the time traveller", "it has"]})
    assert code == 200, rows
    assert set(rows["predictions"][0]) == {"log_likelihood", "num_tokens", "perplexity"}
    assert rows["predictions"][0]["num_tokens"] == 17  # single-input shorthand: plain values as instances
    code, cols = rest(f"{url}/v1/models/deep_rnn:predict",
                      {"signature_name": "score", "inputs": ["the time traveller", "it has"]})
    assert code == 200 and cols["outputs"]["num_tokens"] == [17, 5]
    assert cols["outputs"]["perplexity"][0] == rows["predictions"][0]["perplexity"]


def test_rest_floats_are_printed_by_write_decimal(served):
    """[json_tensor.cc WriteDecimal] six significant digits when they read back as the same float32, else nine;
    the text reads back as the float gRPC returns."""
    from serving.json_doc import decimal

    channel, url, _ = served
    _, text = rest_text(f"{url}/v1/models/deep_rnn:predict", {"signature_name": "score", "inputs": ["it has been"]})
    grpc_value = predict(channel, "score", {"text": string_tensor(["it has been"])}).outputs["perplexity"].float_val[0]
    printed = decimal(np.float32(grpc_value))
    assert printed in text and np.float32(json.loads(text)["outputs"]["perplexity"][0]) == np.float32(grpc_value)


def test_rest_b64_strings(served):
    """[REST] binary values as {"b64": ...}; the same text plain or base64-encoded gives the same answer."""
    _, url, _ = served
    encoded = {"b64": base64.b64encode(b"it has").decode()}
    code, body = rest(f"{url}/v1/models/deep_rnn:predict", {"instances": [{"prefix": encoded, "num_chars": 5}]})
    _, plain = rest(f"{url}/v1/models/deep_rnn:predict", {"instances": [{"prefix": "it has", "num_chars": 5}]})
    assert code == 200 and body == plain


@pytest.mark.parametrize("body, needle", [
    ({"instances": [{"prefix": "a", "num_chars": 1}], "inputs": {"prefix": ["a"], "num_chars": 1}},
     "only one of 'inputs' or 'instances'"),                                                   # [json_tensor.cc]
    ({"signature_name": 100, "inputs": {}}, "'signature_name' key must be a string value."),   # [handler_test.cc]
    ({"signature_name": ["score"], "inputs": {}}, "'signature_name' key must be a string value."),
    ({"instances": []}, "No values in 'instances' array"),                                     # [json_tensor.cc]
    ({"inputs": {"prefix": ["a"]}}, "Missing named input: num_chars"),                         # [json_tensor.cc]
    ({"instances": [{"prefix": "a"}]}, "keys must be equal to"),                               # [json_tensor.cc]
    ({"instances": ["a", "b"]}, "instances is a plain list"),                                  # [json_tensor.cc]
    ({"inputs": {"prefix": ["a"], "num_chars": 2.5}}, "is not of expected type: int32"),      # [handler_test.cc]
    ({"inputs": {"prefix": [["a"], "b"], "num_chars": 1}}, "found at incorrect level"),        # [json_tensor.cc]
    ({"signature_name": "nope", "inputs": {}}, 'Serving signature name: "nope" not found'),   # [handler]
    ({}, "Missing 'inputs' or 'instances' key"),                                               # [json_tensor.cc]
])
def test_rest_malformed_bodies_are_400_with_tf_servings_reason(served, body, needle):
    _, url, _ = served
    code, answer = rest(f"{url}/v1/models/deep_rnn:predict", body)
    assert code == 400 and needle in answer["error"], answer


def test_rest_body_errors(served):
    """[handler_test.cc] empty document, badly formatted JSON, a top level that is not an object."""
    _, url, _ = served
    predict_url = f"{url}/v1/models/deep_rnn:predict"
    assert rest(predict_url, raw=b"", method="POST")[1]["error"] == "JSON Parse error: The document is empty"
    assert "JSON Parse error" in rest(predict_url, raw=b"instances = [1, 2]")[1]["error"]
    assert rest(predict_url, raw=b"[1, 2]")[0] == 400
    assert rest(predict_url, raw=b"[" * 100000)[0] == 400  # nested too deeply: an answer, not a dropped connection


def test_rest_status_json(served):
    """[REST] model status: proto JSON with json_name fields, versions as strings, status always printed."""
    _, url, _ = served
    code, body = rest(f"{url}/v1/models/deep_rnn/versions/1")
    assert code == 200
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                              "status": {"error_code": "OK", "error_message": ""}}]}
    code, body = rest(f"{url}/v1/models/deep_rnn/labels/canary")
    assert code == 200 and body["model_version_status"][0]["version"] == "2"
    assert rest(f"{url}/v1/models")[1]["error"] == "Missing model name in request."  # [handler_test.cc]


def test_rest_metadata_uses_proto_field_names_and_lists_every_signature(served):
    """[rest_util.cc] ToJsonString(GetModelMetadataResponse): preserve_proto_field_names, every signature_def."""
    _, url, _ = served
    code, body = rest(f"{url}/v1/models/deep_rnn/versions/2/metadata")
    assert code == 200
    assert body["model_spec"] == {"name": "deep_rnn", "version": "2", "signature_name": ""}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "sample", "score", "__saved_model_init_op"} <= set(signatures)
    score = signatures["score"]
    assert score["method_name"] == "tensorflow/serving/predict"
    assert score["inputs"]["text"]["dtype"] == "DT_STRING"
    assert score["inputs"]["text"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]


def test_rest_versions_and_labels(served):
    """[REST] /versions/N and /labels/L paths; [handler_test.cc] an unknown label is INVALID_ARGUMENT (400)."""
    _, url, _ = served
    body = {"inputs": {"prefix": ["it has"], "num_chars": 3}}
    assert rest(f"{url}/v1/models/deep_rnn/versions/1:predict", body)[0] == 200
    assert rest(f"{url}/v1/models/deep_rnn/labels/stable:predict", body)[0] == 200
    code, answer = rest(f"{url}/v1/models/deep_rnn/labels/nope:predict", body)
    assert code == 400 and "Unrecognized servable version label: nope" in answer["error"]
    assert rest(f"{url}/v1/models/deep_rnn/versions/7:predict", body)[0] == 404
    code, answer = rest(f"{url}/v1/models/deep_rnn/versions/{'9' * 5000}:predict", body)
    assert code == 400 and "Failed to convert version" in answer["error"]  # [handler_test.cc]


@pytest.mark.parametrize("method, path", [("GET", "/v1/foo"), ("POST", "/v1/foo"), ("POST", "/v1/models"),
                                          ("GET", "/v1/models/deep_rnn:predict"),
                                          ("GET", "/v1/models/debug/model_name"),
                                          ("POST", "/v1/models/deep_rnn/metadata"),
                                          ("POST", "/v1/models/deep_rnn/versions/1/labels/x:predict")])
def test_rest_malformed_paths(served, method, path):
    """[handler_test.cc] UnsupportedApiCalls: 'Malformed request', INVALID_ARGUMENT → 400."""
    _, url, _ = served
    code, answer = rest(url + path, raw=b"{}" if method == "POST" else None, method=method)
    assert code == 400 and "Malformed request" in answer["error"], answer


def test_rest_classify_and_regress_explain_why_not(served):
    """[classifier.cc] / [regressor.cc]: a predict signature is no classification/regression signature."""
    _, url, _ = served
    code, answer = rest(f"{url}/v1/models/deep_rnn:classify", {"examples": [{"x": 1.0}]})
    assert code == 400 and answer["error"] == "Expected one input Tensor."
    code, answer = rest(f"{url}/v1/models/deep_rnn:regress", {"signature_name": "score", "examples": [{"x": 1.0}]})
    assert code == 400 and answer["error"] == "Expected one output Tensor."
    code, answer = rest(f"{url}/v1/models/deep_rnn:classify", {"signature_name": "score", "examples": [{}]})
    assert code == 400 and answer["error"] == "Expected one or two output Tensors, found 3"


def test_rest_content_length_abuse_gets_an_answer(served):
    """Bad Content-Length headers are a 400 answer, never a hang or a 200."""
    _, url, _ = served
    host, port = url.rsplit("/", 1)[1].split(":")
    for header in (b"abc", b"-1"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/models/deep_rnn:predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + header +
                         b"\r\n\r\n{}")
            assert sock.recv(100).startswith(b"HTTP/1.1 400"), header


# ---- gRPC ----
def test_grpc_outputs_fill_typed_fields(served):
    """[predict.proto] TF Serving answers with typed fields (AsProtoField), not tensor_content."""
    channel = served[0]
    scored = predict(channel, "score", {"text": string_tensor(["the time traveller"])})
    assert scored.outputs["num_tokens"].int_val[0] == 17
    assert 1.0 < scored.outputs["perplexity"].float_val[0] < 100
    assert len(scored.outputs["log_likelihood"].float_val) == 1
    text = predict(channel, "serving_default", {"prefix": string_tensor(["it has"]), "num_chars": int_scalar(20)})
    assert len(text.outputs["text"].string_val[0]) == 26
    assert text.model_spec.version.value == 2 and text.model_spec.signature_name == "serving_default"


def test_grpc_version_labels_and_output_filter(served):
    """[predict.proto] ModelSpec.version_label; PredictRequest.output_filter; [predict_util.cc] unknown alias."""
    channel = served[0]
    stable = predict(channel, "score", {"text": string_tensor(["it has been"])}, label="stable",
                     output_filter=["perplexity"])
    assert stable.model_spec.version.value == 1 and set(stable.outputs) == {"perplexity"}
    with pytest.raises(grpc.RpcError) as err:
        predict(channel, "score", {"text": string_tensor(["it has"])}, output_filter=["nope"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        predict(channel, "score", {"text": string_tensor(["it has"])}, label="nope")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_unknown_signature_is_failed_precondition(served):
    """[predict_util.cc] 'Serving signature key "nope" not found.' is FAILED_PRECONDITION."""
    with pytest.raises(grpc.RpcError) as err:
        predict(served[0], "nope", {"text": string_tensor(["it has"])})
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'Serving signature key "nope" not found.' in err.value.details()


def test_grpc_classify_regress_and_multi_inference(served):
    """[classifier.cc] [regressor.cc] [multi_inference.cc]: INVALID_ARGUMENT / UNIMPLEMENTED with their reasons."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served[0])
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "deep_rnn"
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = "deep_rnn", "score"
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add(method_name="tensorflow/serving/predict")
    task.model_spec.name = "deep_rnn"
    for call, req, code, reason in ((stub.Classify, classify, grpc.StatusCode.INVALID_ARGUMENT,
                                     "Expected one input Tensor."),
                                    (stub.Regress, regress, grpc.StatusCode.INVALID_ARGUMENT,
                                     "Expected one output Tensor."),
                                    (stub.MultiInference, multi, grpc.StatusCode.UNIMPLEMENTED,
                                     "Unsupported signature method_name: tensorflow/serving/predict")):
        with pytest.raises(grpc.RpcError) as err:
            call(req, timeout=30)
        assert err.value.code() == code and reason in err.value.details()


def test_grpc_metadata_lists_every_signature(served):
    """[predict.proto] GetModelMetadata: signature_def map with every SignatureDef of the MetaGraph."""
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "deep_rnn"
    req.model_spec.version_label = "stable"
    resp = prediction_service_pb2_grpc.PredictionServiceStub(served[0]).GetModelMetadata(req, timeout=30)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sigs)
    assert resp.model_spec.version.value == 1
    assert {"serving_default", "sample", "score", "__saved_model_init_op"} <= set(sigs.signature_def)


def test_grpc_garbage_bytes_are_invalid_argument(served):
    channel = served[0]
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError) as err:
        call(b"\xff\xff\xff\xff\x0f garbage", timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_specific_policy_serves_both_versions_and_latest_policy_keeps_unloaded_versions_as_end(served):
    """[config] specific policy: both versions AVAILABLE; latest policy: a superseded version is listed as END."""
    channel, _, base = served
    states = {s.version: s.state for s in status_of(channel, "deep_rnn").model_version_status}
    assert states == {1: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                      2: get_model_status_pb2.ModelVersionStatus.AVAILABLE}
    shutil.copytree(base / "latest_rnn" / "1", base / "latest_rnn" / ".tmp-2")
    (base / "latest_rnn" / ".tmp-2").rename(base / "latest_rnn" / "2")
    deadline = time.time() + 60
    while time.time() < deadline:
        states = {s.version: s.state for s in status_of(channel, "latest_rnn").model_version_status}
        if states.get(1) == get_model_status_pb2.ModelVersionStatus.END:
            break
        time.sleep(0.3)
    assert states == {1: get_model_status_pb2.ModelVersionStatus.END,
                      2: get_model_status_pb2.ModelVersionStatus.AVAILABLE}
    with pytest.raises(grpc.RpcError) as err:
        status_of(channel, "latest_rnn", version=9)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        predict(channel, "score", {"text": string_tensor(["it has"])}, name="latest_rnn", version=1)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# ---- TF Serving's own test models, as they ship (../shared/tf_serving_testdata) ----
TESTDATA = SHARED_DATA.parent / "tf_serving_testdata"


def _config(entries: list[tuple[str, str]]) -> str:
    return "model_config_list {\n" + _entries(entries) + "}\n"


def _entries(entries: list[tuple[str, str]], policy: str = "") -> str:
    return "".join(f'  config {{ name: "{name}" base_path: "{TESTDATA / folder}" model_platform: "tensorflow" '
                   f"{policy}}}\n" for name, folder in entries)


def _wait_for(condition, what: str, seconds: float = 60.0):
    deadline = time.time() + seconds
    while True:
        try:
            if condition():
                return
        except grpc.RpcError:
            pass
        assert time.time() < deadline, what
        time.sleep(0.3)


def _available(channel, name: str) -> dict[int, int]:
    return {s.version: s.state for s in status_of(channel, name).model_version_status}


def test_zero_padded_version_folders_serve_as_their_numbers_and_the_config_file_is_polled(tmp_path):
    """[tensorflow_model_server_test.py, testdata] half_plus_two_cpu keeps version 123 in `00000123`; TF Serving
    serves it as 123. [--model_config_file_poll_wait_seconds] a model config re-read while serving adds and
    removes models; one that does not parse keeps the running set."""
    config = tmp_path / "models.config"
    config.write_text(_config([("half_plus_two", "saved_model_half_plus_two_cpu")]))
    server = Server(model_config_file=str(config), port=0, rest_port=0, poll_seconds=0.2,
                    model_config_file_poll_wait_seconds=0.5)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        _wait_for(lambda: _available(channel, "half_plus_two").get(123) == available, "version 123 never loaded")
        code, body = rest(f"http://127.0.0.1:{server.rest_port}/v1/models/half_plus_two:predict",
                          {"instances": [1.0, 2.0, 5.0]})
        assert code == 200 and body == {"predictions": [2.5, 3.0, 4.5]}  # [api_rest.md] y = 0.5 x + 2

        config.write_text(_config([("half_plus_three", "saved_model_half_plus_three"),
                                   ("two_versions", "saved_model_half_plus_two_2_versions")]))
        _wait_for(lambda: _available(channel, "half_plus_three").get(123) == available, "added model not served")
        _wait_for(lambda: _available(channel, "two_versions").get(124) == available, "latest of two not served")
        with pytest.raises(grpc.RpcError) as err:
            status_of(channel, "half_plus_two")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        config.write_text("model_config_list { config { name: ")  # does not parse: the running set stays
        time.sleep(1.5)
        assert _available(channel, "half_plus_three").get(123) == available
        code, body = rest(f"http://127.0.0.1:{server.rest_port}/v1/models/half_plus_three:predict",
                          {"instances": [2.0]})
        assert code == 200 and body == {"predictions": [4.0]}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def half_plus_two(tmp_path_factory):
    """The stand-in serving TF Serving's half_plus_two test model as it ships (version folder 00000123)."""
    config = tmp_path_factory.mktemp("half") / "models.config"
    config.write_text(_config([("half_plus_two", "saved_model_half_plus_two_cpu")]))
    server = Server(model_config_file=str(config), port=0, rest_port=0, poll_seconds=0.2)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    _wait_for(lambda: _available(channel, "half_plus_two").get(123) == available, "half_plus_two never loaded")
    yield channel, f"http://127.0.0.1:{server.rest_port}/v1/models/half_plus_two"
    server.stop()


def _examples(request_input, *xs, context=None):
    target = request_input.example_list_with_context if context is not None else request_input.example_list
    if context is not None:
        for key, value in context.items():
            target.context.features.feature[key].float_list.value.append(value)
    for x in xs:
        target.examples.add().features.feature["x"].float_list.value.append(x)


def test_grpc_classify_and_regress_on_example_signatures(half_plus_two):
    """[tensorflow_model_server_test.py testClassify / testRegress]: x = 2.0 → 3.0 through classify_x_to_y
    (scores only, so the label is empty) and regress_x_to_y; the answer names the model, version and signature."""
    channel, _ = half_plus_two
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two", "classify_x_to_y"
    _examples(request.input, 2.0, 4.0)
    response = stub.Classify(request, timeout=60)
    assert [[(c.label, c.score) for c in row.classes] for row in response.result.classifications] == [
        [("", 3.0)], [("", 4.0)]]
    assert (response.model_spec.version.value, response.model_spec.signature_name) == (123, "classify_x_to_y")
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two", "regress_x_to_y"
    _examples(request.input, 2.0)
    assert [r.value for r in stub.Regress(request, timeout=60).result.regressions] == [3.0]
    with pytest.raises(grpc.RpcError) as err:  # [input_util.cc] no example at all
        stub.Regress(regression_pb2.RegressionRequest(model_spec=request.model_spec), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Input is empty" in err.value.details()


def _multi_inference(model: str, *tasks: tuple[str, str]) -> inference_pb2.MultiInferenceRequest:
    """A MultiInferenceRequest of (method, signature) tasks on `model` over one example, x = 2.0."""
    request = inference_pb2.MultiInferenceRequest()
    for method, signature in tasks:
        task = request.tasks.add(method_name=f"tensorflow/serving/{method}")
        task.model_spec.name, task.model_spec.signature_name = model, signature
    _examples(request.input, 2.0)
    return request


def test_grpc_multi_inference_runs_each_signature_once_on_one_model(half_plus_two):
    """[multi_inference_test.cc] classify and regress tasks over one shared input; the same signature twice,
    or two model names, are refused in TF Serving's words."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(half_plus_two[0])
    request = _multi_inference("half_plus_two", ("classify", "classify_x_to_y"), ("regress", "regress_x_to_y"))
    results = stub.MultiInference(request, timeout=60).results
    assert results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert results[1].regression_result.regressions[0].value == 3.0
    duplicate = inference_pb2.MultiInferenceRequest()
    duplicate.CopyFrom(request)
    duplicate.tasks[1].CopyFrom(duplicate.tasks[0])
    other = inference_pb2.MultiInferenceRequest()
    other.CopyFrom(request)
    other.tasks[1].model_spec.name = "another"
    for bad, reason in ((duplicate, "Duplicate evaluation of signature: classify_x_to_y"),
                        (other, "must access the same model name")):
        with pytest.raises(grpc.RpcError) as err:
            stub.MultiInference(bad, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in err.value.details()


def test_rest_classify_and_regress_with_examples_and_context(half_plus_two):
    """[api_rest.md] `examples` (and `context`) become tf.Examples: {"x": 2.0} → 3.0; results as TF Serving
    prints them; malformed examples in its words."""
    _, url = half_plus_two
    code, body = rest(f"{url}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}, {"x": 4.0}]})
    assert code == 200 and body == {"results": [3.0, 4.0]}
    code, body = rest(f"{url}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert code == 200 and body == {"results": [[["", 3.0]]]}
    code, body = rest(f"{url}:regress", {"signature_name": "regress_x_to_y", "context": {"x": 2.0},
                                         "examples": [{}]})
    assert code == 200 and body == {"results": [3.0]}  # the context's feature reaches each example
    code, body = rest(f"{url}:regress", {"signature_name": "regress_x_to_y", "examples": [[2.0]]})
    assert code == 400 and "Example must be JSON object" in body["error"]
    code, body = rest(f"{url}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2**63}]})
    assert code == 400 and "Only int64_t is supported" in body["error"]



# ---- JSON numbers and documents as util/json_tensor.cc reads and writes them ----
@pytest.mark.parametrize("value, text", [
    (9000000, "9e+06"), (999999, "999999.0"), (0.5, "0.5"), (0.0003, "0.0003"), (0.00003, "3e-05"),
    (555557.5, "555557.5"),                          # [json_tensor_test.cc FromJsonSingleFloatTensorSixDigitPrecision]
    (float("nan"), "NaN"), (float("inf"), "Infinity"), (3, "3.0"), (float("-inf"), "-Infinity"),  # ...NonFinite
    (1435774336, "1.43577434e+09"),                      # [api_rest.md] 1435774380 as a float32, all 9 digits
])
def test_write_decimal_prints_float32_as_tf_serving(value, text):
    from serving.json_doc import decimal

    assert decimal(np.float32(value)) == text


def test_rest_numbers_on_half_plus_two_as_tf_serving_prints_them(half_plus_two):
    """[json_tensor_test.cc] six-digit and non-finite outputs through a real model: y = x / 2 + 2."""
    _, url = half_plus_two
    code, text = rest_text(f"{url}:predict", raw=b'{"instances": [17999996.0, 1999994.0, -3, NaN, Infinity, -Inf]}')
    assert code == 200
    assert text.split("[", 1)[1].split("]", 1)[0].replace(" ", "").replace("\n", "") == \
        "9e+06,999999.0,0.5,NaN,Infinity,-Infinity"
    code, text = rest_text(f"{url}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 17999996.0}]})
    assert code == 200 and "9e+06" in text


@pytest.mark.parametrize("instances, code, needle", [
    ("[1, 2.0, 3, 4, 5.003, 0.007, 0.0]", 200, None),            # [json_tensor_test.cc MixedInputForFloatTensor]
    ("[16777215]", 200, None),                                   # the largest integer a float32 holds exactly
    ("[16777217]", 400, "loss of precision"),                    # [SingleUnnamedTensorErrors]
    ("[1435774380]", 400, "loss of precision"),                  # an integer: exact or refused (IsLosslessDecimal)
    ("[1435774380.0]", 200, None),                               # a double: rounded to the float32 1435774336
    ("[100000000000000000000]", 200, None),                      # beyond uint64: RapidJSON reads a double
    ("[1.7976931348623157e308]", 400, "loss of precision"),      # [SingleUnnamedTensorErrors] DBL_MAX into float
    ("[-1.79769e+308]", 400, "loss of precision"),
    ("[[1], [2, 3]]", 400, "Expecting tensor size: 1 but got: 2"),   # [SingleUnnamedTensorErrors]
    ("[[1, 2], [[3, 4]]]", 400, "Expecting shape [2] but got: [1,2]"),
    ("[1, [1]]", 400, "Expecting shape"),
    ('[1, "a"]', 400, "is not of expected type: float"),
    ("[true]", 400, "JSON Value: true Type: True is not of expected type: float"),
])
def test_rest_float_inputs_follow_is_lossless_decimal(half_plus_two, instances, code, needle):
    _, url = half_plus_two
    status, body = rest(f"{url}:predict", raw=b'{"instances": ' + instances.encode() + b"}")
    assert status == code, body
    if needle:
        assert needle in body["error"], body


def test_rest_a_double_input_is_rounded_to_float32_as_the_session_reads_it(half_plus_two):
    """[api_rest.md Floating Point Precision] 1435774380.0 reaches the model as the float32 1435774336."""
    _, url = half_plus_two
    _, body = rest(f"{url}:predict", raw=b'{"instances": [1435774380.0]}')
    assert body["predictions"] == [float(np.float32(np.float32(1435774336) * np.float32(0.5) + np.float32(2)))]


@pytest.mark.parametrize("raw, needle", [
    (b"instances = [1, 2]", "JSON Parse error: Invalid value. at offset: 0"),     # [handler_test.cc]
    (b"", "JSON Parse error: The document is empty"),                            # [json_tensor_test.cc]
    (b"   ", "JSON Parse error: The document is empty. at offset: 3"),
    (b'{"instances": [1 2]}', "JSON Parse error: Missing a comma or ']' after an array element. at offset: 17"),
    (b'{"instances" [1]}', "JSON Parse error: Missing a colon after a name of object member. at offset: 13"),
    (b'{"instances": [1]} x', "JSON Parse error: The document root must not be followed by other values."),
    (b'{"instances": [1.]}', "JSON Parse error: Miss fraction part in number."),
    (b'{"instances": "\xff"}', "JSON Parse error: Invalid encoding in string."),
    (b'{"instances": [' + b"9" * 5000 + b"]}", "JSON Parse error: Number too big to be stored in double."),
    (b'{"instances": [1e400]}', "JSON Parse error: Number too big to be stored in double."),
    (b"[1, 2]", "Is not object"),
])
def test_rest_parse_errors_in_rapidjsons_words(half_plus_two, raw, needle):
    _, url = half_plus_two
    code, body = rest(f"{url}:predict", raw=raw, method="POST")
    assert code == 400 and needle in body["error"], body


def test_rest_nan_inf_and_a_deep_unused_key_are_read_as_tf_serving_reads_them(half_plus_two):
    """RapidJSON with kParseNanAndInfFlag takes NaN, Inf and Infinity of either sign; it has no depth limit, so a
    key nested 10,000 deep that the request does not use is no reason to refuse it."""
    _, url = half_plus_two
    deep = b"[" * 10_000 + b"]" * 10_000
    code, body = rest(f"{url}:predict", raw=b'{"unused": ' + deep + b', "instances": [2.0, Inf, -NaN]}')
    assert code == 200 and body["predictions"][0] == 3.0 and body["predictions"][1] == float("inf"), body
    code, body = rest(f"{url}:predict", raw=b'{"instances": ' + deep + b"}")
    assert code == 400, body  # used, it is a tensor of 10,000 dimensions: refused, not a dropped connection
    code, body = rest(f"{url}:predict", raw=codecs.BOM_UTF8 + b'{"instances": [2.0, 1e-400]}')
    assert code == 200 and body["predictions"] == [3.0, 2.0], body  # a BOM skipped; an underflow is 0


@pytest.mark.parametrize("example, needle", [   # [json_tensor.cc AddValueToFeature / MakeExampleFromJsonObject]
    ({"x": 2**63}, "Feature: x has uint64 element. Only int64_t is supported."),
    ({"x": None}, "Feature: x has element with unexpected JSON type: Null"),
    ({"x": [[2.0]]}, "Feature: x has element with unexpected JSON type: Array"),
    ({"x": {"a": 1}}, "Feature: x has element with unexpected JSON type: Object"),
    ({"x": [2.0, "a"]}, "Unexpected element type in feature: x expecting type: float"),
    ({"x": [1, 2.0]}, "Unexpected element type in feature: x expecting type: int64"),
    ({"x": 1e39}, "Cannot convert JSON value: 1e+39 to float without loss of precision."),
    ({"x": {"b64": "!!"}}, "Unable to base64 decode"),
])
def test_rest_malformed_examples_in_tf_servings_words(half_plus_two, example, needle):
    _, url = half_plus_two
    code, body = rest(f"{url}:regress", {"signature_name": "regress_x_to_y", "examples": [example]})
    assert code == 400 and needle in body["error"], body


def test_rest_examples_list_checks_and_feature_kinds(half_plus_two):
    """[json_tensor.cc FillClassifyRegressRequestFromJson] the examples' own checks (TF Serving says
    "classify" for :regress too); a bool is an int64 feature and an integer beyond uint64 a float one."""
    _, url = half_plus_two
    for body, needle in (({"signature_name": "regress_x_to_y"}, "When method is classify, key 'examples' is expected"),
                         ({"examples": {"x": 2.0}}, "Expecting 'examples' value to be an list/array"),
                         ({"examples": []}, "'examples' value is an empty array")):
        code, answer = rest(f"{url}:regress", body)
        assert code == 400 and needle in answer["error"], answer
    code, answer = rest(f"{url}:regress", raw=b'{"signature_name": "regress_x_to_y", '
                                              b'"examples": [{"x": 100000000000000000000}]}')
    assert code == 200 and np.float32(answer["results"][0]) == np.float32(1e20) / 2 + 2, answer
    from tensorflow.core.example import example_pb2

    from serving.rest import fill_example

    example = example_pb2.Example()
    fill_example(example, {"flag": [True, False], "empty": [], "text": "a", "bin": {"b64": "aGk="}})
    assert list(example.features.feature["flag"].int64_list.value) == [1, 0]
    assert example.features.feature["empty"].WhichOneof("kind") is None
    assert list(example.features.feature["bin"].bytes_list.value) == [b"hi"]


def test_grpc_a_bool_tensor_for_a_float_input_gets_the_sessions_words(half_plus_two):
    """[predict_impl_test.cc PredictionInvalidTensor] a bool scalar for half_plus_two's float x."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.version.value = 123
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_BOOL, bool_val=[True]))
    with pytest.raises(grpc.RpcError) as err:
        prediction_service_pb2_grpc.PredictionServiceStub(half_plus_two[0]).Predict(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expects arg[0] to be float but bool is provided" in err.value.details()


def test_a_bad_model_config_file_is_reported_in_tf_servings_words():
    """[tensorflow_model_server_test.py testBadModelConfig] the server started on bad_model_config.txt says
    "Error parsing text-format tensorflow.serving.ModelServerConfig" on stderr and does not serve."""
    proc = subprocess.run([sys.executable, "-m", "serving.server", "--model-config-file",
                           str(TESTDATA / "bad_model_config.txt"), "--port", "0", "--rest-port", "0"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in proc.stderr, proc.stderr


# ---- every shipped model, served as it ships (tensorflow_model_server_test.py's cases) ----
@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """One stand-in serving good_model_config.txt (its placeholders filled as TF Serving's test fills them) plus
    every other model of the test data, each as it ships: (channel, REST root, model names)."""
    folder = tmp_path_factory.mktemp("shipped")
    good = (TESTDATA / "good_model_config.txt").read_text()
    good = good.replace("${TEST_HALF_PLUS_TWO_DIR}", str(TESTDATA / "saved_model_half_plus_two_cpu"))
    good = good.replace("${TEST_HALF_PLUS_THREE_DIR}", str(TESTDATA / "saved_model_half_plus_three"))
    others = _entries([("default", "saved_model_half_plus_two_cpu"), ("tf2", "saved_model_half_plus_two_tf2_cpu"),
                       ("mkl", "saved_model_half_plus_two_mkl"), ("counter", "saved_model_counter"),
                       ("bad", "bad_half_plus_two")])
    others += _entries([("saved_model_half_plus_two_2_versions", "saved_model_half_plus_two_2_versions")],
                       policy="model_version_policy { all {} } ")
    config = folder / "models.config"
    body = good.strip()
    assert body.endswith("}")
    config.write_text(body[:-1] + others + "}\n")  # the list's closing brace after the other models
    server = Server(model_config_file=str(config), port=0, rest_port=0, poll_seconds=0.2)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    for name, version in (("half_plus_two", 123), ("half_plus_three", 123), ("default", 123), ("tf2", 123),
                          ("mkl", 123), ("counter", 123), ("saved_model_half_plus_two_2_versions", 124)):
        _wait_for(lambda: _available(channel, name).get(version) == available, f"{name} never loaded")  # noqa: B023
    yield channel, f"http://127.0.0.1:{server.rest_port}/v1/models"
    server.stop()


def _x(value: float) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto([[value]], dtype=tf.float32)


def test_good_model_config_serves_both_models(shipped):
    """[testGoodModelConfig] half_plus_two x = 2 → 3.0 and half_plus_three → 4.0, version 123, with and without
    an output filter."""
    channel, _ = shipped
    for name, expected in (("half_plus_two", 3.0), ("half_plus_three", 4.0)):
        for output_filter in (("y",), ()):
            result = predict(channel, "", {"x": _x(2.0)}, name=name, output_filter=output_filter)
            assert list(result.outputs["y"].float_val) == [expected] and result.model_spec.version.value == 123


def test_status_and_metadata_of_default(shipped):
    """[testGetModelStatus, testGetModelMetadata, testGetStatusREST, testGetModelMetadataREST]"""
    channel, url = shipped
    (status,) = status_of(channel, "default").model_version_status
    assert (status.version, status.status.error_code) == (123, 0)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "default"
    metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=60)
    assert (metadata.model_spec.name, metadata.model_spec.version.value) == ("default", 123)
    assert list(metadata.metadata) == ["signature_def"]
    assert rest(f"{url}/default") == (200, {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    expected = json.loads((TESTDATA / "half_plus_two_model_metadata.json").read_text())
    assert rest(f"{url}/default/metadata") == (200, expected)
    expected = json.loads((TESTDATA / "saved_model_half_plus_two_2_versions_metadata.json").read_text())
    assert rest(f"{url}/saved_model_half_plus_two_2_versions/versions/123/metadata") == (200, expected)


def test_rest_predict_classify_regress_on_default(shipped):
    """[testPredictREST, testPredictColumnarREST, testClassifyREST, testRegressREST]"""
    _, url = shipped
    assert rest(f"{url}/default:predict", {"instances": [2.0, 3.0, 4.0]}) == (200, {"predictions": [3.0, 3.5, 4.0]})
    assert rest(f"{url}/default:predict", {"inputs": [2.0, 3.0, 4.0]}) == (200, {"outputs": [3.0, 3.5, 4.0]})
    assert rest(f"{url}/default:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}) == \
        (200, {"results": [[["", 3.0]]]})
    assert rest(f"{url}/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}) == \
        (200, {"results": [3.0]})


def test_the_tf2_and_onednn_exports_answer_as_the_tf1_one(shipped):
    """[testClassifyTf2, testRegressTf2, testMultiInferenceTf2] on half_plus_two_tf2_cpu; the oneDNN export
    (half_plus_two_mkl) loads and predicts on this build too."""
    channel, url = shipped
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "tf2", "classify_x_to_y"
    _examples(request.input, 2.0)
    assert stub.Classify(request, timeout=60).result.classifications[0].classes[0].score == 3.0
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "tf2", "regress_x_to_y"
    _examples(request.input, 2.0)
    assert [r.value for r in stub.Regress(request, timeout=60).result.regressions] == [3.0]
    multi = _multi_inference("tf2", ("regress", "regress_x_to_y"), ("classify", "classify_x_to_y"))
    results = stub.MultiInference(multi, timeout=60).results
    assert results[0].regression_result.regressions[0].value == 3.0
    assert results[1].classification_result.classifications[0].classes[0].score == 3.0
    for name in ("tf2", "mkl"):
        assert rest(f"{url}/{name}:predict", {"instances": [1.0, 2.0, 5.0]}) == (200, {"predictions": [2.5, 3.0, 4.5]})


def test_the_counter_keeps_its_state_across_requests(shipped):
    """saved_model_counter: signatures without inputs (incr_counter, get_counter, reset_counter) over gRPC, and
    incr_counter_by; the variable lives in the served session. (REST cannot call a signature without inputs:
    json_tensor.cc's "Failed to get input map for signature", which the stand-in answers too.)"""
    channel, url = shipped

    def call(signature, **inputs):
        outputs = predict(channel, signature, {k: tf.make_tensor_proto(v) for k, v in inputs.items()},
                          name="counter").outputs
        return float(tf.make_ndarray(outputs["output"]))

    assert call("reset_counter") == 0.0
    assert [call("incr_counter"), call("incr_counter"), call("get_counter")] == [1.0, 2.0, 2.0]
    assert call("incr_counter_by", delta=3.0) == 5.0
    assert call("reset_counter") == 0.0
    code, body = rest(f"{url}/counter:predict", {"signature_name": "incr_counter", "instances": [0]})
    assert code == 400 and "Failed to get input map for signature: incr_counter" in body["error"]


def test_a_model_with_no_savedmodel_is_not_served_and_harms_nothing(shipped):
    """bad_half_plus_two holds a pre-SavedModel export: no version of it is served, and everything else is."""
    channel, _ = shipped
    with pytest.raises(grpc.RpcError) as err:
        predict(channel, "", {"x": _x(2.0)}, name="bad")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert list(predict(channel, "", {"x": _x(2.0)}, name="default").outputs["y"].float_val) == [3.0]


@pytest.mark.parametrize("signatures", ["one", "two"])
def test_a_fresh_tf_saved_model_save_export_is_served(tmp_path, signatures):
    """[test_tf_saved_model_save, test_tf_saved_model_save_multiple_signatures] a tf.Module saved by TF2 into
    base/00000123 with an input of unknown rank: 3 × 2 × x, or two signatures answering 1 and 2."""
    root = tf.train.Checkpoint()
    if signatures == "one":
        root.v1, root.v2 = tf.Variable(3.0), tf.Variable(2.0)
        root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
        tf.saved_model.save(root, str(tmp_path / "base" / "00000123"),
                            root.f.get_concrete_function(tf.TensorSpec(None, tf.float32)))
    else:
        root.f = tf.function(lambda x: {"y": 1.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
        root.g = tf.function(lambda x: {"y": 2.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
        tf.saved_model.save(root, str(tmp_path / "base" / "00000123"),
                            signatures={"serving_default": root.f, "custom_signature_key": root.g})
    server = Server(str(tmp_path / "base"), model_name="default", port=0, rest_port=None, poll_seconds=0.2)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        _wait_for(lambda: _available(channel, "default").get(123) == available, "the export never loaded")
        answer = predict(channel, "", {"x": tf.make_tensor_proto(2.0)}, name="default")
        assert list(answer.outputs["y"].float_val) == ([12.0] if signatures == "one" else [1.0])
        if signatures == "two":
            custom = predict(channel, "custom_signature_key", {"x": tf.make_tensor_proto(2.0)}, name="default")
            assert list(custom.outputs["y"].float_val) == [2.0]
    finally:
        server.stop()
