"""gRPC client for the exported model (TF Serving or serving.server), over tensorflow-serving-api's stubs.

Its command line is serving.client; this module imports TensorFlow (the stubs' protos need it)."""
from __future__ import annotations

import statistics
import subprocess
import time

from common import cli
from common.cli import UserError

cli.quiet_tensorflow()

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from serving import tensors  # noqa: E402

INPUT_DTYPES = {"num_chars": tf.int32, "top_k": tf.int32, "temperature": tf.float32, "seed": tf.int64}


def predict_request(model_name: str, signature: str, **inputs) -> predict_pb2.PredictRequest:
    """A PredictRequest for one of the signatures; inputs not named in INPUT_DTYPES are strings."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name, req.model_spec.signature_name = model_name, signature
    for key, value in inputs.items():
        dtype = INPUT_DTYPES.get(key, tf.string)
        array = np.asarray(value, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
        req.inputs[key].CopyFrom(tensors.to_proto(array))
    return req


class Client:
    """Thin wrapper over PredictionServiceStub for the three signatures."""

    def __init__(self, server: str, model_name: str = "deep_rnn", timeout: float = 30.0):
        self.channel = grpc.insecure_channel(server)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.server, self.model_name, self.timeout = server, model_name, timeout

    def request(self, signature: str, **inputs) -> predict_pb2.PredictRequest:
        return predict_request(self.model_name, signature, **inputs)

    def call(self, req: predict_pb2.PredictRequest) -> dict:
        try:
            response = self.stub.Predict(req, timeout=self.timeout)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                raise UserError(f"cannot reach a model server at {self.server} (is it running?)") from None
            raise UserError(f"{err.code().name}: {err.details()}") from None
        return {k: tensors.to_numpy(v) for k, v in response.outputs.items()}

    def wait_until_ready(self, timeout_s: float, process: subprocess.Popen | None = None) -> None:
        """Retries a one-character generation until the model answers; UserError if `process` (the
        server) exits first or the timeout passes."""
        deadline = time.time() + timeout_s
        while True:
            if process is not None and process.poll() is not None:
                raise UserError(f"the model server for {self.server} exited with code {process.returncode} "
                                "(port in use?)")
            try:
                self.generate(["it has"], 1)
                return
            except UserError:
                if time.time() > deadline:
                    raise UserError(f"the model server at {self.server} did not become ready in "
                                    f"{timeout_s:.0f} s") from None
                time.sleep(0.5)

    def served_version(self) -> int:
        """The version that answers a latest-version request (what a client without a version gets)."""
        req = self.request("score", text=["it has"])
        req.output_filter.append("num_tokens")
        try:
            return self.stub.Predict(req, timeout=self.timeout).model_spec.version.value
        except grpc.RpcError as err:
            raise UserError(f"{err.code().name}: {err.details()}") from None

    def generate(self, prefixes: list[str], num_chars: int, temperature: float | None = None,
                 top_k: int = 0, seed: int = 0) -> list[str]:
        if temperature is None:
            req = self.request("serving_default", prefix=prefixes, num_chars=num_chars)
        else:
            req = self.request("sample", prefix=prefixes, num_chars=num_chars, temperature=temperature,
                               top_k=top_k, seed=seed)
        return [t.decode("utf-8", errors="replace") for t in self.call(req)["text"]]

    def score(self, texts: list[str]) -> list[dict]:
        out = self.call(self.request("score", text=texts))
        return [{"log_likelihood": float(ll), "num_tokens": int(n), "perplexity": float(p)}
                for ll, n, p in zip(out["log_likelihood"], out["num_tokens"], out["perplexity"])]


def latency_summary(times_ms: list[float]) -> dict:
    """n, p50 and p99 of request latencies in milliseconds."""
    times_ms = sorted(times_ms)
    return {"n": len(times_ms), "p50_ms": statistics.median(times_ms),
            "p99_ms": times_ms[min(len(times_ms) - 1, int(0.99 * len(times_ms)))]}
