"""Export and serving, driven only through the gRPC stubs and REST, as a client would."""
from __future__ import annotations

import json
import logging
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from common.cli import UserError
from common.net import free_port
from serving import layout, savedmodel
from serving.grpc_client import Client
from serving.service import Server


def _server_kinds():
    kinds = ["local"]
    if shutil.which("tensorflow_model_server"):
        kinds.append("tfs")
    return kinds


@pytest.fixture(scope="module", params=_server_kinds())
def server(request, exported, tmp_path_factory):
    """(grpc address, rest address, export base): the local stand-in, or TF Serving when installed."""
    base = tmp_path_factory.mktemp("serve")
    shutil.copytree(exported / "deep_rnn", base / "deep_rnn")
    savedmodel.write_models_config(str(base))
    if request.param == "local":
        srv = Server(str(base / "deep_rnn"), port=0, rest_port=0, poll_seconds=0.2, max_request_bytes=1 << 20)
        yield f"127.0.0.1:{srv.port}", f"http://127.0.0.1:{srv.rest_port}", base
        srv.stop()
    else:
        ports = [free_port(), free_port()]
        proc = subprocess.Popen(["tensorflow_model_server", f"--port={ports[0]}", f"--rest_api_port={ports[1]}",
                                 f"--model_config_file={base / 'models.config'}",
                                 "--file_system_poll_wait_seconds=1"])
        Client(f"127.0.0.1:{ports[0]}").wait_until_ready(60, proc)
        yield f"127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}", base
        proc.terminate()
        proc.wait()


def _rest(url: str, body=None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_signatures_and_graph_are_servable(exported):
    path = str(exported / "deep_rnn" / "1")
    loaded = tf.saved_model.load(path)
    sigs = {k: (fn.structured_input_signature[1], fn.structured_outputs) for k, fn in loaded.signatures.items()}
    assert set(sigs) == {"serving_default", "sample", "score"}
    inputs, outputs = sigs["serving_default"]
    assert {k: (v.dtype, v.shape.rank) for k, v in inputs.items()} == {
        "prefix": (tf.string, 1), "num_chars": (tf.int32, None)}  # num_chars: a scalar or one per row
    assert set(outputs) == {"text"}
    assert {k: v.dtype for k, v in sigs["sample"][0].items()} == {
        "prefix": tf.string, "num_chars": tf.int32, "temperature": tf.float32, "top_k": tf.int32, "seed": tf.int64}
    assert set(sigs["score"][1]) == {"log_likelihood", "num_tokens", "perplexity"}
    types = savedmodel.graph_op_types(path)
    assert not types & set(savedmodel.FORBIDDEN_OPS) and not any("Cudnn" in t for t in types)
    assert "StaticRegexReplace" in types or "RegexReplace" in types  # the normaliser is in the graph
    assert (exported / "deep_rnn" / "1" / layout.WARMUP_FILE).exists()
    assert 'base_path: "' in (exported / "models.config").read_text()


def test_grpc_greedy_equals_in_process(server, exported, trained):
    grpc_addr, _, _ = server
    loaded = tf.saved_model.load(str(exported / "deep_rnn" / "1"))
    local = loaded.signatures["serving_default"](prefix=tf.constant(["it has"]), num_chars=tf.constant(20))
    served = Client(grpc_addr).generate(["it has"], 20)[0]
    assert served == local["text"].numpy()[0].decode()
    assert served == json.loads((trained[0] / "metrics.json").read_text())["sample"][:6] + served[6:]
    assert len(served) == 26


def test_zero_chars_returns_the_prefix(server):
    client = Client(server[0])
    assert client.generate(["it has", "the"], 0) == ["it has", "the"]
    assert client.generate(["it has"], 0, temperature=0.5, seed=1) == ["it has"]


def test_sampling_is_reproducible_with_a_seed(server):
    client = Client(server[0])
    a = client.generate(["it has", "the"], 30, temperature=1.0, seed=7)
    b = client.generate(["it has", "the"], 30, temperature=1.0, seed=7)
    c = client.generate(["it has", "the"], 30, temperature=1.0, seed=8)
    assert a == b and a != c
    top1 = client.generate(["it has"], 20, temperature=1.0, top_k=1, seed=3)
    assert top1 == client.generate(["it has"], 20)  # top-1 sampling is greedy


@pytest.mark.parametrize("temperature", [1e-45, 1e-38, 1e-30])
def test_a_vanishing_temperature_samples_greedily(server, temperature):
    """float32 denormals read as zero on CPUs: 1e-45 was refused as "must be > 0", and 1e-30 overflowed the
    logits to NaN. Any positive temperature is taken; as it vanishes, sampling becomes the greedy choice."""
    client = Client(server[0])
    greedy = client.generate(["it has", "the"], 20)
    assert client.generate(["it has", "the"], 20, temperature=temperature, seed=5) == greedy


def test_score_over_grpc_and_rest(server):
    grpc_addr, rest, _ = server
    scored = Client(grpc_addr).score(["the time traveller", "it has"])
    assert scored[0]["num_tokens"] == 17 and scored[1]["num_tokens"] == 5
    assert all(1.0 < s["perplexity"] < 100 for s in scored)
    code, body = _rest(f"{rest}/v1/models/deep_rnn:predict",
                       {"signature_name": "score", "inputs": {"text": ["the time traveller"]}})
    assert code == 200
    np.testing.assert_allclose(body["outputs"]["perplexity"][0], scored[0]["perplexity"], rtol=1e-6)


def test_rest_predict_status_and_metadata(server):
    grpc_addr, rest, _ = server
    code, body = _rest(f"{rest}/v1/models/deep_rnn:predict", {"inputs": {"prefix": ["it has"], "num_chars": 20}})
    assert code == 200 and body["outputs"] == Client(grpc_addr).generate(["it has"], 20)  # one output: no name
    code, body = _rest(f"{rest}/v1/models/deep_rnn")
    assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    code, body = _rest(f"{rest}/v1/models/deep_rnn/metadata")
    assert code == 200 and "serving_default" in json.dumps(body)


def test_grpc_metadata_and_status(server):
    channel = grpc.insecure_channel(server[0])
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "deep_rnn"
    resp = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(req, timeout=30)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sigs)
    assert {"serving_default", "sample", "score"} <= set(sigs.signature_def)
    status_req = get_model_status_pb2.GetModelStatusRequest()
    status_req.model_spec.name = "deep_rnn"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_req, timeout=30)
    assert status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def _bad_requests(client: Client):
    """(name, request, expected status) for malformed and hostile requests."""
    c = client
    r = c.request
    cases = [
        ("missing input", r("serving_default", prefix=["it has"]), grpc.StatusCode.INVALID_ARGUMENT),
        ("extra input", r("serving_default", prefix=["a"], num_chars=3, text=["x"]), grpc.StatusCode.INVALID_ARGUMENT),
        ("wrong dtype", r("serving_default", prefix=["a"], num_chars=3), grpc.StatusCode.INVALID_ARGUMENT),
        ("wrong shape prefix", r("serving_default", prefix="a", num_chars=3), grpc.StatusCode.INVALID_ARGUMENT),
        ("wrong shape num_chars", r("serving_default", prefix=["a"], num_chars=[3, 4]),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("2-d num_chars", r("serving_default", prefix=["a"], num_chars=[[3]]), grpc.StatusCode.INVALID_ARGUMENT),
        ("int32 max num_chars", r("serving_default", prefix=["a"], num_chars=2**31 - 1),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("int32 max num_chars, sampled", r("sample", prefix=["a"], num_chars=2**31 - 1, temperature=1.0, top_k=0,
                                           seed=0), grpc.StatusCode.INVALID_ARGUMENT),
        ("batch over the limit", r("serving_default", prefix=["a"] * 65, num_chars=1),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("negative num_chars", r("serving_default", prefix=["a"], num_chars=-1), grpc.StatusCode.INVALID_ARGUMENT),
        ("huge num_chars", r("serving_default", prefix=["a"], num_chars=10**6), grpc.StatusCode.INVALID_ARGUMENT),
        ("empty prefix", r("serving_default", prefix=[""], num_chars=3), grpc.StatusCode.INVALID_ARGUMENT),
        ("nan temperature", r("sample", prefix=["a"], num_chars=3, temperature=float("nan"), top_k=0, seed=0),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("zero temperature", r("sample", prefix=["a"], num_chars=3, temperature=0.0, top_k=0, seed=0),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("negative zero temperature", r("sample", prefix=["a"], num_chars=3, temperature=-0.0, top_k=0, seed=0),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("negative denormal temperature", r("sample", prefix=["a"], num_chars=3, temperature=-1e-45, top_k=0,
                                            seed=0), grpc.StatusCode.INVALID_ARGUMENT),
        ("infinite temperature", r("sample", prefix=["a"], num_chars=3, temperature=float("inf"), top_k=0, seed=0),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown signature", r("nope", prefix=["a"], num_chars=3), grpc.StatusCode.FAILED_PRECONDITION),
        ("score too short", r("score", text=["a"]), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    wrong_dtype = cases[2][1]
    wrong_dtype.inputs["num_chars"].CopyFrom(tf.make_tensor_proto(3.5, dtype=tf.float32))
    unknown_model = r("serving_default", prefix=["a"], num_chars=3)
    unknown_model.model_spec.name = "other"
    unknown_version = r("serving_default", prefix=["a"], num_chars=3)
    unknown_version.model_spec.version.value = 999
    huge = r("serving_default", prefix=["x" * (2 << 20)], num_chars=3)
    cases += [("unknown model", unknown_model, grpc.StatusCode.NOT_FOUND),
              ("unknown version", unknown_version, grpc.StatusCode.NOT_FOUND),
              ("huge payload", huge, grpc.StatusCode.RESOURCE_EXHAUSTED)]
    return cases


def test_malformed_requests_get_the_right_status_and_server_survives(server):
    client = Client(server[0])
    for name, req, code in _bad_requests(client):
        with pytest.raises(grpc.RpcError) as err:
            client.stub.Predict(req, timeout=60)
        assert err.value.code() == code, (name, err.value.code(), err.value.details())
    non_utf8 = client.request("serving_default", prefix=[b"it \xff\xfe has"], num_chars=5)
    assert len(client.call(non_utf8)["text"]) == 1
    assert client.generate(["it has"], 20)  # still healthy


def test_malformed_rest_requests(server):
    rest = server[1]
    url = f"{rest}/v1/models/deep_rnn:predict"
    cases = [({"inputs": {"prefix": ["a"]}}, 400), ({"inputs": {"prefix": ["a"], "num_chars": "x"}}, 400),
             ({"inputs": {"prefix": [1], "num_chars": 3}}, 400), ({"inputs": {"prefix": ["a"], "num_chars": 2.5}}, 400),
             ({"instances": []}, 400), ({"signature_name": "nope", "inputs": {}}, 400), ([1, 2], 400),
             ({"inputs": {"prefix": ["a"], "num_chars": 99999}}, 400),
             ({"inputs": {"prefix": ["a"], "num_chars": 2**31 - 1}}, 400)]
    for body, code in cases:
        assert _rest(url, body)[0] == code, body
    assert _rest(url, raw=b"{not json")[0] == 400
    assert _rest(f"{rest}/v1/models/other:predict", {"inputs": {}})[0] == 404
    # RESOURCE_EXHAUSTED, which TF Serving's http_server.cc maps to 429
    assert _rest(url, raw=b'{"inputs": {"prefix": ["' + b"x" * (2 << 20) + b'"], "num_chars": 1}}')[0] == 429
    assert _rest(url, {"inputs": {"prefix": ["a"], "num_chars": 3}})[0] == 200


def test_an_oversized_body_still_gets_its_429_while_the_client_is_sending(server):
    """The server answers 429 before the body arrives; it must not then close with the client's bytes unread
    (a reset that destroys the answer: the client saw a broken pipe). A slow sender makes the race certain."""
    url = urllib.parse.urlsplit(server[1])
    size = 3 << 20
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/models/deep_rnn:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        time.sleep(0.3)  # the answer is sent now, long before the body is
        for _ in range(size // (1 << 16)):
            sock.sendall(b"x" * (1 << 16))
        answer = b""
        while chunk := sock.recv(1 << 16):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 429"), answer[:80]
    assert b"exceeds the limit" in answer


def _hang_up(rest_url: str, payload: bytes, wait_s: float) -> None:
    """Sends payload on a new REST connection, waits, then resets the connection (RST, not a clean close)."""
    url = urllib.parse.urlsplit(rest_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(payload)
        time.sleep(wait_s)


def test_clients_that_hang_up_are_not_server_errors(server, request, capfd, caplog):
    """Clients that vanish mid-request, or before reading their answer, cost their own connection only: the
    server answers the next client, and the local server logs no error and prints no traceback for them."""
    rest = server[1]
    body = json.dumps({"inputs": {"prefix": ["it has"], "num_chars": 1000}}).encode()
    post = b"POST /v1/models/deep_rnn:predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    cases = [(b"GET /v1/mod", 0.2),                                                  # half a request line
             (post + b"Content-Length: 100000\r\n\r\n" + body[:10], 0.2),           # part of the promised body
             (post + b"Content-Length: %d\r\n\r\n" % len(body) + body, 0.3),         # gone before the answer
             (post + b"Content-Length: 999999999\r\n\r\n" + b"x" * 65536, 0.2)]     # too large, gone while discarded
    with caplog.at_level(logging.DEBUG, logger="serving"):
        for payload, wait_s in cases:
            _hang_up(rest, payload, wait_s)
        assert _rest(f"{rest}/v1/models/deep_rnn:predict", {"inputs": {"prefix": ["a"], "num_chars": 3}})[0] == 200
        time.sleep(3)  # the abandoned generation finishes and meets the closed connection
    if request.node.callspec.params["server"] == "local":
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert sum("hung up" in r.getMessage() for r in caplog.records) >= 3  # the reads cut short, at least
        assert "Traceback" not in capfd.readouterr().err


def test_silent_rest_connections_are_closed_after_the_idle_time(exported, tmp_path, caplog):
    """A REST connection that goes quiet (before its request line, mid-headers, mid-body, or idle between
    keep-alive requests) is closed after --rest-idle-seconds, freeing its thread; nothing is logged as an error."""
    shutil.copytree(exported / "deep_rnn", tmp_path / "deep_rnn")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="idle time"):
            Server(str(tmp_path / "deep_rnn"), port=0, rest_port=0, rest_idle_seconds=bad)
    srv = Server(str(tmp_path / "deep_rnn"), port=0, rest_port=0, poll_seconds=0.2, rest_idle_seconds=1.0)
    rest = f"http://127.0.0.1:{srv.rest_port}"
    try:
        request = json.dumps({"inputs": {"prefix": ["it has"], "num_chars": 3}}).encode()
        post = b"POST /v1/models/deep_rnn:predict HTTP/1.1\r\nHost: test\r\n"
        stalls = [b"", b"GET /v1/models/deep_rnn HTTP/1.1\r\nHost: te",
                  post + b"Content-Length: %d\r\n\r\n" % len(request) + request[:10]]
        with caplog.at_level(logging.WARNING, logger="serving"):
            for sent in stalls:
                with socket.create_connection(("127.0.0.1", srv.rest_port), timeout=30) as sock:
                    sock.sendall(sent)
                    start = time.monotonic()
                    assert sock.recv(1 << 16) == b"", sent  # closed by the server, no answer
                    assert 0.9 < time.monotonic() - start < 10, sent
            with socket.create_connection(("127.0.0.1", srv.rest_port), timeout=30) as sock:  # keep-alive
                sock.sendall(post + b"Content-Length: %d\r\n\r\n" % len(request) + request)
                answer = b""
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    chunk = sock.recv(1 << 16)
                    assert chunk, answer[:100]  # closed before the whole answer
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
                start = time.monotonic()
                assert sock.recv(1 << 16) == b""  # the idle connection is closed
                assert 0.9 < time.monotonic() - start < 10
            assert _rest(f"{rest}/v1/models/deep_rnn:predict", {"inputs": {"prefix": ["a"], "num_chars": 3}})[0] == 200
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        srv.stop()


def test_rest_connections_beyond_the_limit_get_503_until_one_closes(exported, tmp_path, caplog):
    shutil.copytree(exported / "deep_rnn", tmp_path / "deep_rnn")
    with pytest.raises(UserError, match="connection limit"):
        Server(str(tmp_path / "deep_rnn"), port=0, rest_port=0, rest_max_connections=0)
    srv = Server(str(tmp_path / "deep_rnn"), port=0, rest_port=0, poll_seconds=0.2, rest_max_connections=2)
    address = ("127.0.0.1", srv.rest_port)
    request = json.dumps({"inputs": {"prefix": ["a"], "num_chars": 3}}).encode()
    predict = (b"POST /v1/models/deep_rnn:predict HTTP/1.0\r\nContent-Length: %d\r\n\r\n"  # 1.0: one request
               % len(request) + request)

    def answer(sock) -> bytes:  # everything the server sends until it closes the connection
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
        return data

    def predict_once() -> bytes:  # the answer's status line; a refusal may reset the unread request
        try:
            with socket.create_connection(address, timeout=30) as sock:
                sock.sendall(predict)
                return answer(sock).split(b"\r\n", 1)[0]
        except ConnectionResetError:
            return b"reset"

    holders = []
    try:
        holders += [socket.create_connection(address, timeout=30) for _ in range(2)]  # silent, a thread each
        time.sleep(0.5)
        with caplog.at_level(logging.WARNING, logger="serving"), socket.create_connection(address, timeout=30) as extra:
            refused = answer(extra)  # sends nothing, so the refusal closes cleanly
        assert refused.startswith(b"HTTP/1.1 503"), refused[:100]
        assert b"too many connections (limit 2)" in refused
        assert any("refused" in r.getMessage() for r in caplog.records)
        holders.pop().close()  # its thread ends and gives its slot back
        deadline = time.monotonic() + 10
        while b" 200 " not in (status := predict_once()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b" 200 " in status, status
    finally:
        for sock in holders:
            sock.close()
        srv.stop()


def test_new_version_is_picked_up_under_load_with_no_failed_request(server, trained):
    grpc_addr, _, base = server
    client = Client(grpc_addr)
    failures, versions_seen, stop = [], set(), threading.Event()

    def hammer():
        while not stop.is_set():
            req = client.request("serving_default", prefix=["it has"], num_chars=5)
            try:
                resp = client.stub.Predict(req, timeout=60)
                versions_seen.add(resp.model_spec.version.value)
            except grpc.RpcError as err:
                failures.append(err.code())

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    new = savedmodel.export_model(str(trained[0]), str(base), "deep_rnn")
    deadline = time.time() + 60
    while time.time() < deadline and int(new.rsplit("/", 1)[1]) not in versions_seen:
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not failures and {1, 2} <= versions_seen


@pytest.mark.reliability
def test_burst_of_1000_requests_all_succeed(server):
    from concurrent.futures import ThreadPoolExecutor

    client = Client(server[0])
    req = client.request("serving_default", prefix=["it has"], num_chars=5)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: client.stub.Predict(req, timeout=120).model_spec.version.value,
                                range(1000)))
    assert len(results) == 1000
    assert client.generate(["it has"], 20)


@pytest.mark.reliability
def test_16_clients_across_a_hot_swap(server, trained):
    """16 clients on the old version, through the export and load of a new one, and on the new one: every
    request answered, by both versions."""
    grpc_addr, _, base = server
    client = Client(grpc_addr)
    counts, failures, versions_seen, stop = [0] * 16, [], [set() for _ in range(16)], threading.Event()

    def worker(i):
        req = client.request("serving_default", prefix=["it has"], num_chars=10)
        while not stop.is_set():
            try:
                versions_seen[i].add(client.stub.Predict(req, timeout=60).model_spec.version.value)
                counts[i] += 1
            except grpc.RpcError as err:
                failures.append(err.code())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(2)
    new = int(savedmodel.export_model(str(trained[0]), str(base), "deep_rnn").rsplit("/", 1)[1])  # under load
    deadline = time.time() + 60
    while time.time() < deadline and not all(new in seen for seen in versions_seen):
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    assert not failures and all(c > 0 for c in counts)
    assert all(new in seen and len(seen) > 1 for seen in versions_seen)


def test_server_binds_loopback_by_default():
    from serving.server import parse_args

    _, cfg = parse_args(["--model-base", "x"])
    assert cfg.host == "127.0.0.1"
