"""A small stand-in for TensorFlow Serving: the same gRPC API and REST :predict over one export.

    python -m serving.server --model-base runs/x/export/deep_rnn [--port 8500 --rest-port 8501]
PredictionService (Predict, GetModelMetadata), ModelService (GetModelStatus) and REST
/v1/models/<name>[/versions/<v>][:predict|/metadata], latest-version policy with hot swap.
For tests and laptops; production is tensorflow_model_server (see README).
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipeline import cli
from pipeline.cli import UserError

cli.quiet_tensorflow()

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,  # noqa: E402
                                     predict_pb2, prediction_service_pb2_grpc)

from serving import tensors  # noqa: E402
from serving.servable import ModelRegistry, ServingError  # noqa: E402

log = logging.getLogger("serving")
DEFAULT_MAX_REQUEST_BYTES = 4 << 20
_HTTP = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
         grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
         grpc.StatusCode.UNIMPLEMENTED: 501}


def _tensor_to_numpy(name: str, proto) -> np.ndarray:
    try:
        return tensors.to_numpy(proto)
    except Exception as err:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} is not a valid tensor: {err}") from None


def _servable(registry: ModelRegistry, spec):
    """The servable a request's ModelSpec names (latest version unless one is given)."""
    return registry.get(spec.name, spec.version.value if spec.HasField("version") else None)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def Predict(self, request, context):
        try:
            spec = request.model_spec
            servable = _servable(self.registry, spec)
            inputs = {k: _tensor_to_numpy(k, v) for k, v in request.inputs.items()}
            outputs = servable.predict(spec.signature_name, inputs, list(request.output_filter))
        except ServingError as err:
            context.abort(err.code, err.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tensors.to_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        try:
            spec = request.model_spec
            servable = _servable(self.registry, spec)
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "metadata_field must be ['signature_def']")
        except ServingError as err:
            context.abort(err.code, err.message)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = servable.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            signatures.signature_def[key].CopyFrom(sig)
        response.metadata["signature_def"].Pack(signatures)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def GetModelStatus(self, request, context):
        try:
            spec = request.model_spec
            servable = _servable(self.registry, spec)
        except ServingError as err:
            context.abort(err.code, err.message)
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = servable.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


def _json_value(value):
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value] if value.ndim else _json_value(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def _from_json(name: str, value, spec) -> np.ndarray:
    try:
        if spec.dtype == tf.string:
            array = np.array(value, dtype=object)
            if not all(isinstance(v, str) for v in array.reshape(-1)):
                raise TypeError("strings expected")
            return np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array) if array.size else array
        array = np.array(value)
        if array.dtype.kind not in "iuf" or (spec.dtype.is_integer and array.dtype.kind == "f"):
            raise TypeError(f"{spec.dtype.name} expected")
        cast = array.astype(spec.dtype.as_numpy_dtype)
        if spec.dtype.is_integer and not np.array_equal(cast, array):
            raise TypeError(f"value out of range for {spec.dtype.name}")
        return cast
    except (TypeError, ValueError, OverflowError) as err:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r}: {err}") from None


_PREDICT = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(:predict|/metadata)?$")


def make_rest_handler(registry: ModelRegistry, max_request_bytes: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet; errors are returned to the client
            pass

        def _send(self, code: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _discard(self, length: int):
            """Reads and drops an oversized body (bounded), so the client sees the 413, not a reset."""
            self.close_connection = True
            remaining = min(length, 16 * max_request_bytes)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)

        def _route(self):
            match = _PREDICT.match(self.path)
            if not match:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"unknown path {self.path}")
            name, version, action = match.groups()
            return registry.get(name, int(version) if version else None), name, action

        def do_GET(self):
            try:
                servable, name, action = self._route()
                if action == ":predict":
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "use POST for :predict")
                if action == "/metadata":
                    sigs = {k: json_format.MessageToDict(v) for k, v in servable.signature_defs.items()}
                    body = {"model_spec": {"name": name, "version": str(servable.version)},
                            "metadata": {"signature_def": {"signature_def": sigs}}}
                else:
                    body = {"model_version_status": [{"version": str(servable.version), "state": "AVAILABLE",
                                                      "status": {"error_code": "OK", "error_message": ""}}]}
                self._send(200, body)
            except ServingError as err:
                self._send(_HTTP.get(err.code, 500), {"error": err.message})

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > max_request_bytes:
                    self._discard(length)
                    raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"request of {length} bytes exceeds the limit of {max_request_bytes}")
                raw = self.rfile.read(length)
                servable, _, action = self._route()
                if action != ":predict":
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "POST is only for :predict")
                try:
                    body = json.loads(raw)
                except ValueError as err:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed JSON: {err}") from None
                if not isinstance(body, dict):
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "request body must be a JSON object")
                signature = body.get("signature_name") or "serving_default"
                specs = servable.signature_inputs(signature)
                row_format = "instances" in body
                columns = _columns(body, specs)
                inputs = {k: _from_json(k, v, specs[k]) if k in specs else np.array(v, dtype=object)
                          for k, v in columns.items()}
                outputs = servable.predict(signature, inputs)
                if row_format:
                    batch = len(next(iter(outputs.values())))
                    rows = [{k: _json_value(v[i]) for k, v in outputs.items()} for i in range(batch)]
                    self._send(200, {"predictions": rows})
                else:
                    self._send(200, {"outputs": {k: _json_value(v) for k, v in outputs.items()}})
            except ServingError as err:
                self._send(_HTTP.get(err.code, 500), {"error": err.message})

    return Handler


def _columns(body: dict, specs: dict) -> dict:
    """REST body → named inputs: columnar `inputs`, or row `instances` (scalars equal in every row)."""
    if "inputs" in body:
        if not isinstance(body["inputs"], dict):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "'inputs' must be an object of named inputs")
        return body["inputs"]
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances or not all(isinstance(i, dict) for i in instances):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           "the body needs 'inputs' (object) or 'instances' (non-empty list of objects)")
    keys = set(instances[0])
    if any(set(i) != keys for i in instances):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "every instance must have the same keys")
    columns = {}
    for key in keys:
        values = [i[key] for i in instances]
        batched = key in specs and specs[key].shape.rank != 0  # [batch] inputs gather rows; scalars are shared
        if not batched and any(v != values[0] for v in values):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"{key!r} must be the same in every instance")
        columns[key] = values if batched else values[0]
    return columns


class Server:
    """The running gRPC + REST servers over one model registry."""

    def __init__(self, model_base: str, model_name: str = "deep_rnn", host: str = "127.0.0.1", port: int = 8500,
                 rest_port: int | None = 8501, poll_seconds: float = 1.0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, workers: int = 16):
        if not os.path.isdir(model_base):
            raise UserError(f"{model_base}: no such model base directory (run serving.export first)")
        self.registry = ModelRegistry(model_name, model_base, poll_seconds)
        self.registry.start()
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", max_request_bytes),
                     ("grpc.max_send_message_length", 64 << 20), ("grpc.so_reuseport", 0)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.registry), self.grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.registry), self.grpc_server)
        self.port = self.grpc_server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise UserError(f"cannot bind gRPC port {host}:{port} (in use?)")
        self.grpc_server.start()
        self.http = None
        self.rest_port = None
        if rest_port is not None:
            try:
                self.http = ThreadingHTTPServer((host, rest_port), make_rest_handler(self.registry, max_request_bytes))
            except OSError as err:
                self.grpc_server.stop(0)
                raise UserError(f"cannot bind REST port {host}:{rest_port}: {err.strerror}") from None
            self.http.daemon_threads = True
            self.rest_port = self.http.server_address[1]
            threading.Thread(target=self.http.serve_forever, name="rest", daemon=True).start()

    def stop(self) -> None:
        self.registry.stop()
        if self.http:
            self.http.shutdown()
            self.http.server_close()
        self.grpc_server.stop(grace=1).wait()


def parse_args(argv):
    p = cli.ArgumentParser(prog="serving.server", description=__doc__.split("\n")[0])
    p.add_argument("--model-base", required=True, help="EXPORT_BASE/<model_name>: the directory of versions")
    p.add_argument("--model-name", default="deep_rnn")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    p.add_argument("--rest-port", type=int, default=8501, help="REST port (0: any free port, -1: no REST)")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions")
    p.add_argument("--max-request-bytes", type=cli.positive_int, default=DEFAULT_MAX_REQUEST_BYTES)
    p.add_argument("--workers", type=cli.positive_int, default=16)
    p.add_argument("--intra-op-threads", type=int, default=1,
                   help="threads per TF op (0: TF's default). Generation runs many tiny ops, so 1 is fastest")
    p.add_argument("--inter-op-threads", type=int, default=0, help="TF ops run in parallel (0: TF's default)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    server = Server(args.model_base, args.model_name, args.host, args.port,
                    None if args.rest_port < 0 else args.rest_port, args.poll_seconds, args.max_request_bytes,
                    args.workers)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    print(json.dumps({"grpc_port": server.port, "rest_port": server.rest_port, "host": args.host}), flush=True)
    stopped.wait()
    server.stop()


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
