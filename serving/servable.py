"""A loaded SavedModel version and the models registry that follows TF Serving's latest-version policy."""
from __future__ import annotations

import logging
import os
import threading

import grpc
import numpy as np
import tensorflow as tf

from serving import export, tensors

log = logging.getLogger("serving")


class ServingError(Exception):
    """A request failure with the gRPC status TF Serving would return."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Servable:
    """One version of a SavedModel with its signatures, validating inputs like TF Serving does."""

    def __init__(self, path: str, version: int):
        self.path, self.version = path, version
        self.loaded = tf.saved_model.load(path)
        self.functions = dict(self.loaded.signatures)
        self.input_specs = {name: fn.structured_input_signature[1] for name, fn in self.functions.items()}
        self.signature_defs = dict(export.read_saved_model_proto(path).meta_graphs[0].signature_def)
        self.signature_defs.pop("__saved_model_init_op", None)

    def signature_inputs(self, signature: str) -> dict:
        """name → TensorSpec of a signature's inputs; FAILED_PRECONDITION (as TF Serving) if there is none."""
        specs = self.input_specs.get(signature or "serving_default")
        if specs is None:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{signature}" not found.')
        return specs

    def predict(self, signature: str, inputs: dict[str, np.ndarray], output_filter=()) -> dict[str, np.ndarray]:
        signature = signature or "serving_default"
        specs = self.signature_inputs(signature)
        missing, extra = sorted(set(specs) - set(inputs)), sorted(set(inputs) - set(specs))
        if missing or extra:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input keys for signature {signature!r} must be {sorted(specs)}; "
                               f"missing {missing}, unexpected {extra}")
        tensors = {}
        for name, spec in specs.items():
            value = inputs[name]
            if not _dtype_matches(value, spec.dtype):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {name!r} must be {spec.dtype.name}, got {value.dtype}")
            if not spec.shape.is_compatible_with(value.shape):
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {name!r} must have shape {spec.shape}, got {list(value.shape)}")
            tensors[name] = tf.constant(value, dtype=spec.dtype)
        try:
            outputs = self.functions[signature](**tensors)
        except tf.errors.InvalidArgumentError as err:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, _first_line(err.message)) from None
        except tf.errors.OpError as err:
            raise ServingError(grpc.StatusCode.INTERNAL, _first_line(err.message)) from None
        unknown = sorted(set(output_filter) - set(outputs))
        if unknown:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"output_filter names unknown outputs {unknown}")
        return {k: v.numpy() for k, v in outputs.items() if not output_filter or k in output_filter}

    def warm_up(self) -> int:
        """Replays assets.extra/tf_serving_warmup_requests, as TF Serving does at load."""
        from tensorflow_serving.apis import prediction_log_pb2

        path = os.path.join(self.path, export.WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path):
            request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
            self.predict(request.model_spec.signature_name,
                         {k: tensors.to_numpy(v) for k, v in request.inputs.items()})
            count += 1
        return count


def _first_line(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    asserts = [ln for ln in lines if "assertion failed" in ln or "must" in ln]
    return (asserts or lines or ["error"])[0][:500]


def _dtype_matches(value: np.ndarray, dtype: tf.DType) -> bool:
    if dtype == tf.string:
        return value.dtype == object or value.dtype.kind in ("S", "U")
    return value.dtype == dtype.as_numpy_dtype


class ModelRegistry:
    """Serves the newest complete version under base_path; polls for new ones and unloads old ones."""

    def __init__(self, name: str, base_path: str, poll_seconds: float = 1.0):
        self.name, self.base_path, self.poll_seconds = name, base_path, poll_seconds
        self.current: Servable | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="version-poller", daemon=True)

    def poll_once(self) -> None:
        newest = (export.versions(self.base_path) or [None])[-1]
        current = self.current.version if self.current else None
        if newest == current:
            return
        if newest is None:
            log.warning("no version left under %s; unloading %s", self.base_path, current)
            self.current = None
            return
        try:
            servable = Servable(os.path.join(self.base_path, str(newest)), newest)
            warmed = servable.warm_up()
        except Exception as err:  # a broken version must not take the server down
            log.error("cannot load %s version %s: %s", self.name, newest, err)
            return
        self.current = servable  # atomic swap; in-flight requests keep their reference
        log.info("serving %s version %s (%d warmup requests; unloaded %s)", self.name, newest, warmed, current)

    def start(self) -> None:
        self.poll_once()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.poll_once()

    def get(self, name: str, version: int | None = None) -> Servable:
        servable = self.current
        if name != self.name or servable is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
        if version is not None and version != servable.version:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: Specific({name}, {version})")
        return servable
