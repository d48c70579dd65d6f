"""The stand-in for TensorFlow Serving behind serving.server: its gRPC services, REST API and server object.

This module imports TensorFlow and the tensorflow-serving-api stubs; the command line (serving.server) loads
it only once its flags are parsed, so `--help` is instant.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import threading
import time
from concurrent import futures
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import cli
from common.cli import UserError

cli.quiet_tensorflow()

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from serving import rest, tensors  # noqa: E402
from serving.servable import ModelEntry, ModelRegistry, ServingError, invalid, read_model_config_file  # noqa: E402
from serving.settings import (  # noqa: E402
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_REST_IDLE_SECONDS,
    DEFAULT_REST_MAX_CONNECTIONS,
    is_idle_time,
)
from trainer import compat  # noqa: E402

log = logging.getLogger("serving")


def model_spec_choice(spec) -> tuple[int | None, str | None]:
    """(version, label) a ModelSpec asks for; (None, None) is the latest."""
    choice = spec.WhichOneof("version_choice")
    return (spec.version.value if choice == "version" else None,
            spec.version_label if choice == "version_label" else None)


class Services:
    """The gRPC methods of PredictionService and ModelService, over one registry."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def _servable(self, spec):
        if not spec.name:
            raise invalid("Missing ModelSpec")
        return self.registry.get(spec.name, *model_spec_choice(spec))

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        servable = self._servable(spec)
        outputs = servable.predict(spec.signature_name, dict(request.inputs), list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tensors.to_proto(value))
        return response

    def get_model_metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid(f"Metadata field {field} is not supported")
        servable = self._servable(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            signatures.signature_def[key].CopyFrom(sig)
        response.metadata["signature_def"].Pack(signatures)
        return response

    def get_model_status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        if not spec.name:
            raise invalid("Missing ModelSpec")
        if spec.name not in self.registry.models:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        model = self.registry.models[spec.name]
        version, label = model_spec_choice(spec)
        if label:
            version = model.resolve(label=label).version
        states = dict(model.states)
        if version is not None:
            if version not in states:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {spec.name}")
            states = {version: states[version]}
        if not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted(states, reverse=True):
            state, message = states[v]
            status = response.model_version_status.add(version=v, state=state)
            status.status.SetInParent()
            if message:
                status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                status.status.error_message = message
        return response

    def _example_signature(self, spec, kind: str):
        """(servable, signature name, input tensor, {output key: tensor}) after TF Serving's checks of a
        classification or regression signature (servables/tensorflow/classifier.cc, regressor.cc)."""
        servable = self._servable(spec)
        name = spec.signature_name or "serving_default"
        if name not in servable.signature_defs:
            raise invalid(f"No signature was found with the name: {name}")
        signature = servable.signature_defs[name]
        if len(signature.inputs) != 1:
            raise invalid("Expected one input Tensor.")
        if kind == "classify" and len(signature.outputs) not in (1, 2):
            raise invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
        if kind == "regress" and len(signature.outputs) != 1:
            raise invalid("Expected one output Tensor.")
        label = "classification" if kind == "classify" else "regression"
        if "inputs" not in signature.inputs:
            raise invalid(f"No {label} inputs found in SignatureDef: {name}")
        wanted = ("classes", "scores") if kind == "classify" else ("outputs",)
        outputs = {key: signature.outputs[key].name for key in wanted if key in signature.outputs}
        if not outputs:
            raise invalid("Expected classification signature outputs to contain classes or scores."
                          if kind == "classify" else f"No regression outputs found in SignatureDef: {name}")
        return servable, name, signature.inputs["inputs"].name, outputs

    def _run_examples(self, spec, request_input, kind: str):
        servable, name, input_tensor, outputs = self._example_signature(spec, kind)
        examples = serialized_examples(request_input)
        try:
            values = compat.run_session_as_tf_serving(servable.session, list(outputs.values()),
                                                      {input_tensor: np.array(examples, dtype=object)})
        except tf.errors.OpError as err:
            raise invalid(" ".join(err.message.split())[:500]) from None
        return servable, name, dict(zip(outputs, values)), len(examples)

    @staticmethod
    def _fill_model_spec(target, spec, servable, name) -> None:
        target.name = spec.name
        target.version.value = servable.version
        target.signature_name = name

    def classify(self, request) -> classification_pb2.ClassificationResponse:
        servable, name, values, count = self._run_examples(request.model_spec, request.input, "classify")
        response = classification_pb2.ClassificationResponse()
        self._fill_model_spec(response.model_spec, request.model_spec, servable, name)
        fill_classification(response.result, values, count)
        return response

    def regress(self, request) -> regression_pb2.RegressionResponse:
        servable, name, values, count = self._run_examples(request.model_spec, request.input, "regress")
        response = regression_pb2.RegressionResponse()
        self._fill_model_spec(response.model_spec, request.model_spec, servable, name)
        fill_regression(response.result, values["outputs"], count)
        return response

    def multi_inference(self, request) -> inference_pb2.MultiInferenceResponse:
        """[multi_inference.cc] every task on one model, each signature once, over the one shared input."""
        if not request.tasks:
            raise invalid("MultiInferenceRequest must specify at least one task")
        names, signatures = set(), set()
        for task in request.tasks:
            if task.method_name not in ("tensorflow/serving/classify", "tensorflow/serving/regress"):
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"Unsupported signature method_name: {task.method_name}")
            names.add(task.model_spec.name)
            signature = task.model_spec.signature_name or "serving_default"
            if signature in signatures:
                raise invalid(f"Duplicate evaluation of signature: {signature}")
            signatures.add(signature)
        if len(names) > 1:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            kind = task.method_name.rsplit("/", 1)[1]
            servable, name, values, count = self._run_examples(task.model_spec, request.input, kind)
            result = response.results.add()
            self._fill_model_spec(result.model_spec, task.model_spec, servable, name)
            if kind == "classify":
                fill_classification(result.classification_result, values, count)
            else:
                fill_regression(result.regression_result, values["outputs"], count)
        return response


def serialized_examples(request_input) -> list[bytes]:
    """[input_util.cc] an Input's tf.Examples, serialized; with a context, each example is the context's
    features merged with its own (serialized one after the other, as protobuf merges)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        listed = request_input.example_list_with_context
        context = listed.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in listed.examples]
    else:
        examples = []
    if not examples:
        raise invalid("Input is empty.")
    return examples


def fill_classification(result, values: dict, count: int) -> None:
    """[classifier.cc] classes [N, K] and/or scores [N, K] → one Classifications per example."""
    classes, scores = values.get("classes"), values.get("scores")
    for key, value in (("classes", classes), ("scores", scores)):
        if value is not None and (value.ndim != 2 or value.shape[0] != count):
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {list(value.shape)}")
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise invalid(f"Tensors class and score should match in shape. Got {list(classes.shape)} and "
                      f"{list(scores.shape)}")
    width = (classes if classes is not None else scores).shape[1]
    for i in range(count):
        row = result.classifications.add()
        for k in range(width):
            entry = row.classes.add()
            if classes is not None:
                entry.label = classes[i][k].decode("utf-8", "replace") if isinstance(classes[i][k], bytes) \
                    else str(classes[i][k])
            if scores is not None:
                entry.score = float(scores[i][k])


def fill_regression(result, outputs: np.ndarray, count: int) -> None:
    """[regressor.cc] outputs [N] or [N, 1] → one Regression per example."""
    if not (outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)) or outputs.shape[0] != count:
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                      f"{list(outputs.shape)}")
    for value in outputs.reshape(-1):
        result.regressions.add(value=float(value))


MAX_DETAILS_CHARS = 1024  # gRPC sends status details in HTTP/2 headers; clients drop headers over 8-16 KiB


def _details(message: str) -> str:
    """message, cut to MAX_DETAILS_CHARS: an error that echoes a client's 100 kB model name must still arrive
    as that error, not as RESOURCE_EXHAUSTED "received metadata size exceeds hard limit"."""
    if len(message) <= MAX_DETAILS_CHARS:
        return message
    return f"{message[:MAX_DETAILS_CHARS - 40]}… ({len(message):,} characters in all)"


def _grpc_method(function, request_class, response_class):
    """A unary handler that parses the request itself, so garbage bytes are INVALID_ARGUMENT, not INTERNAL."""
    def handler(raw: bytes, context):
        try:
            request = request_class.FromString(raw)
        except DecodeError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _details(f"cannot parse {request_class.__name__}: {err}"))
        try:
            return function(request)
        except ServingError as err:
            context.abort(err.code, _details(err.message))

    return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=None,
                                               response_serializer=response_class.SerializeToString)


def grpc_handlers(services: Services) -> list:
    prediction = {
        "Predict": _grpc_method(services.predict, predict_pb2.PredictRequest, predict_pb2.PredictResponse),
        "GetModelMetadata": _grpc_method(services.get_model_metadata, get_model_metadata_pb2.GetModelMetadataRequest,
                                         get_model_metadata_pb2.GetModelMetadataResponse),
        "Classify": _grpc_method(services.classify, classification_pb2.ClassificationRequest,
                                 classification_pb2.ClassificationResponse),
        "Regress": _grpc_method(services.regress, regression_pb2.RegressionRequest, regression_pb2.RegressionResponse),
        "MultiInference": _grpc_method(services.multi_inference, inference_pb2.MultiInferenceRequest,
                                       inference_pb2.MultiInferenceResponse),
    }
    model = {"GetModelStatus": _grpc_method(services.get_model_status, get_model_status_pb2.GetModelStatusRequest,
                                            get_model_status_pb2.GetModelStatusResponse)}
    return [grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", prediction),
            grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", model)]


class _DeadlineReader(socket.SocketIO):
    """A socket reader whose reads all end by one deadline (set per request): each recv waits at most the time
    left, and none starts after it."""

    deadline: float | None = None

    def __init__(self, sock):
        super().__init__(sock, "rb")

    def readinto(self, buffer):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request deadline passed")
            self._sock.settimeout(left)
        return super().readinto(buffer)


LINGER_SECONDS = 5.0  # the most a refused request's unread body is read away for (nginx's lingering_time, shorter)


def make_rest_handler(services: Services, max_request_bytes: int, idle_seconds: float | None = None):
    """The REST request handler class; a connection silent for idle_seconds (None: forever) is closed."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = idle_seconds  # StreamRequestHandler sets it on the socket: every read and write waits at most this

        def log_message(self, fmt, *args):  # quiet; errors are returned to the client
            pass

        def handle(self):
            """A client that hangs up (mid-request or before reading its answer), or goes silent for the idle
            time, ends its connection and nothing else: it is not the server's failure to log."""
            try:
                super().handle()
            except ConnectionError as err:  # reset, broken pipe, aborted
                self.close_connection = True
                log.debug("REST client %s hung up: %s", self.client_address[0], err)
            except TimeoutError:
                self.close_connection = True
                log.debug("REST client %s silent for %s s: connection closed", self.client_address[0], self.timeout)

        def send_error(self, code, message=None, explain=None):
            """http.server's own errors (a garbage request line, an unknown HTTP version, headers too long) in TF
            Serving's JSON shape instead of an HTML page."""
            self.close_connection = True
            self.request_version = self.protocol_version  # a garbage request line leaves HTTP/0.9: no status line
            try:
                self._send(code, {"error": message or HTTPStatus(code).phrase})
            except (ConnectionError, TimeoutError, ValueError):
                pass

        def finish(self):
            """After answering a request whose body was left unread, close gracefully: stop writing, then read
            away what the client is still sending for a few seconds. Closing with unread input sends a reset,
            which can destroy the answer before the client reads it (the client sees a broken pipe, not 429)."""
            super().finish()
            if getattr(self, "_unread_body", False):
                _linger(self.connection, min(LINGER_SECONDS, idle_seconds or LINGER_SECONDS))

        def handle_one_request(self):
            """Each request must arrive whole within the idle time from when the connection starts waiting for
            it: a deadline per request, so a client trickling a byte at a time cannot hold its slot for ever."""
            if idle_seconds is not None:
                self.rfile.raw.deadline = time.monotonic() + idle_seconds
            super().handle_one_request()

        def setup(self):
            super().setup()
            if idle_seconds is not None:
                self.rfile.close()  # StreamRequestHandler's reader, replaced by one that keeps the deadline
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection), self.rbufsize if self.rbufsize > 0
                                               else io.DEFAULT_BUFFER_SIZE)

        def _send(self, code: int, body: dict | str):
            self.connection.settimeout(idle_seconds)  # writing the answer gets the whole idle time, not the rest
            data = (body if isinstance(body, str) else json.dumps(body, indent=1)).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _read_body(self) -> bytes:
            header = self.headers.get("Content-Length")
            if header is None:
                return b""
            if not re.fullmatch(r"[0-9]{1,19}", header.strip()):  # ASCII digits only: '²'.isdigit() is true
                self.close_connection = True
                raise invalid(f"Malformed request: Content-Length {header[:40]!r} is not a byte count")
            length = int(header)
            if length > max_request_bytes:
                self.close_connection = True  # the unread rest must not be parsed as the next request
                if length <= 2 * max_request_bytes:  # a near miss is read away, so the client gets the answer;
                    self._discard(length)  # an absurd length is not waited for
                else:
                    self._unread_body = True  # finish() lingers instead
                raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"request of {length} bytes exceeds the limit of {max_request_bytes}")
            return self.rfile.read(length)

        def _discard(self, remaining: int) -> None:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    return
                remaining -= len(chunk)

        def _handle(self, method: str):
            try:
                body = self._read_body() if method != "GET" else b""
                self._send(200, rest.handle(services, method, self.path, body))
            except (ConnectionError, TimeoutError):
                raise  # the client is gone or silent: handle() ends the connection
            except ServingError as err:
                self._send(rest.http_status(err.code), {"error": err.message})
            except Exception as err:  # never a dropped connection: the client gets TF Serving's 500 shape
                log.exception("REST request failed")
                self._send(500, {"error": f"internal error: {type(err).__name__}"})

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

        def do_PUT(self):
            self._handle("PUT")

        def do_DELETE(self):
            self._handle("DELETE")

    return Handler


def _linger(conn: socket.socket, seconds: float) -> None:
    """Half-close conn and discard its input until the peer closes or seconds pass."""
    deadline = time.monotonic() + seconds
    try:
        conn.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            if not conn.recv(1 << 16):
                return
    except OSError:  # reset, timeout: the peer had its chance
        pass


class RestServer(ThreadingHTTPServer):
    """ThreadingHTTPServer (a thread per connection) that holds at most max_connections at once (None: no
    limit): a connection beyond them gets 503 and is closed, so a flood of connections cannot exhaust the
    process's threads. Unexpected handler errors go to the log, not as bare tracebacks on stderr."""

    daemon_threads = True

    def __init__(self, address, handler_class, max_connections: int | None = None):
        super().__init__(address, handler_class)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections) if max_connections else None

    def process_request(self, request, client_address):
        if self._slots is None:
            return super().process_request(request, client_address)
        if not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self._slots is not None:
                self._slots.release()

    def _refuse(self, request, client_address) -> None:
        body = json.dumps({"error": f"too many connections (limit {self.max_connections}); retry later"}).encode()
        try:
            request.settimeout(1.0)  # the answer fits the socket buffer; a stalled peer cannot hold the accept loop
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        except OSError:
            pass
        log.warning("REST connection from %s refused: %d connections open", client_address[0], self.max_connections)
        self.shutdown_request(request)

    def handle_error(self, request, client_address):
        log.exception("REST connection from %s failed", client_address[0])


class Server:
    """The running gRPC + REST servers over one model registry."""

    def __init__(self, model_base: str | None = None, model_name: str = "deep_rnn", host: str = "127.0.0.1",
                 port: int = 8500, rest_port: int | None = 8501, poll_seconds: float = 1.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, workers: int = 16,
                 model_config_file: str | None = None, session_config=None,
                 rest_idle_seconds: float | None = DEFAULT_REST_IDLE_SECONDS,
                 rest_max_connections: int | None = DEFAULT_REST_MAX_CONNECTIONS,
                 model_config_file_poll_wait_seconds: float = 0.0):
        for name, value in (("port", port), ("rest port", rest_port)):
            if value is not None and not 0 <= value <= 65535:
                raise UserError(f"{name} {value} is not a TCP port (0-65535; 0 picks a free one)")
        if not is_idle_time(rest_idle_seconds):
            raise UserError(f"REST idle time must be a number of seconds > 0 (or None: no limit), got "
                            f"{rest_idle_seconds}")
        if rest_max_connections is not None and rest_max_connections < 1:
            raise UserError(f"REST connection limit must be >= 1 (or None: no limit), got {rest_max_connections}")
        if model_config_file:
            try:
                configs = read_model_config_file(model_config_file)
            except (OSError, ValueError, Exception) as err:
                reason = " ".join(str(err).split())[:300]
                raise UserError(f"{model_config_file}: cannot read the model config: {reason}") from None
            if not configs:
                raise UserError(f"{model_config_file}: lists no model")
        elif model_base:
            configs = [ModelEntry(model_name, model_base)]
        else:
            raise UserError("give --model-base or --model-config-file")
        for config in configs:
            if not os.path.isdir(config.base_path):
                raise UserError(f"{config.base_path}: no such model base directory (run serving.export first)")
        source = (lambda: read_model_config_file(model_config_file)) if model_config_file else None
        self.registry = ModelRegistry(configs, poll_seconds, session_config, source,
                                      model_config_file_poll_wait_seconds)
        self.registry.start()
        services = Services(self.registry)
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            handlers=grpc_handlers(services),
            options=[("grpc.max_receive_message_length", max_request_bytes),
                     ("grpc.max_send_message_length", 64 << 20), ("grpc.so_reuseport", 0)])
        try:
            self.port = self.grpc_server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as err:
            self.port = 0
            log.debug("gRPC bind failed: %s", err)
        if self.port == 0:
            raise UserError(f"cannot bind gRPC to {host}:{port} (port in use, or not an address of this machine)")
        self.grpc_server.start()
        self.http = None
        self.rest_port = None
        if rest_port is not None:
            try:
                handler = make_rest_handler(services, max_request_bytes, rest_idle_seconds)
                self.http = RestServer((host, rest_port), handler, rest_max_connections)
            except OSError as err:
                self.grpc_server.stop(0)
                raise UserError(f"cannot bind REST to {host}:{rest_port}: {err.strerror or err}") from None
            self.rest_port = self.http.server_address[1]
            threading.Thread(target=self.http.serve_forever, name="rest", daemon=True).start()

    def stop(self) -> None:
        self.registry.stop()
        if self.http:
            self.http.shutdown()
            self.http.server_close()
        self.grpc_server.stop(grace=1).wait()
